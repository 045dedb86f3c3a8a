"""Client identity the protocols' own way (`xclient = yes` on a backend),
for backends that take no PROXY header, when sallyport terminates TLS:
SMTP XCLIENT (Postfix smtpd_authorized_xclient_hosts), IMAP ID with
x-originating-ip/-port and x-connected-ip/-port, and POP3 XCLIENT (Dovecot
login_trusted_networks). The backend is told inside TLS where there is TLS
(after an implicit-TLS handshake or after STARTTLS); the client sees the
backend's greeting and nothing of the exchange. A backend that does not
take the command fails the session with a reply and a log line that says
what to configure.

The clients connect from 127.0.0.2 and sallyport from 127.0.0.1, so that
Postfix's and Dovecot's logs can tell the client from the gateway."""
import socket
import ssl

import pytest

from access_helpers import (IMAP_WAYS, POP3_WAYS, IMAPFromSecondAddress,
                            IMAPSSLFromSecondAddress, POP3FromSecondAddress,
                            POP3SSLFromSecondAddress, backend_cases)
from conftest import free_port, wait_for
from dovecot import dovecot_module_factory  # noqa: F401  (a fixture)
from fakebackend import (FakeBackend, connect, read_reply, recv_line, send, server_context,
                         smtp_server, tls)
from postfix import postfix_module_factory  # noqa: F401  (a fixture)
from smtp_helpers import (
    SENDER, WAYS, SMTPFromSecondAddress, SMTPSSLFromSecondAddress, backend_section, certificate_section, issue, listener_section, log_fields,
    make_message, marker, route_section, session_lines, standard_body)

HOSTNAME = "gw.test"
SNI = "mail.proxy.test"
TERMINATE_WAYS = [w for w in WAYS if not w.passthrough]


def gateway_config(ca, way, backend_name, endpoint, *, sni=SNI, tls_name=SNI, cert_name=SNI,
                   port):
    text = "[global]\nlog_level = info\n\n"
    text += certificate_section("gw", *issue(ca, cert_name))
    text += listener_section(way, port, hostname=HOSTNAME)
    text += backend_section(backend_name, {way.service: endpoint}, ca=ca.cert, tls_name=tls_name)
    text = text.replace(f"[backend {backend_name}]\n", f"[backend {backend_name}]\nxclient = yes\n")
    return text + route_section("r", "*", backend_name)


# ---- SMTP: Postfix --------------------------------------------------------------

@pytest.fixture(scope="module")
def pf_xclient(ca, postfix_module_factory):
    """A Postfix that takes XCLIENT from sallyport (127.0.0.1) and logs ports."""
    cert, key = issue(ca, SNI)
    return postfix_module_factory(["xclient.test"], cert=cert, key=key, extra_main_cf={
        "smtpd_authorized_xclient_hosts": "127.0.0.1",
        "smtpd_client_port_logging": "yes"})


SMTP_CASES = [(w, f) for w in TERMINATE_WAYS for f in ("plain", "implicit", "starttls")]


@pytest.mark.parametrize("way,flavour", SMTP_CASES, ids=[f"{w.id}-to-{f}" for w, f in SMTP_CASES])
def test_postfix_logs_the_real_client(sallyport, ca, pf_xclient, way, flavour):
    """Mail from 127.0.0.2 through sallyport to Postfix: delivered, and
    Postfix logs the client as 127.0.0.2 with its port."""
    port = free_port()
    pf_port = {"plain": pf_xclient.plain_port, "implicit": pf_xclient.implicit_port,
               "starttls": pf_xclient.starttls_port}[flavour]
    sallyport(gateway_config(ca, way, "pf", f"127.0.0.1:{pf_port} {flavour}", port=port))
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    rcpt = pf_xclient.new_address("xclient.test")
    mark = marker()
    if way.tls == "implicit":
        s = SMTPSSLFromSecondAddress(SNI, port, local_hostname="client.test", context=ctx,
                                     timeout=30)
    else:
        s = SMTPFromSecondAddress(SNI, port, local_hostname="client.test", timeout=30)
        s.ehlo()
        s.starttls(context=ctx)
    client_port = s.sock.getsockname()[1]
    s.ehlo()
    assert not s.sendmail(SENDER, [rcpt], make_message(mark, standard_body(mark), rcpt))
    s.quit()
    pf_xclient.wait_for_message(rcpt)
    wait_for(lambda: f"client=unknown[127.0.0.2]:{client_port}" in pf_xclient.log(),
             what=f"Postfix logging the client 127.0.0.2:{client_port}")


def xclient_backend(ctx, ehlo_lines, xclient_reply=b"220 fresh.backend.test ESMTP\r\n"):
    """An implicit-TLS SMTP backend that answers XCLIENT (or not)."""
    return [tls(ctx), send(b"220 first.backend.test ESMTP\r\n"), recv_line(b"EHLO"),
            send(ehlo_lines), recv_line(b"XCLIENT"), send(xclient_reply),
            smtp_server(greet=False)]


def test_client_sees_one_greeting_and_backend_gets_exact_command(sallyport, ca):
    """The bytes: sallyport sends EHLO, then XCLIENT with the attributes the
    backend listed (NAME as [UNAVAILABLE]: no reverse lookup here), all
    inside TLS; the client gets the backend's first greeting and then its
    own commands' replies, never the EHLO reply or the XCLIENT reply."""
    ctx = server_context(*issue(ca, SNI))
    port = free_port()
    way = TERMINATE_WAYS[0]   # implicit TLS, terminated
    ehlo = (b"250-first.backend.test\r\n250-PIPELINING\r\n"
            b"250-XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT\r\n"
            b"250 8BITMIME\r\n")
    with FakeBackend(xclient_backend(ctx, ehlo)) as fb:
        sallyport(gateway_config(ca, way, "b", f"{fb.address} implicit", port=port))
        client = ssl.create_default_context(cafile=str(ca.cert))
        raw = socket.create_connection(("127.0.0.1", port), 30, source_address=("127.0.0.2", 0))
        with client.wrap_socket(raw, server_hostname=SNI) as s:
            client_port = s.getsockname()[1]
            assert read_reply(s) == b"220 first.backend.test ESMTP\r\n"
            s.sendall(b"NOOP\r\n")
            assert read_reply(s).startswith(b"250 ")
            s.sendall(b"QUIT\r\n")
            assert read_reply(s).startswith(b"221 ")
        conn = fb.wait_connection().wait_closed()
    assert conn.cleartext == b""      # everything inside TLS
    lines = conn.lines(tls_part=True)
    assert lines[0] == f"EHLO {HOSTNAME}".encode()
    assert lines[1] == (f"XCLIENT ADDR=127.0.0.2 NAME=[UNAVAILABLE] PORT={client_port} "
                        f"DESTADDR=127.0.0.1 DESTPORT={port}").encode()
    assert lines[2:] == [b"NOOP", b"QUIT"]


@pytest.mark.parametrize("case", ["not-offered", "refused"])
def test_backend_that_does_not_take_xclient_fails_the_session(sallyport, ca, case):
    """No XCLIENT in the EHLO reply (the gateway is not authorized), or a
    refusal: the client gets 421, nothing it sends reaches the backend, and
    the log says what to configure."""
    ctx = server_context(*issue(ca, SNI))
    port = free_port()
    way = TERMINATE_WAYS[0]
    if case == "not-offered":
        script = [tls(ctx), send(b"220 b ESMTP\r\n"), recv_line(b"EHLO"),
                  send(b"250-b\r\n250 PIPELINING\r\n")]
        why = "backend does not offer XCLIENT ADDR to sallyport"
    else:
        script = xclient_backend(ctx, b"250-b\r\n250 XCLIENT ADDR PORT\r\n",
                                 xclient_reply=b"550 5.7.0 insufficient authorization\r\n")
        why = "backend refused XCLIENT"
    with FakeBackend(script) as fb:
        sp = sallyport(gateway_config(ca, way, "b", f"{fb.address} implicit", port=port))
        client = ssl.create_default_context(cafile=str(ca.cert))
        with client.wrap_socket(connect(port), server_hostname=SNI) as s:
            assert read_reply(s).startswith(b"421 ")
        conn = fb.wait_connection().wait_closed()
    assert b"MAIL" not in conn.received and b"QUIT" not in conn.received
    (f,) = wait_for(lambda: [log_fields(l) for l in session_lines(sp.log())],
                    what="the session line")
    assert why in f["close"], f


# ---- IMAP and POP3: Dovecot --------------------------------------------------------

@pytest.fixture(scope="module")
def dv_xclient(dovecot_module_factory):
    """A Dovecot (login_trusted_networks = 127.0.0.0/8, as every fixture
    instance) whose login lines show the client's port too."""
    return dovecot_module_factory(
        extra_conf="login_log_format_elements = user=<%u> method=%m rip=%r rport=%{rport} "
                   "lip=%l lport=%{lport} mpid=%e %c\n")


def dovecot_endpoint(dv, proto, flavour):
    attr = {"plain": f"{proto}_plain_port", "implicit": f"{proto}s_port",
            "starttls": f"{proto}_port"}[flavour]
    return f"127.0.0.1:{getattr(dv, attr)} {flavour}"


def login_line(dv, client_port):
    return wait_for(lambda: next((l for l in dv.logins() if f"rport={client_port}," in l), None),
                    what=f"Dovecot's login line for port {client_port}")


IMAP_CASES = [(w, f) for w, f in backend_cases(IMAP_WAYS) if not w.passthrough]


@pytest.mark.parametrize("way,flavour", IMAP_CASES, ids=[f"{w.id}-to-{f}" for w, f in IMAP_CASES])
def test_dovecot_imap_logs_the_real_client(sallyport, ca, dv_xclient, way, flavour):
    """IMAP ID with x-originating-ip/-port and x-connected-ip/-port: Dovecot
    logs rip=127.0.0.2, the client's port, and sallyport's listener as the
    local end; the client sees no ID exchange."""
    dv = dv_xclient
    port = free_port()
    dv.allow_local_port(port)
    sallyport(gateway_config(ca, way, "dv", dovecot_endpoint(dv, "imap", flavour),
                             tls_name=dv.hostname, cert_name=dv.hostname, port=port))
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    if way.tls == "implicit":
        m = IMAPSSLFromSecondAddress(dv.hostname, port, ssl_context=ctx, timeout=30)
    else:
        m = IMAPFromSecondAddress(dv.hostname, port, timeout=30)
        m.starttls(ssl_context=ctx)
    client_port = m.sock.getsockname()[1]
    assert m.welcome.startswith(b"* OK")
    user, password = next(iter(dv.users.items()))
    m.login(user, password)
    assert m.noop()[0] == "OK"
    m.logout()
    line = login_line(dv, client_port)
    assert "rip=127.0.0.2," in line and f"lport={port}," in line, line


POP3_CASES = [(w, f) for w, f in backend_cases(POP3_WAYS) if not w.passthrough]


@pytest.mark.parametrize("way,flavour", POP3_CASES, ids=[f"{w.id}-to-{f}" for w, f in POP3_CASES])
def test_dovecot_pop3_logs_the_real_client(sallyport, ca, dv_xclient, way, flavour):
    """POP3 XCLIENT ADDR/PORT: Dovecot logs rip=127.0.0.2 and the port."""
    dv = dv_xclient
    port = free_port()
    sallyport(gateway_config(ca, way, "dv", dovecot_endpoint(dv, "pop3", flavour),
                             tls_name=dv.hostname, cert_name=dv.hostname, port=port))
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    if way.tls == "implicit":
        p = POP3SSLFromSecondAddress(dv.hostname, port, context=ctx, timeout=30)
    else:
        p = POP3FromSecondAddress(dv.hostname, port, timeout=30)
        p.stls(context=ctx)
    client_port = p.sock.getsockname()[1]
    assert p.getwelcome().startswith(b"+OK")
    user, password = next(iter(dv.users.items()))
    p.user(user)
    p.pass_(password)
    p.stat()
    p.quit()
    line = login_line(dv, client_port)
    assert "rip=127.0.0.2," in line, line
