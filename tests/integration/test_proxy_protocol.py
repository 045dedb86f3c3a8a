"""The PROXY protocol from a load balancer in front of sallyport: a listener
with `proxy_protocol = yes` requires a PROXY header (v1 or v2) before
anything else, from an address in `proxy_trusted` only. From then on the
client the header names is the client: in the log line and for the
per-client limits. A missing, malformed, oversized or untrusted header
closes the connection with a log line; its bytes are never read as protocol
data or as a ClientHello, and the bytes after a good header (a ClientHello
sent in the same write) reach TLS untouched.

Tested with hand-made headers (good and hostile ones) and with HAProxy in
front (send-proxy-v2 and send-proxy)."""
import shutil
import smtplib
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import pytest

from access_helpers import (IMAP_WAYS, IMAPFromSecondAddress, IMAPSSLFromSecondAddress,
                            backend_cases)
from conftest import free_port, wait_for
from dovecot import dovecot_module_factory  # noqa: F401  (a fixture)
from fakebackend import client_hello
from postfix import postfix_module_factory  # noqa: F401  (a fixture)
from smtp_helpers import (
    IMPLICIT_PASSTHROUGH, IMPLICIT_TERMINATE, SENDER, WAYS, WAY_IDS, SMTPFromSecondAddress,
    SMTPSSLFromSecondAddress, assert_mailbox_stored,
    backend_section, certificate_section, issue, listener_section, log_fields, make_message,
    mailbox_section, marker, route_section, session_lines, standard_body, wait_maildir)
from test_limits import connect, first_bytes, refused_with

HOSTNAME = "gw.test"
SNI = "mail.proxy.test"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
BUSY = b"421 4.7.0 gw.test Too many connections from your address"


def v2_header(src, sport, dst, dport, command=0x21, tlvs=b""):
    """A v2 header for TCP over IPv4 or IPv6 (by the addresses' form)."""
    family = socket.AF_INET6 if ":" in src else socket.AF_INET
    addresses = (socket.inet_pton(family, src) + socket.inet_pton(family, dst)
                 + struct.pack("!HH", sport, dport))
    fam = 0x21 if family == socket.AF_INET6 else 0x11
    body = addresses + tlvs
    return V2_SIGNATURE + bytes([command, fam]) + struct.pack("!H", len(body)) + body


def listener_config(port, service="submission", mode="passthrough", trusted="127.0.0.1",
                    extra_global="", extra_listener="", backend_port=None, cert=None):
    text = f"[global]\nlog_level = debug\n{extra_global}"
    if cert:
        text += certificate_section("gw", *cert)
    text += (f"[listener l]\nservice = {service}\naddress = 127.0.0.1:{port}\nmode = {mode}\n"
             f"hostname = {HOSTNAME}\nproxy_protocol = yes\nproxy_trusted = {trusted}\n"
             f"{extra_listener}\n")
    if backend_port is None:
        text += "[backend b]\nhost = 127.0.0.1\n[route r]\nsni = *\nbackend = b\n"
    return text


def lines_for(sp, needle):
    return [log_fields(l) for l in session_lines(sp.log()) if needle in l]


@pytest.fixture
def cleartext_gw(sallyport):
    """A STARTTLS listener behind a balancer: a good header gets a greeting."""
    def start(**kw):
        port = free_port()
        return sallyport(listener_config(port, **kw)), port
    return start


# ---- good headers -----------------------------------------------------------------

GOOD = {
    "v1-tcp4": lambda: b"PROXY TCP4 203.0.113.9 127.0.0.1 4711 587\r\n",
    "v1-tcp6": lambda: b"PROXY TCP6 2001:db8::9 2001:db8::1 4712 587\r\n",
    "v2-tcp4": lambda: v2_header("203.0.113.9", 4713, "127.0.0.1", 587),
    "v2-tcp6": lambda: v2_header("2001:db8::9", 4714, "2001:db8::1", 587,
                                 tlvs=b"\x04\x00\x03abc"),  # a NOOP TLV
}
CLIENTS = {"v1-tcp4": "203.0.113.9:4711", "v1-tcp6": "[2001:db8::9]:4712",
           "v2-tcp4": "203.0.113.9:4713", "v2-tcp6": "[2001:db8::9]:4714"}


@pytest.mark.parametrize("kind", list(GOOD))
def test_header_names_the_client(cleartext_gw, kind):
    sp, port = cleartext_gw()
    with connect(port) as s:
        s.sendall(GOOD[kind]())
        assert first_bytes(s).startswith(b"220 gw.test ")
        s.sendall(b"QUIT\r\n")
        assert first_bytes(s).startswith(b"221 ")
    (f,) = wait_for(lambda: lines_for(sp, f"client={CLIENTS[kind]} "), what="the session line")
    assert f["close"] == "client quit in cleartext", f


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_local_and_unknown_keep_the_balancer_as_client(cleartext_gw, version):
    """A health check (v2 LOCAL, v1 UNKNOWN) names no client: the balancer is."""
    sp, port = cleartext_gw()
    header = (v2_header("0.0.0.0", 0, "0.0.0.0", 0, command=0x20) if version == "v2"
              else b"PROXY UNKNOWN\r\n")
    with connect(port) as s:
        s.sendall(header)
        assert first_bytes(s).startswith(b"220 ")
        own = s.getsockname()[1]
    wait_for(lambda: lines_for(sp, f"client=127.0.0.1:{own} "), what="the session line")


def test_header_split_into_single_bytes(cleartext_gw):
    sp, port = cleartext_gw()
    header = v2_header("198.51.100.4", 999, "127.0.0.1", 587)
    with connect(port) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(header)):
            s.sendall(header[i:i + 1])
            time.sleep(0.002)
        assert first_bytes(s).startswith(b"220 ")
    wait_for(lambda: lines_for(sp, "client=198.51.100.4:999 "), what="the session line")


# ---- hostile headers: closed, logged, never read as protocol data --------------------

HOSTILE = {
    "no-header": (b"EHLO client.test\r\n", "no PROXY header"),
    "bad-signature": (V2_SIGNATURE[:11] + b"\x0b\x21\x11\x00\x0c" + bytes(12),
                      "no PROXY header"),
    "v2-length-beyond-limit": (V2_SIGNATURE + b"\x21\x11\xff\xff", "longer than"),
    "v2-tlv-overruns": (v2_header("203.0.113.9", 1, "127.0.0.1", 2, tlvs=b"\x02\x00\x09ab"),
                        "TLV that overruns"),
    "v2-udp": (V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12), "transport other than TCP"),
    "v1-no-crlf-in-107": (b"PROXY TCP4 " + b"1" * 120, "without CRLF within 107 bytes"),
    "v1-bad-address": (b"PROXY TCP4 2001:db8::1 127.0.0.1 1 2\r\n", "address"),
    "v1-lf-without-cr": (b"PROXY TCP4 203.0.113.9 127.0.0.1 1 2\n", "CRLF"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_header_closes_without_a_word(cleartext_gw, kind):
    data, reason = HOSTILE[kind]
    sp, port = cleartext_gw()
    with connect(port) as s:
        s.sendall(data)
        assert s.recv(4096) == b"", "sallyport answered a connection with a bad header"
    line = wait_for(lambda: [l for l in session_lines(sp.log()) if "bad PROXY header" in l],
                    what="the session line")[0]
    assert reason in line, line
    assert "sallyport[warn]" in line, line


def test_missing_header_times_out(cleartext_gw):
    """A client that waits for the greeting (server-first protocols) gets
    nothing: there is no greeting before the header."""
    sp, port = cleartext_gw(extra_global="handshake_timeout = 1\n")
    with connect(port) as s:
        assert s.recv(4096) == b""
    wait_for(lambda: lines_for(sp, 'close="PROXY header timeout"'), what="the session line")


def test_untrusted_source_is_closed(cleartext_gw):
    """Closed at accept, before a byte is read (a reset, as its header is unread)."""
    sp, port = cleartext_gw(trusted="127.0.0.2")
    with connect(port) as s:
        s.sendall(GOOD["v2-tcp4"]())
        try:
            assert s.recv(4096) == b""
        except ConnectionResetError:
            pass
    sp.wait_log("which is not in proxy_trusted: closed")


# ---- the client's limits use the header's address -------------------------------------

def test_client_limits_count_the_named_client(cleartext_gw):
    """All connections come from the balancer; each client is counted by the
    address its header names."""
    sp, port = cleartext_gw(extra_global="max_client_connections = 1\n"
                                         "client_connection_rate = 0\n"
                                         "client_limit_exceptions = none\n")
    a = v2_header("203.0.113.20", 1000, "127.0.0.1", 587)
    a2 = v2_header("203.0.113.20", 1001, "127.0.0.1", 587)
    b = v2_header("203.0.113.21", 1000, "127.0.0.1", 587)
    with connect(port) as first:
        first.sendall(a)
        assert first_bytes(first).startswith(b"220 ")
        with connect(port) as same_client:
            same_client.sendall(a2)
            refused_with(same_client, BUSY)
        with connect(port) as other_client:
            other_client.sendall(b)
            assert first_bytes(other_client).startswith(b"220 ")
    wait_for(lambda: lines_for(sp, 'client=203.0.113.20:1001 '), what="the refusal line")
    (f,) = lines_for(sp, 'client=203.0.113.20:1001 ')
    assert f["close"] == "refused: max_client_connections reached", f


# ---- TLS after the header: nothing of the ClientHello is lost ---------------------------

def tls_gateway(sallyport, tmp_path, ca, way):
    """An implicit-TLS listener behind a balancer, to an embedded mailbox."""
    port, mport = free_port(), free_port()
    cert, key = issue(ca, SNI)
    maildir = tmp_path / "Maildir"
    text = listener_config(port, service="submissions", mode=way.mode, backend_port=mport,
                           cert=(cert, key) if not way.passthrough else None)
    text += mailbox_section("box", mport, maildir, tls="implicit" if way.passthrough else "plain",
                            cert=cert, key=key)
    text += route_section("r", SNI, "box")
    return sallyport(text), port, maildir


@pytest.mark.parametrize("way", [IMPLICIT_TERMINATE, IMPLICIT_PASSTHROUGH], ids=lambda w: w.id)
def test_clienthello_in_the_same_write_as_the_header(sallyport, tmp_path, ca, way):
    """A balancer sends the header and the client's first bytes together:
    the ClientHello must reach TLS whole (a ServerHello comes back)."""
    sp, port, _ = tls_gateway(sallyport, tmp_path, ca, way)
    with connect(port) as s:
        s.sendall(v2_header("203.0.113.30", 3000, "127.0.0.1", 465) + client_hello(SNI))
        record = s.recv(5)
        assert record[:1] == b"\x16", record  # a handshake record: the ServerHello
    sp.wait_log("client=203.0.113.30:3000 ")


def send_over_tls(s, maildir):
    """One message over the TLS socket `s` (greeting not yet read); checks
    that it lands in the Maildir whole."""
    mark = marker()
    message = make_message(mark, standard_body(mark), "bob@proxy.test")
    with s:
        smtp = smtplib.SMTP()
        smtp.sock = s
        smtp.file = None
        assert smtp.getreply()[0] == 220
        smtp.ehlo("client.test")
        assert not smtp.sendmail(SENDER, ["bob@proxy.test"], message)
        smtp.quit()
    (stored,) = wait_maildir(maildir)
    assert_mailbox_stored(stored, message)


@pytest.mark.parametrize("way", [IMPLICIT_TERMINATE, IMPLICIT_PASSTHROUGH], ids=lambda w: w.id)
def test_mail_through_a_header_then_tls(sallyport, tmp_path, ca, way):
    sp, port, maildir = tls_gateway(sallyport, tmp_path, ca, way)
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    raw = connect(port)
    raw.sendall(v2_header("203.0.113.31", 3100, "127.0.0.1", 465))
    send_over_tls(ctx.wrap_socket(raw, server_hostname=SNI), maildir)
    sp.wait_log("client=203.0.113.31:3100 ")


# ---- HAProxy in front -----------------------------------------------------------------

@pytest.fixture
def haproxy(tmp_path):
    """haproxy(listen_port, server_port, send_proxy): HAProxy in TCP mode in
    front of sallyport, sending a PROXY header on every connection."""
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    started = []

    def start(listen_port, server_port, send_proxy):
        cfg = tmp_path / f"haproxy-{listen_port}.cfg"
        cfg.write_text(f"""global
    log stderr format short local0 info
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend f
    bind 127.0.0.1:{listen_port}
    default_backend b
backend b
    server s 127.0.0.1:{server_port} {send_proxy}
""")
        log = open(tmp_path / f"haproxy-{listen_port}.log", "wb")
        proc = subprocess.Popen([binary, "-f", str(cfg), "-db"], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started.append((proc, log))

        def listening():
            if proc.poll() is not None:
                raise AssertionError(f"haproxy exited with {proc.returncode}: "
                                     f"{Path(log.name).read_text()}")
            try:
                socket.create_connection(("127.0.0.1", listen_port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(listening, what="haproxy listening")

    yield start
    for proc, log in started:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.mark.parametrize("send_proxy", ["send-proxy-v2", "send-proxy"])
def test_haproxy_in_front(sallyport, haproxy, tmp_path, ca, send_proxy):
    """A client on 127.0.0.2 sends mail through HAProxy and sallyport (passing
    TLS through to the mailbox): sallyport logs the client's own address,
    not HAProxy's."""
    sp, port, maildir = tls_gateway(sallyport, tmp_path, ca, IMPLICIT_PASSTHROUGH)
    front = free_port()
    haproxy(front, port, send_proxy)
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    raw = socket.create_connection(("127.0.0.1", front), timeout=30,
                                   source_address=("127.0.0.2", 0))
    client_port = raw.getsockname()[1]
    send_over_tls(ctx.wrap_socket(raw, server_hostname=SNI), maildir)
    (f,) = wait_for(lambda: lines_for(sp, f"client=127.0.0.2:{client_port} "),
                    what="the session line with the client's own address")
    assert f["sni"] == SNI, f


# ---- towards the backend: proxy_protocol = v1 | v2 ------------------------------------

def backend_script(flavour, ctx):
    """After the PROXY header: a well-behaved SMTP backend of `flavour`."""
    from fakebackend import recv_line as line, send as say, smtp_server, tls
    if flavour == "plain":
        return [smtp_server(greet=True)]
    if flavour == "implicit":
        return [tls(ctx), smtp_server(greet=True)]
    return [say(b"220 fake.backend.test ESMTP\r\n"), line(b"EHLO"),
            say(b"250-fake.backend.test\r\n250 STARTTLS\r\n"), line(b"STARTTLS"),
            say(b"220 2.0.0 go ahead\r\n"), tls(ctx), smtp_server()]


def parse_v2(header):
    """(src, sport, dst, dport, {type: value}) of a v2 TCP4 header."""
    assert header[:12] == V2_SIGNATURE and header[12] == 0x21 and header[13] == 0x11, header
    length = int.from_bytes(header[14:16], "big")
    assert len(header) == 16 + length
    src, dst = socket.inet_ntoa(header[16:20]), socket.inet_ntoa(header[20:24])
    sport, dport = struct.unpack("!HH", header[24:28])
    tlvs, pos = {}, 28
    while pos < len(header):
        t, n = header[pos], int.from_bytes(header[pos + 1:pos + 3], "big")
        tlvs[t] = header[pos + 3:pos + 3 + n]
        pos += 3 + n
    return src, sport, dst, dport, tlvs


def ssl_subtlvs(value):
    """PP2_TYPE_SSL: client flags, verify, then sub-TLVs."""
    subs, pos = {}, 5
    while pos < len(value):
        t, n = value[pos], int.from_bytes(value[pos + 1:pos + 3], "big")
        subs[t] = value[pos + 3:pos + 3 + n]
        pos += 3 + n
    return value[0], subs


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("way", WAYS, ids=WAY_IDS)
def test_backend_gets_the_header_first(sallyport, ca, way, version):
    """The header is the backend's first byte in every way: before a plain
    or STARTTLS backend's greeting, before an implicit backend's TLS, before
    the relayed ClientHello. It names the client (127.0.0.2 and its port)
    and the address it reached; v2 adds the SNI, and after a terminated
    handshake the TLS version and cipher."""
    from fakebackend import FakeBackend, recv_proxy_header, server_context
    cert, key = issue(ca, SNI)
    flavour = way.tls if way.passthrough else "plain"
    with FakeBackend([recv_proxy_header()] + backend_script(flavour, server_context(cert, key))) \
            as fb:
        port = free_port()
        text = f"[global]\nlog_level = debug\n\n"
        if not way.passthrough:
            text += certificate_section("gw", cert, key)
        text += listener_section(way, port, hostname=HOSTNAME)
        text += backend_section("b", {way.service: f"{fb.address} {flavour}"}, ca=ca.cert,
                                tls_name=SNI)
        text = text.replace("[backend b]\n", f"[backend b]\nproxy_protocol = {version}\n")
        text += route_section("r", SNI, "b")
        sallyport(text)
        ctx = ssl.create_default_context(cafile=str(ca.cert))
        if way.tls == "implicit":
            s = SMTPSSLFromSecondAddress(SNI, port, local_hostname="client.test", context=ctx,
                                         timeout=30)
        else:
            s = SMTPFromSecondAddress(SNI, port, local_hostname="client.test", timeout=30)
            s.ehlo()
            s.starttls(context=ctx)
        client_port = s.sock.getsockname()[1]
        s.ehlo()
        assert s.noop()[0] == 250
        s.quit()
        conn = fb.wait_connection().wait_closed()
    assert conn.error is None, conn.error
    header = conn.proxy_header
    if version == "v1":
        assert header == f"PROXY TCP4 127.0.0.2 127.0.0.1 {client_port} {port}\r\n".encode()
        return
    src, sport, dst, dport, tlvs = parse_v2(header)
    assert (src, sport, dst, dport) == ("127.0.0.2", client_port, "127.0.0.1", port)
    assert tlvs.get(0x02) == SNI.encode(), tlvs  # PP2_TYPE_AUTHORITY
    if way.passthrough:
        assert 0x20 not in tlvs, "passthrough: sallyport has no TLS details to give"
    else:
        client, subs = ssl_subtlvs(tlvs[0x20])
        assert client & 0x01  # PP2_CLIENT_SSL
        assert subs[0x21] == b"TLSv1.3", subs
        assert subs[0x23].startswith(b"TLS_"), subs


def test_backend_header_names_the_balancers_client(sallyport, ca):
    """Behind a balancer, the backend is told the client the balancer named,
    and the address that client reached."""
    from fakebackend import FakeBackend, recv_proxy_header, server_context
    cert, key = issue(ca, SNI)
    with FakeBackend([recv_proxy_header()] + backend_script("plain", None)) as fb:
        port = free_port()
        text = listener_config(port, service="submissions", mode="terminate", backend_port=1,
                               cert=(cert, key))
        text += (f"[backend b]\nsubmissions = {fb.address} plain\nproxy_protocol = v1\n"
                 f"[route r]\nsni = *\nbackend = b\n")
        sallyport(text)
        with connect(port) as raw:
            raw.sendall(v2_header("203.0.113.40", 4000, "192.0.2.1", 465))
            with ssl.create_default_context(cafile=str(ca.cert)).wrap_socket(
                    raw, server_hostname=SNI) as s:
                assert first_bytes(s).startswith(b"220 ")
                s.sendall(b"QUIT\r\n")
                assert first_bytes(s).startswith(b"221 ")
        conn = fb.wait_connection().wait_closed()
    assert conn.proxy_header == b"PROXY TCP4 203.0.113.40 192.0.2.1 4000 465\r\n"


# ---- Postfix behind sallyport, told the client ------------------------------------------

@pytest.fixture(scope="module")
def pf_proxy(ca, postfix_module_factory):
    """One Postfix whose proxy ports want a PROXY header (v1 or v2: Postfix
    takes both), and log each client's port."""
    cert, key = issue(ca, SNI)
    return postfix_module_factory(["proxy.test"], cert=cert, key=key, proxy_ports=True,
                                  extra_main_cf={"smtpd_client_port_logging": "yes"})


POSTFIX_CASES = [(w, f, v) for w in WAYS
                 for f in ((w.tls,) if w.passthrough else ("plain", "implicit", "starttls"))
                 for v in ("v1", "v2")]


@pytest.mark.parametrize("way,flavour,version", POSTFIX_CASES,
                         ids=[f"{w.id}-{f}-{v}" for w, f, v in POSTFIX_CASES])
def test_postfix_logs_the_real_client(sallyport, ca, pf_proxy, way, flavour, version):
    """A client on 127.0.0.2 sends mail through sallyport to Postfix's port
    with smtpd_upstream_proxy_protocol = haproxy: Postfix logs 127.0.0.2 and
    the client's port (sallyport itself connects from 127.0.0.1), and the
    message is delivered."""
    port = free_port()
    pf_port = {"plain": pf_proxy.proxy_plain_port, "implicit": pf_proxy.proxy_implicit_port,
               "starttls": pf_proxy.proxy_starttls_port}[flavour]
    cert, key = issue(ca, SNI)
    text = "[global]\nlog_level = info\n\n"
    if not way.passthrough:
        text += certificate_section("gw", cert, key)
    text += listener_section(way, port, hostname=HOSTNAME)
    text += backend_section("pf", {way.service: f"127.0.0.1:{pf_port} {flavour}"}, ca=ca.cert,
                            tls_name=SNI)
    text = text.replace("[backend pf]\n", f"[backend pf]\nproxy_protocol = {version}\n")
    text += route_section("r", SNI, "pf")
    sallyport(text)
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    rcpt = pf_proxy.new_address("proxy.test")
    mark = marker()
    message = make_message(mark, standard_body(mark), rcpt)
    if way.tls == "implicit":
        s = SMTPSSLFromSecondAddress(SNI, port, local_hostname="client.test", context=ctx,
                                     timeout=30)
    else:
        s = SMTPFromSecondAddress(SNI, port, local_hostname="client.test", timeout=30)
        s.ehlo()
        s.starttls(context=ctx)
    client_port = s.sock.getsockname()[1]
    s.ehlo()
    assert not s.sendmail(SENDER, [rcpt], message)
    s.quit()
    pf_proxy.wait_for_message(rcpt)
    wait_for(lambda: f"connect from unknown[127.0.0.2]:{client_port}" in pf_proxy.log()
             or f"[127.0.0.2]:{client_port}" in pf_proxy.log(),
             what=f"Postfix logging the client 127.0.0.2:{client_port}")


# ---- Dovecot behind sallyport, told the client ------------------------------------------

@pytest.fixture(scope="module")
def dv_proxy(dovecot_module_factory):
    """One Dovecot with IMAP ports that want a PROXY header, logging rport too."""
    return dovecot_module_factory(
        proxy_ports=True,
        extra_conf="login_log_format_elements = user=<%u> method=%m rip=%r rport=%{rport} "
                   "lip=%l mpid=%e %c\n")


DOVECOT_CASES = [(w, f, v) for w, f in backend_cases(IMAP_WAYS)
                 for v in (("v1", "v2") if f == "implicit" else ("v2",))]


@pytest.mark.parametrize("way,flavour,version", DOVECOT_CASES,
                         ids=[f"{w.id}-{f}-{v}" for w, f, v in DOVECOT_CASES])
def test_dovecot_logs_the_real_client(sallyport, ca, dv_proxy, way, flavour, version):
    """A client on 127.0.0.2 logs in to Dovecot through sallyport; Dovecot
    (haproxy = yes, haproxy_trusted_networks) logs rip=127.0.0.2 and the
    client's port, in every IMAP way and backend flavour."""
    dv = dv_proxy
    port = free_port()
    dv_port = dv.imaps_proxy_port if flavour == "implicit" else dv.imap_proxy_port
    text = "[global]\nlog_level = info\n\n"
    if not way.passthrough:
        text += certificate_section("gw", *issue(ca, dv.hostname))
    text += (f"[listener {way.service}]\naddress = 127.0.0.1:{port}\nmode = {way.mode}\n"
             f"hostname = {HOSTNAME}\n\n")
    text += backend_section("dv", {way.service: f"127.0.0.1:{dv_port} {flavour}"}, ca=ca.cert,
                            tls_name=dv.hostname)
    text = text.replace("[backend dv]\n", f"[backend dv]\nproxy_protocol = {version}\n")
    text += route_section("r", "*", "dv")
    sallyport(text)
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    if way.tls == "implicit":
        m = IMAPSSLFromSecondAddress(dv.hostname, port, ssl_context=ctx, timeout=30)
    else:
        m = IMAPFromSecondAddress(dv.hostname, port, timeout=30)
        m.starttls(ssl_context=ctx)
    client_port = m.sock.getsockname()[1]
    user, password = next(iter(dv.users.items()))
    m.login(user, password)
    m.logout()
    line = wait_for(lambda: next((l for l in dv.logins() if f"rport={client_port}," in l), None),
                    what=f"Dovecot's login line for port {client_port}")
    assert "rip=127.0.0.2," in line, line
