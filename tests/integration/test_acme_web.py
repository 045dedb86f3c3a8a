"""ACME next to a web server, against Debian's pebble: an https listener (the
port-443 role) answers the CA's tls-alpn-01 checks and passes every other
connection untouched to the web server; http-01 answered on [acme]
http_address; SIGUSR1 renews at once while sessions stay up; a reload with
new names orders a new certificate while the old one serves."""
import signal
import smtplib
import socket
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest

from conftest import free_port, run_check, wait_for
from pebble import pebble_factory  # noqa: F401 (a fixture)
from smtp_helpers import issue

MAIL = "mail.example.test"
IMAP = "imap.example.test"
WWW = "www.example.test"
TIMEOUT = 20


def served_certificate(port, name, cafile=None):
    """The DER certificate the listener on `port` serves for SNI `name`,
    verified against `cafile` when given."""
    ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else ssl._create_unverified_context()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        with ctx.wrap_socket(s, server_hostname=name) as t:
            return t.getpeercert(binary_form=True)


def serial(der):
    out = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-serial"],
                         input=der, capture_output=True, check=True).stdout
    return out.decode().strip()


class WebServer:
    """openssl s_server -www: a TLS web server with a certificate of the test CA."""

    def __init__(self, ca, port):
        cert, key = issue(ca, WWW)
        self.port = port
        self.proc = subprocess.Popen(
            ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert),
             "-key", str(key), "-www", "-quiet"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        wait_for(lambda: self._listening(), TIMEOUT, what="openssl s_server listening")

    def _listening(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def close(self):
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def web(ca):
    server = WebServer(ca, free_port())
    yield server
    server.close()


def config(tmp_path, pb, ports, certificates, extra=""):
    return f"""
[acme]
directory = {pb.directory_url}
ca = {pb.ca_file}
state_dir = {tmp_path}/state
retry_interval = 1
{extra}
{certificates}
[listener smtps]
service = submissions
address = 127.0.0.1:{ports['smtps']}

[listener web]
service = https
address = 127.0.0.1:{ports['https']}
backend = www

[backend www]
https = 127.0.0.1:{ports['web']}

[mailbox box]
address = 127.0.0.1:{ports['box']}
maildir = {tmp_path}/maildir

[route main]
sni = *
backend = box
"""


class SNISMTP_SSL(smtplib.SMTP_SSL):
    """SMTP_SSL to 127.0.0.1 that sends and verifies `name`."""

    def __init__(self, name, port, **kw):
        self._sni = name
        super().__init__("127.0.0.1", port, **kw)

    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((host, port), timeout)
        return self.context.wrap_socket(sock, server_hostname=self._sni)


def test_https_listener_answers_the_check_and_passes_the_rest(tmp_path, ca, sallyport, web,
                                                              pebble_factory):
    ports = {n: free_port() for n in ("smtps", "https", "box")}
    ports["web"] = web.port
    pb = pebble_factory(http_port=free_port(), tls_port=ports["https"])
    sp = sallyport(config(tmp_path, pb, ports,
                          f"[certificate mail]\nacme = yes\nnames = {MAIL} {IMAP}\n"))
    sp.wait_log("acme: certificate mail: installed", timeout=60)
    sp.wait_log("acme: certificates refreshed")
    log = sp.log()
    assert f"answered the tls-alpn-01 challenge for {MAIL}" in log
    assert f"answered the tls-alpn-01 challenge for {IMAP}" in log
    root = pb.root_file()
    # The mail listener serves the CA's certificate, for both names.
    for name in (MAIL, IMAP):
        wait_for(lambda: served_certificate(ports["smtps"], name, root), TIMEOUT,
                 what=f"a verified certificate for {name}")
    with SNISMTP_SSL(MAIL, ports["smtps"], timeout=TIMEOUT,
                     context=ssl.create_default_context(cafile=str(root))) as s:
        assert s.ehlo()[0] == 250
    # Port 443's other connections reach the web server, TLS untouched:
    # its own certificate (from the test CA, not pebble's) and its page.
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    with socket.create_connection(("127.0.0.1", ports["https"]), timeout=TIMEOUT) as s:
        with ctx.wrap_socket(s, server_hostname=WWW) as t:
            t.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert t.recv(64).startswith(b"HTTP/1.0 200 ok")
    # A check for a name with no challenge pending gets no certificate.
    check = ssl._create_unverified_context()
    check.set_alpn_protocols(["acme-tls/1"])
    with socket.create_connection(("127.0.0.1", ports["https"]), timeout=TIMEOUT) as s:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with check.wrap_socket(s, server_hostname=MAIL):
                pass
    sp.wait_log(f"acme-tls/1 handshake for {MAIL}, which has no challenge pending")


def test_http01_is_answered_on_http_address(tmp_path, ca, sallyport, web, pebble_factory):
    ports = {n: free_port() for n in ("smtps", "https", "box", "http")}
    ports["web"] = web.port
    pb = pebble_factory(http_port=ports["http"], tls_port=free_port())
    sp = sallyport(config(tmp_path, pb, ports,
                          f"[certificate mail]\nacme = yes\nnames = {MAIL}\nchallenge = http-01\n",
                          extra=f"http_address = 127.0.0.1:{ports['http']}\n"))
    sp.wait_log("acme: certificate mail: installed", timeout=60)
    sp.wait_log("acme: certificates refreshed")
    assert "tls-alpn-01 challenge" not in sp.log()
    served_certificate(ports["smtps"], MAIL, pb.root_file())
    # Everything but a pending token is refused.
    for path in ("/", "/.well-known/acme-challenge/unknown-token", "/metrics"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}{path}", timeout=TIMEOUT)
        assert e.value.code == 404
    req = urllib.request.Request(f"http://127.0.0.1:{ports['http']}/", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=TIMEOUT)
    assert e.value.code == 405


def test_sigusr1_renews_while_a_session_stays_up(tmp_path, ca, sallyport, web, pebble_factory):
    ports = {n: free_port() for n in ("smtps", "https", "box")}
    ports["web"] = web.port
    pb = pebble_factory(http_port=free_port(), tls_port=ports["https"])
    sp = sallyport(config(tmp_path, pb, ports,
                          f"[certificate mail]\nacme = yes\nnames = {MAIL}\n"))
    sp.wait_log("acme: certificates refreshed", timeout=60)
    root = pb.root_file()
    first = serial(served_certificate(ports["smtps"], MAIL, root))
    held = SNISMTP_SSL(MAIL, ports["smtps"], timeout=TIMEOUT,
                       context=ssl.create_default_context(cafile=str(root)))
    try:
        assert held.ehlo()[0] == 250
        sp.proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: sp.log().count("acme: certificates refreshed") >= 2, 60,
                 what="the renewed certificate installed")
        assert "renewing every ACME certificate now" in sp.log()
        second = serial(served_certificate(ports["smtps"], MAIL, root))
        assert second != first
        # The session from before the renewal goes on, to the mailbox.
        assert held.noop()[0] == 250
        held.sendmail("a@example.test", ["b@example.test"], "Subject: held\r\n\r\nstill here\r\n")
    finally:
        held.quit()
    new = list((tmp_path / "maildir" / "new").iterdir())
    assert len(new) == 1 and b"still here" in new[0].read_bytes()


def test_a_reload_with_new_names_orders_while_the_old_certificate_serves(
        tmp_path, ca, sallyport, web, pebble_factory):
    ports = {n: free_port() for n in ("smtps", "https", "box")}
    ports["web"] = web.port
    pb = pebble_factory(http_port=free_port(), tls_port=ports["https"])
    sp = sallyport(config(tmp_path, pb, ports,
                          f"[certificate mail]\nacme = yes\nnames = {MAIL}\n"))
    sp.wait_log("acme: certificates refreshed", timeout=60)
    root = pb.root_file()
    first = serial(served_certificate(ports["smtps"], MAIL, root))
    pb.stop()  # the new order cannot go through yet
    sp.config.write_text(sp.config.read_text().replace(f"names = {MAIL}\n",
                                                       f"names = {MAIL} {IMAP}\n"))
    sp.proc.send_signal(signal.SIGHUP)
    sp.wait_log("reloaded: generation")
    sp.wait_log("retrying in", timeout=60)
    # Meanwhile the last good certificate serves MAIL, verified.
    assert serial(served_certificate(ports["smtps"], MAIL, root)) == first
    pb.start()
    root = pb.root_file()  # a restarted pebble has a new root
    wait_for(lambda: sp.log().count("acme: certificates refreshed") >= 2, 90,
             what="the certificate for both names installed")
    der = served_certificate(ports["smtps"], IMAP, root)
    assert serial(der) != first


@pytest.mark.parametrize("text, message", [
    ("[listener web]\nservice = https\nmode = terminate\n",
     "an https listener passes TLS through"),
    ("[listener submissions]\nbackend = www\n",
     "only an https listener takes backend"),
    ("[listener web]\nservice = https\nbackend = box2\n",
     "listener 'web' offers https, but backend 'box2' has none"),
    ("[certificate c]\nacme = yes\nnames = a.example.test\nchallenge = http-01\n",
     "http-01 needs [acme] http_address"),
    ("[certificate c]\nacme = yes\n",
     "acme = yes needs the names"),
    ("[certificate c]\nacme = yes\nnames = *.example.test\n",
     "cannot prove a wildcard"),
    ("[acme]\ndirectory = http://ca.test/dir\n", "is not an https:// URL"),
    ("[listener web]\nservice = https\nproxy_protocol = yes\n", "proxy_protocol = yes needs proxy_trusted"),
    ("[acme]\nhttp_address = 80\n", "needs a host and a port"),
])
def test_config_errors(tmp_path, text, message):
    base = ("[backend box2]\nhost = 127.0.0.1\n"
            "[listener submission]\naddress = 127.0.0.1:2587\nmode = passthrough\n"
            "[route r]\nsni = *\nbackend = box2\n")
    code, out = run_check(base + text, tmp_path)
    assert code == 1, out
    assert message in out, out
    assert f"{tmp_path}/check.conf:" in out


def test_a_reload_that_wants_http01_where_nothing_answers_is_refused(tmp_path, sallyport):
    """http_address is bound at start only: a reload that adds an http-01
    certificate without that endpoint running would order in vain."""
    ports = {n: free_port() for n in ("smtps", "box", "ca", "http")}
    base = f"""
[acme]
directory = https://127.0.0.1:{ports['ca']}/dir
state_dir = {tmp_path}/state
[certificate mail]
acme = yes
names = {MAIL}
[listener smtps]
service = submissions
address = 127.0.0.1:{ports['smtps']}
[mailbox box]
address = 127.0.0.1:{ports['box']}
maildir = {tmp_path}/maildir
[route main]
sni = *
backend = box
"""
    sp = sallyport(base)
    sp.wait_log("certificate mail: no ACME certificate in")
    sp.config.write_text(base.replace(
        "[certificate mail]\n",
        f"http_address = 127.0.0.1:{ports['http']}\n[certificate web]\nacme = yes\n"
        f"names = {WWW}\nchallenge = http-01\n[certificate mail]\n"))
    sp.proc.send_signal(signal.SIGHUP)
    log = sp.wait_log("reload refused")
    assert "certificate web wants http-01 at 127.0.0.1:" in log
    assert "the running endpoint is none (restart to bind it)" in log
    # The running generation goes on: the temporary certificate still serves.
    assert served_certificate(ports["smtps"], MAIL)
