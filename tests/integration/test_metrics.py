"""[metrics]: plain HTTP GET /metrics in the Prometheus text format.

Real traffic passes (SMTP with smtplib over implicit TLS and STARTTLS, in
terminate and passthrough, to embedded mailboxes; clients that fail TLS
in known ways; a dead backend; a client over its limit; reloads) and the
counters must move exactly as it did; `promtool check metrics` (Debian's
prometheus package) must accept every exposition. The endpoint's bounds
are tried too: other methods and paths, an over-long request head, more
scrapers than it serves at once (the rest wait in the backlog)."""
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess

import pytest

from conftest import free_port, run_check, wait_for
from fakebackend import connect, read_reply
from smtp_helpers import (
    LoopbackSMTP, LoopbackSMTP_SSL, client_context, issue, maildir_messages, wait_maildir)

DOMAIN = "metrics.test"
MAIL, PASS, DEAD = f"mail.{DOMAIN}", f"pt.{DOMAIN}", f"dead.{DOMAIN}"
TIMEOUT = 20
PROMTOOL = shutil.which("promtool")

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text):
    """{(name, frozenset(labels)): value} of every sample."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def value(samples, name, **labels):
    """The one sample of `name` with exactly these labels (all of them)."""
    want = frozenset(labels.items())
    matches = [v for (n, ls), v in samples.items() if n == name and ls == want]
    assert len(matches) == 1, f"{name}{labels}: {len(matches)} samples"
    return matches[0]


def http(port, request: bytes):
    """Sends `request`, returns (status line, headers text, body) of the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, _, headers = head.decode().partition("\r\n")
    return status, headers, body


def scrape(port):
    status, headers, body = http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == "HTTP/1.1 200 OK", status
    assert "Content-Type: text/plain; version=0.0.4; charset=utf-8" in headers, headers
    assert f"Content-Length: {len(body)}" in headers, headers
    text = body.decode()
    promtool_accepts(text)
    return text


def promtool_accepts(text):
    assert PROMTOOL, "promtool is missing: scripts/install-deps.sh installs package prometheus"
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


class Gateway:
    """A config: listeners smtps (implicit) and smtp (STARTTLS); route
    `main` terminates to mailbox `box`, route `pt` passes TLS through to
    mailboxes speaking the client's own flavour, route `dead` goes to a
    backend nothing listens for."""

    def __init__(self, tmp_path, ca):
        self.dir = tmp_path
        self.ca = ca
        self.ports = {n: free_port() for n in
                      ("smtps", "smtp", "box", "boxtls", "boxst", "dead", "metrics")}
        self.cert = issue(ca, f"*.{DOMAIN}")
        self.pt_cert = issue(ca, PASS)

    def config(self, extra=""):
        p, ca = self.ports, self.ca
        text = ("[global]\nlog_level = info\nworkers = 2\nclient_limit_exceptions = none\n"
                "max_client_connections = 3\nclient_connection_rate = 0\n\n"
                f"[metrics]\naddress = 127.0.0.1:{p['metrics']}\n\n"
                f"[certificate gw]\ncert = {self.cert[0]}\nkey = {self.cert[1]}\n\n"
                f"[listener smtps]\nservice = submissions\naddress = 127.0.0.1:{p['smtps']}\n"
                "hostname = gw.test\n\n"
                f"[listener smtp]\nservice = submission\naddress = 127.0.0.1:{p['smtp']}\n"
                "hostname = gw.test\n\n")
        text += (f"[mailbox box]\naddress = 127.0.0.1:{p['box']}\n"
                 f"maildir = {self.dir / 'box'}\n\n")
        for name, tls in (("boxtls", "implicit"), ("boxst", "starttls")):
            text += (f"[mailbox {name}]\naddress = 127.0.0.1:{p[name]}\ntls = {tls}\n"
                     f"cert = {self.pt_cert[0]}\nkey = {self.pt_cert[1]}\n"
                     f"maildir = {self.dir / 'pt'}\n\n")
        text += (f"[backend mix]\nsubmissions = 127.0.0.1:{p['boxtls']} implicit\n"
                 f"submission = 127.0.0.1:{p['boxst']} starttls\nca = {ca.cert}\n\n"
                 f"[backend dead]\nsubmissions = 127.0.0.1:{p['dead']}\n"
                 f"submission = 127.0.0.1:{p['dead']}\n\n"
                 f"[route pt]\nsni = {PASS}\nbackend = mix\nmode = passthrough\n\n"
                 f"[route dead]\nsni = {DEAD}\nbackend = dead\n\n"
                 "[route main]\nsni = *\nbackend = box\n\n")
        return text + extra

    def scrape(self):
        return parse(scrape(self.ports["metrics"]))


def send_implicit(gw, sni, mark):
    with LoopbackSMTP_SSL(sni, gw.ports["smtps"], context=client_context(gw.ca.cert),
                          timeout=TIMEOUT) as s:
        s.sendmail("a@client.test", ["b@metrics.test"], f"Subject: {mark}\r\n\r\n{mark}\r\n")


def send_starttls(gw, sni, mark):
    with LoopbackSMTP(sni, gw.ports["smtp"], timeout=TIMEOUT) as s:
        s.starttls(context=client_context(gw.ca.cert))
        s.sendmail("a@client.test", ["b@metrics.test"], f"Subject: {mark}\r\n\r\n{mark}\r\n")


@pytest.fixture
def gateway(sallyport, ca, tmp_path):
    gw = Gateway(tmp_path, ca)
    gw.sp = sallyport(gw.config())
    return gw


def test_counters_follow_the_traffic(gateway):
    gw = gateway
    before = gw.scrape()
    for listener, service in (("smtps", "submissions"), ("smtp", "submission")):
        for outcome in ("relayed", "tls_failed", "timeout", "refused"):
            assert value(before, "sallyport_connections_total", listener=listener,
                         service=service, outcome=outcome) == 0
    assert value(before, "sallyport_generation") == 1

    send_implicit(gw, MAIL, "i1")
    send_implicit(gw, MAIL, "i2")
    send_starttls(gw, MAIL, "s1")
    send_implicit(gw, PASS, "p1")
    send_starttls(gw, PASS, "p2")
    wait_maildir(gw.dir / "box", 3)
    wait_maildir(gw.dir / "pt", 2)

    # A client that refuses our certificate (it trusts another CA).
    with pytest.raises(ssl.SSLError):
        with LoopbackSMTP_SSL(MAIL, gw.ports["smtps"], timeout=TIMEOUT,
                              context=ssl.create_default_context()):
            pass
    # Cleartext on the implicit-TLS port.
    with connect(gw.ports["smtps"]) as s:
        s.sendall(b"EHLO cleartext.test\r\n")
        s.settimeout(TIMEOUT)
        assert s.recv(100) == b""
    # A backend that is not there: the client gets 421.
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        LoopbackSMTP_SSL(DEAD, gw.ports["smtps"], context=client_context(gw.ca.cert),
                         timeout=TIMEOUT)
    assert refused.value.smtp_code == 421

    # A connection is counted, and leaves the open-sessions gauge, when
    # its session closes; that can come a little after the client has
    # seen its last byte (under valgrind, a good deal after), so wait
    # for all eight to be closed rather than read the first scrape.
    def settled():
        m = gw.scrape()
        closed = sum(v for (n, ls), v in m.items() if n == "sallyport_connections_total")
        return m if closed >= 8 and value(m, "sallyport_client_sessions") == 0 else None
    m = wait_for(settled, TIMEOUT, what="eight connections closed and counted")

    def smtps(name, **labels):
        return value(m, name, listener="smtps", service="submissions", **labels)

    def smtp(name, **labels):
        return value(m, name, listener="smtp", service="submission", **labels)

    assert smtps("sallyport_connections_total", outcome="relayed") == 3
    assert smtps("sallyport_connections_total", outcome="tls_failed") == 2
    assert smtps("sallyport_connections_total", outcome="backend_failed") == 1
    assert smtp("sallyport_connections_total", outcome="relayed") == 2
    # RFC 8314's question: how many came by implicit TLS, how many by STARTTLS.
    assert smtps("sallyport_tls_connections_total", start="implicit") == 4
    assert smtps("sallyport_tls_connections_total", start="starttls") == 0
    assert smtp("sallyport_tls_connections_total", start="starttls") == 2
    assert smtp("sallyport_tls_connections_total", start="implicit") == 0
    # Versions: the handshakes sallyport completed (passthrough has none).
    assert smtps("sallyport_tls_versions_total", version="TLSv1.3") == 3
    assert smtp("sallyport_tls_versions_total", version="TLSv1.3") == 1
    assert smtps("sallyport_tls_handshake_failures_total", reason="certificate_rejected") == 1
    assert smtps("sallyport_tls_handshake_failures_total", reason="not_tls") == 1
    assert smtps("sallyport_client_bytes_total", direction="in") > 0
    assert smtps("sallyport_client_bytes_total", direction="out") > 0
    assert value(m, "sallyport_route_sessions_total", route="main") == 3
    assert value(m, "sallyport_route_sessions_total", route="pt") == 2
    assert value(m, "sallyport_backend_sessions_total", backend="box") == 3
    assert value(m, "sallyport_backend_sessions_total", backend="mix") == 2
    assert value(m, "sallyport_backend_connect_failures_total", backend="dead") >= 1
    assert value(m, "sallyport_backend_up", backend="dead", service="submissions",
                 address=f"127.0.0.1:{gw.ports['dead']}") == 0
    assert value(m, "sallyport_backend_up", backend="box", service="submissions",
                 address=f"127.0.0.1:{gw.ports['box']}") == 1
    assert value(m, "sallyport_client_sessions") == 0
    assert len(maildir_messages(gw.dir / "box")) == 3


def test_sessions_open_by_phase(gateway):
    gw = gateway

    def phase(m, listener, service, name):
        return value(m, "sallyport_sessions", listener=listener, service=service, phase=name)

    cleartext = connect(gw.ports["smtp"])
    read_reply(cleartext)  # the greeting: in the cleartext phase now
    relaying = LoopbackSMTP_SSL(MAIL, gw.ports["smtps"], context=client_context(gw.ca.cert),
                                timeout=TIMEOUT)
    relaying.ehlo()
    try:
        m = gw.scrape()
        assert phase(m, "smtp", "submission", "cleartext") == 1
        assert phase(m, "smtps", "submissions", "relay") == 1
        assert value(m, "sallyport_client_sessions") == 2
    finally:
        cleartext.close()
        relaying.quit()
    wait_for(lambda: all(v == 0 for (n, ls), v in gw.scrape().items()
                         if n == "sallyport_sessions"),
             TIMEOUT, what="every phase gauge back at 0")


def test_every_connection_has_one_outcome(gateway):
    """Cleartext endings: a QUIT is the client's own close, bytes pipelined
    behind STARTTLS are a protocol error; each connection is counted once,
    and every phase gauge is back at 0 after."""
    gw = gateway
    with connect(gw.ports["smtp"]) as s:
        read_reply(s)
        s.sendall(b"QUIT\r\n")
        assert read_reply(s).startswith(b"221")
    with connect(gw.ports["smtp"]) as s:
        read_reply(s)
        s.sendall(b"EHLO x\r\n")
        read_reply(s)
        s.sendall(b"STARTTLS\r\nRSET\r\n")
        assert s.recv(100) == b""
    send_implicit(gw, MAIL, "one")

    def smtp(m, outcome):
        return value(m, "sallyport_connections_total", listener="smtp", service="submission",
                     outcome=outcome)

    def settled():
        m = gw.scrape()
        total = sum(v for (n, ls), v in m.items() if n == "sallyport_connections_total")
        return m if total == 3 else None
    m = wait_for(settled, TIMEOUT, what="three connections counted")
    assert smtp(m, "client_closed") == 1
    assert smtp(m, "protocol_error") == 1
    assert value(m, "sallyport_connections_total", listener="smtps", service="submissions",
                 outcome="relayed") == 1
    assert all(v == 0 for (n, ls), v in m.items() if n == "sallyport_sessions")


def test_limit_refusals(gateway):
    gw = gateway
    held = [connect(gw.ports["smtp"]) for _ in range(3)]
    try:
        for s in held:
            read_reply(s)
        with connect(gw.ports["smtp"]) as extra:
            assert read_reply(extra).startswith(b"421")
        m = wait_for(lambda: (lambda m: m if value(
            m, "sallyport_limit_refusals_total", listener="smtp", service="submission",
            limit="max_client_connections") == 1 else None)(gw.scrape()),
            TIMEOUT, what="the refusal counted")
        assert value(m, "sallyport_connections_total", listener="smtp", service="submission",
                     outcome="refused") == 1
    finally:
        for s in held:
            s.close()


def test_reloads_counted_and_counters_survive(gateway):
    gw = gateway
    send_implicit(gw, MAIL, "before")
    wait_for(lambda: value(gw.scrape(), "sallyport_connections_total", listener="smtps",
                           service="submissions", outcome="relayed") == 1,
             TIMEOUT, what="the session counted")
    gw.sp.proc.send_signal(signal.SIGHUP)
    gw.sp.wait_log("reloaded: generation 2 ")
    (gw.dir / "sallyport.conf").write_text(gw.config("[listener smtps]\n"))  # a duplicate
    gw.sp.proc.send_signal(signal.SIGHUP)
    gw.sp.wait_log("reload refused")
    m = gw.scrape()
    assert value(m, "sallyport_reloads_total", result="done") == 1
    assert value(m, "sallyport_reloads_total", result="refused") == 1
    assert value(m, "sallyport_generation") == 2
    # The listener's counters went on across the reload.
    assert value(m, "sallyport_connections_total", listener="smtps", service="submissions",
                 outcome="relayed") == 1


def test_endpoint_answers_only_get_metrics(gateway):
    port = gateway.ports["metrics"]
    status, headers, body = http(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 200 OK" and body == b""
    assert re.search(r"Content-Length: [1-9]\d*", headers), headers
    assert http(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")[0] == \
        "HTTP/1.1 405 Method Not Allowed"
    assert http(port, b"GET / HTTP/1.1\r\n\r\n")[0] == "HTTP/1.1 404 Not Found"
    assert http(port, b"GET /metrics/../x HTTP/1.1\r\n\r\n")[0] == "HTTP/1.1 404 Not Found"
    assert http(port, b"hello\r\n\r\n")[0] == "HTTP/1.1 400 Bad Request"
    # A head that never ends within the bound: 431, then the close.
    assert http(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 5000)[0] == \
        "HTTP/1.1 431 Request Header Fields Too Large"
    # Query strings are allowed (Prometheus adds none, but others may).
    assert http(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")[0] == "HTTP/1.1 200 OK"


def test_stalled_scrapers_hold_only_their_own_connections(gateway):
    gw = gateway
    port = gw.ports["metrics"]
    stalled = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(8)]
    ninth = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        # Eight scrapers that say nothing hold every slot; a ninth waits in
        # the backlog, and mail goes on meanwhile.
        ninth.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        send_implicit(gw, MAIL, "during")
        wait_maildir(gw.dir / "box", 1)
    finally:
        for s in stalled:
            s.close()
    # A slot frees: the ninth is answered.
    with ninth:
        data = b""
        while chunk := ninth.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:100]
    promtool_accepts(data.partition(b"\r\n\r\n")[2].decode())


@pytest.mark.parametrize("text,error", [
    ("[metrics]\n", "check.conf:1: metrics: missing required key 'address'"),
    ("[metrics]\naddress = 9465\n", "address: '9465' needs a host and a port"),
    ("[metrics x]\naddress = 127.0.0.1:9465\n", "[metrics] takes no name"),
])
def test_bad_metrics_config_is_refused(tmp_path, text, error):
    rc, output = run_check(
        text + "[listener submissions]\naddress = 127.0.0.1:2\nmode = passthrough\n"
        "[backend b]\nhost = 127.0.0.1\n[route r]\nsni = *\nbackend = b\n", tmp_path)
    assert rc != 0
    assert error in output, output
