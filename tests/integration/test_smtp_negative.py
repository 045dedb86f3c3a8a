"""What a client must not be able to do before (or instead of) TLS.

The cleartext SMTP dialogue of a STARTTLS listener, the STARTTLS injection
rules, the limits (errors, line length, time), and the TLS gate itself
(TLS >= 1.2, SNI routing) on implicit and STARTTLS listeners, in terminate and
passthrough mode. The backend is a FakeBackend, which records every
connection: most tests here assert that nothing ever reached it.

Raw sockets throughout, so every byte sallyport sends is checked exactly.
"""
import re
import select
import ssl
import time
import warnings

import pytest

from conftest import free_port
from fakebackend import (GO_AHEAD, GREETING, HOSTNAME, MUST_STARTTLS, FakeBackend, Gateway,
                         alpn_context,
                         assert_alive, cleartext_to_go_ahead, client_context, client_hello,
                         connect, read_line, read_reply, recv_line, recv_until_closed, send,
                         server_context, smtp_server, tls)

MODES = ["terminate", "passthrough"]
SERVICES = ["submissions", "submission"]  # implicit TLS, STARTTLS


# -- set-up ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def gw_cert(ca):
    """sallyport's certificate (terminate mode)."""
    return ca.issue("neg-gw", [HOSTNAME, "known.test"])


@pytest.fixture(scope="module")
def backend_cert(ca):
    """The fake backend's certificate: trusted as backend.test by sallyport, and
    valid for the client's names too (passthrough clients see it)."""
    return ca.issue("neg-backend", ["backend.test", HOSTNAME, "known.test"])


def starttls_backend(ctx):
    """A well-behaved STARTTLS backend: greeting, EHLO, STARTTLS, TLS, SMTP."""
    return [send(b"220 fake.backend.test ESMTP fake\r\n"),
            recv_line(b"EHLO"),
            send(b"250-fake.backend.test\r\n250 STARTTLS\r\n"),
            recv_line(b"STARTTLS"),
            send(b"220 2.0.0 go ahead\r\n"),
            tls(ctx),
            smtp_server()]


def implicit_backend(ctx):
    """A well-behaved implicit-TLS backend: TLS, then greeting and SMTP."""
    return [tls(ctx), smtp_server(greet=True)]


@pytest.fixture
def gateway(sallyport, ca, gw_cert, backend_cert):
    """Factory: one sallyport listener (`service`, `mode`) in front of a FakeBackend.

    The backend has both SMTP endpoints at the fake backend (submission as
    STARTTLS, submissions as implicit TLS), so every listener/mode pair is
    valid. By default the fake backend plays a well-behaved script for the
    listener's service; `script` overrides it."""
    backends = []

    def start(mode, service="submission", script=None, sni="*", **global_opts):
        if script is None:
            ctx = server_context(*backend_cert)
            script = starttls_backend(ctx) if service == "submission" else implicit_backend(ctx)
        fb = FakeBackend(script)
        backends.append(fb)
        port = free_port()
        options = {"log_level": "debug", "plaintext_timeout": 60, "handshake_timeout": 30,
                   "connect_timeout": 10, **global_opts}
        text = "[global]\n" + "".join(f"{k} = {v}\n" for k, v in options.items())
        text += (f"[certificate gw]\ncert = {gw_cert[0]}\nkey = {gw_cert[1]}\n"
                 f"[listener l]\nservice = {service}\naddress = 127.0.0.1:{port}\n"
                 f"mode = {mode}\nhostname = {HOSTNAME}\n"
                 f"[backend b]\nsubmission = {fb.address} starttls\n"
                 f"submissions = {fb.address} implicit\n"
                 f"ca = {ca.cert}\ntls_name = backend.test\nverify = yes\n"
                 f"[route r]\nsni = {sni}\nbackend = b\n")
        return Gateway(sallyport(text), port, fb, service, mode)

    yield start
    for fb in backends:
        fb.close()


def smtp_session(gw, ctx, server_name):
    """A short, successful session through the gateway; returns the peer's DER certificate."""
    with connect(gw.port) as raw:
        if gw.service == "submission":
            cleartext_to_go_ahead(raw)
        with ctx.wrap_socket(raw, server_hostname=server_name) as s:
            if gw.service == "submissions":
                assert read_reply(s).startswith(b"220 ")
            s.sendall(b"EHLO client.test\r\n")
            assert read_reply(s).startswith(b"250")
            s.sendall(b"QUIT\r\n")
            assert read_reply(s).startswith(b"221")
            recv_until_closed(s)
            return s.getpeercert(binary_form=True)


def ehlo_keywords(reply):
    lines = reply.split(b"\r\n")
    assert lines[-1] == b"", reply
    lines = lines[:-1]
    assert all(line[:4] == b"250-" for line in lines[:-1]), reply
    assert lines[-1][:4] == b"250 ", reply
    # The first line names the server; the others are extensions.
    return [line[4:].split(b" ")[0].split(b"=")[0].upper() for line in lines[1:]]


# -- the cleartext dialogue -------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_greeting_and_ehlo_offer_starttls_only(gateway, mode):
    gw = gateway(mode)
    with connect(gw.port) as s:
        assert read_line(s) == GREETING
        s.sendall(b"EHLO client.test\r\n")
        keywords = ehlo_keywords(read_reply(s))
        assert b"STARTTLS" in keywords
        assert b"AUTH" not in keywords
        assert b"PIPELINING" not in keywords
        s.sendall(b"QUIT\r\n")
        assert read_reply(s).startswith(b"221 ")
        assert recv_until_closed(s) == b""
    assert "backend_addr=-" in gw.wait_session_line()
    assert gw.fb.count == 0


REFUSED = {
    "mail": b"MAIL FROM:<alice@client.test>",
    "rcpt": b"RCPT TO:<bob@gw.test>",
    "data": b"DATA",
    "auth-plain": b"AUTH PLAIN AGFsaWNlAHNlY3JldA==",
    "auth-lowercase": b"auth login",
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("command", list(REFUSED.values()), ids=list(REFUSED))
def test_commands_before_starttls_are_refused(gateway, mode, command):
    gw = gateway(mode)
    with connect(gw.port) as s:
        assert read_line(s) == GREETING
        s.sendall(b"EHLO client.test\r\n")
        read_reply(s)
        s.sendall(command + b"\r\n")
        assert read_reply(s) == MUST_STARTTLS
        s.sendall(b"NOOP\r\n")  # still in the dialogue, nothing else happened
        assert read_reply(s).startswith(b"250 ")
        s.sendall(b"QUIT\r\n")
        assert read_reply(s).startswith(b"221 ")
        assert recv_until_closed(s) == b""
    line = gw.wait_session_line()
    assert "backend_addr=-" in line, line
    assert gw.fb.count == 0, "a command before STARTTLS reached the backend"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pipelined", [b"RSET\r\n", b"MAIL FROM:<a@b>\r\n"],
                         ids=["rset", "mail"])
def test_command_pipelined_behind_starttls_drops_the_connection(gateway, mode, pipelined):
    gw = gateway(mode)
    with connect(gw.port) as s:
        assert read_line(s) == GREETING
        s.sendall(b"EHLO client.test\r\n")
        read_reply(s)
        s.sendall(b"STARTTLS\r\n" + pipelined)  # one write: one segment
        # Neither the go-ahead nor an answer to the injected command.
        assert recv_until_closed(s) == b""
    log = gw.sp.wait_log("command injection")
    assert "session listener=" in log
    assert gw.fb.count == 0


@pytest.mark.parametrize("mode", MODES)
def test_cleartext_after_go_ahead_drops_the_connection(gateway, mode):
    gw = gateway(mode)
    with connect(gw.port) as s:
        cleartext_to_go_ahead(s)
        s.sendall(b"RSET\r\n")  # instead of a ClientHello
        assert recv_until_closed(s) == b""
    gw.sp.wait_log("command injection")
    assert gw.fb.count == 0


def test_too_many_errors_closes_with_421(gateway):
    gw = gateway("terminate", max_errors=3)
    with connect(gw.port) as s:
        assert read_line(s) == GREETING
        s.sendall(b"MAIL FROM:<a@b.test>\r\n")
        assert read_reply(s) == MUST_STARTTLS
        s.sendall(b"NOOP\r\n")  # a good command is not an error
        assert read_reply(s).startswith(b"250 ")
        s.sendall(b"AUTH LOGIN\r\n")
        assert read_reply(s) == MUST_STARTTLS
        s.sendall(b"VRFY root\r\n")
        assert read_reply(s).startswith(b"421 ")
        assert recv_until_closed(s) == b""
    assert "too many errors" in gw.wait_session_line()
    assert_alive(gw)


def test_overlong_line_is_refused_and_skipped(gateway):
    gw = gateway("terminate")
    with connect(gw.port) as s:
        assert read_line(s) == GREETING
        # RFC 5321 4.5.3.1.6: 1000 octets with the CRLF are allowed ...
        s.sendall(b"NOOP " + b"x" * 993 + b"\r\n")
        assert read_reply(s).startswith(b"250 ")
        # ... 1001 are not.
        s.sendall(b"NOOP " + b"x" * 994 + b"\r\n")
        assert read_reply(s).startswith(b"500 5.5.6")
        s.sendall(b"NOOP\r\n")
        assert read_reply(s).startswith(b"250 ")
        # Longer than sallyport's buffer: still one line, one error, and its
        # tail is never read as a command.
        s.sendall(b"NOOP " + b"y" * 40000 + b"QUIT\r\nNOOP\r\n")
        assert read_reply(s).startswith(b"500 5.5.6")
        assert read_reply(s).startswith(b"250 ")
        s.sendall(b"QUIT\r\n")
        assert read_reply(s).startswith(b"221 ")
        assert recv_until_closed(s) == b""
    assert gw.fb.count == 0


def test_megabyte_without_newline(gateway):
    gw = gateway("terminate")
    with connect(gw.port) as s:
        assert read_line(s) == GREETING
        try:
            s.sendall(b"A" * (1 << 20))
            s.sendall(b"\r\nQUIT\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # closing on a flood is allowed
        data = recv_until_closed(s)
    # Whatever came back is the line-too-long error (and the goodbye, if the
    # connection was kept): never anything taken from the flood.
    for line in data.split(b"\r\n")[:-1]:
        assert line.startswith((b"500 5.5.6", b"421 ", b"221 ")), data
    assert data.endswith(b"\r\n") or data == b"", data
    assert_alive(gw)
    with connect(gw.port) as s:
        assert read_line(s) == GREETING


def test_plaintext_timeout_sends_421(gateway):
    gw = gateway("terminate", plaintext_timeout=1)
    with connect(gw.port, timeout=30) as s:
        assert read_line(s) == GREETING
        line = read_line(s)
        assert line.startswith(b"421 4.4.2 "), line
        assert line.endswith(b"\r\n")
        assert recv_until_closed(s) == b""
    assert_alive(gw)


def test_plaintext_timeout_is_not_reset_by_commands(gateway):
    """The cleartext phase has one deadline: a chatty client cannot stretch it."""
    gw = gateway("terminate", plaintext_timeout=1)
    deadline = time.monotonic() + 30
    with connect(gw.port, timeout=30) as s:
        assert read_line(s) == GREETING
        while True:
            assert time.monotonic() < deadline, "no timeout while the client kept talking"
            s.sendall(b"NOOP\r\n")
            reply = read_line(s)
            if reply.startswith(b"421"):
                break
            assert reply == b"250 2.0.0 OK\r\n" or reply.startswith(b"250 "), reply
            select.select([s], [], [], 0.1)  # pace the NOOPs; woken early by the 421
        assert reply.startswith(b"421 4.4.2 "), reply
        assert recv_until_closed(s) == b""


# -- the TLS gate --------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_plaintext_on_implicit_tls_listener_is_closed(gateway, ca, mode):
    gw = gateway(mode, service="submissions")
    with connect(gw.port) as s:
        s.sendall(b"EHLO client.test\r\n")
        assert recv_until_closed(s) == b""
    assert_alive(gw)
    assert gw.fb.count == 0
    # Still serving TLS clients.
    smtp_session(gw, client_context(ca), HOSTNAME)
    assert gw.fb.count == 1


def tls11_client_context():
    """A client that offers nothing newer than TLS 1.1 (and old ciphers)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def test_tls11_client_works_against_a_tls11_server(gw_cert):
    """Control for test_tls11_client_is_refused: this client can do TLS 1.1."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ctx.load_cert_chain(*map(str, gw_cert))
    with FakeBackend([tls(ctx), send(b"hello\r\n")]) as fb:
        with connect(fb.port) as raw, tls11_client_context().wrap_socket(raw) as s:
            assert s.version() == "TLSv1.1"
            assert read_line(s) == b"hello\r\n"


@pytest.mark.parametrize("service", SERVICES)
def test_tls11_client_is_refused(gateway, service):
    gw = gateway("terminate", service=service)
    with connect(gw.port) as s:
        if service == "submission":
            cleartext_to_go_ahead(s)
        with pytest.raises(ssl.SSLError) as failure:
            tls11_client_context().wrap_socket(s, server_hostname=HOSTNAME)
    assert "PROTOCOL_VERSION" in str(failure.value).upper(), failure.value
    line = gw.wait_session_line()
    assert "handshake failed" in line, line
    assert gw.fb.count == 0
    assert_alive(gw)


@pytest.mark.parametrize("service", SERVICES)
def test_unknown_sni_terminate_gets_unrecognized_name(gateway, ca, service):
    gw = gateway("terminate", service=service, sni="known.test")
    with connect(gw.port) as s:
        if service == "submission":
            cleartext_to_go_ahead(s)
        ctx = client_context(ca)
        with pytest.raises(ssl.SSLError) as failure:
            ctx.wrap_socket(s, server_hostname="unknown.test")
    assert "UNRECOGNIZED_NAME" in str(failure.value).upper(), failure.value
    line = gw.wait_session_line()
    assert "no route" in line, line
    assert gw.fb.count == 0
    # The known name is routed (the refusal was about the name).
    smtp_session(gw, client_context(ca), "known.test")
    assert gw.fb.count == 1


@pytest.mark.parametrize("service", SERVICES)
def test_no_sni_terminate_without_default_route_is_refused(gateway, ca, service):
    gw = gateway("terminate", service=service, sni="known.test")
    with connect(gw.port) as s:
        if service == "submission":
            cleartext_to_go_ahead(s)
        ctx = client_context(ca)
        ctx.check_hostname = False
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(s)  # no server_hostname: no SNI
    line = gw.wait_session_line()
    assert "no route" in line, line
    assert gw.fb.count == 0


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("sni", ["unknown.test", None], ids=["unknown", "none"])
def test_unknown_sni_passthrough_closes_without_bytes(gateway, service, sni):
    gw = gateway("passthrough", service=service, sni="known.test")
    with connect(gw.port) as s:
        if service == "submission":
            cleartext_to_go_ahead(s)
        s.sendall(client_hello(sni))
        assert recv_until_closed(s) == b""
    line = gw.wait_session_line()
    assert "no route" in line, line
    assert gw.fb.count == 0
    assert_alive(gw)


@pytest.mark.parametrize("service", SERVICES)
def test_passthrough_session_is_logged_as_passthrough(gateway, ca, backend_cert, service):
    gw = gateway("passthrough", service=service)
    der = smtp_session(gw, client_context(ca), HOSTNAME)
    # The client talked TLS with the backend itself, not with sallyport.
    assert der == ssl.PEM_cert_to_DER_cert(backend_cert[0].read_text())
    line = gw.wait_session_line()
    assert re.search(r"\bmode=passthrough\b", line), line
    assert "route=r " in line and "backend=b " in line, line
    conn = gw.fb.wait_connection().wait_closed()
    assert conn.in_tls and conn.error is None, conn.error
    # What sallyport itself said to the backend is only the STARTTLS dance.
    if service == "submission":
        assert conn.lines(tls_part=False) == [b"EHLO gw.test", b"STARTTLS"]
    else:
        assert conn.cleartext == b""
    assert conn.lines(tls_part=True) == [b"EHLO client.test", b"QUIT"]


# -- ALPN (ALPACA: a TLS session meant for another protocol) -------------------------



@pytest.mark.parametrize("service", SERVICES)
def test_foreign_alpn_terminate_gets_no_application_protocol(gateway, ca, service):
    gw = gateway("terminate", service=service)
    with connect(gw.port) as s:
        if service == "submission":
            cleartext_to_go_ahead(s)
        with pytest.raises(ssl.SSLError) as failure:
            alpn_context(ca, ["http/1.1", "h2"], []).wrap_socket(s, server_hostname=HOSTNAME)
    assert "NO APPLICATION PROTOCOL" in str(failure.value).upper().replace("_", " "), failure.value
    line = gw.wait_session_line()
    assert "alert no_application_protocol" in line, line
    assert gw.fb.count == 0
    # Offering smtp among others, or no ALPN at all, is fine; smtp is selected.
    selected = []
    smtp_session(gw, alpn_context(ca, ["h2", "smtp"], selected), HOSTNAME)
    assert selected == ["smtp"], selected
    smtp_session(gw, client_context(ca), HOSTNAME)
    assert gw.fb.count == 2


# -- the attack suite: spellings, order, the wrong handshake, names ------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("starttls", [b"starttls", b"StartTLS", b"STARTTLS ", b"sTaRtTlS  "],
                         ids=["lower", "mixed", "trailing-space", "odd-case-spaces"])
def test_starttls_spellings_with_injection_drop(gateway, mode, starttls):
    """Every spelling the dialogue accepts as STARTTLS is also held to the
    injection rule: a command behind it in the same write is never answered."""
    gw = gateway(mode)
    with connect(gw.port) as s:
        assert read_line(s) == GREETING
        s.sendall(b"EHLO client.test\r\n")
        read_reply(s)
        s.sendall(starttls + b"\r\nMAIL FROM:<a@b.test>\r\n")
        assert recv_until_closed(s) == b""
    gw.sp.wait_log("command injection")
    assert gw.fb.count == 0


@pytest.mark.parametrize("starttls", [b"starttls", b"StartTLS", b"STARTTLS "],
                         ids=["lower", "mixed", "trailing-space"])
def test_starttls_spellings_are_accepted(gateway, ca, starttls):
    gw = gateway("terminate")
    with connect(gw.port) as s:
        assert read_line(s) == GREETING
        s.sendall(starttls + b"\r\n")
        assert read_reply(s) == GO_AHEAD
        with client_context(ca).wrap_socket(s, server_hostname=HOSTNAME) as t:
            t.sendall(b"EHLO client.test\r\n")
            assert read_reply(t).startswith(b"250")


@pytest.mark.parametrize("command", [b"STARTTLSX", b"STARTTLS now", b"START TLS", b"XSTARTTLS",
                                     b" STARTTLS", b"STARTTLS\t"],
                         ids=["suffix", "argument", "space-inside", "prefix", "leading-space",
                              "tab"])
def test_near_starttls_is_not_starttls(gateway, command):
    """Near misses get a plain refusal and no go-ahead: nothing starts TLS but
    the command itself."""
    gw = gateway("terminate")
    with connect(gw.port) as s:
        assert read_line(s) == GREETING
        s.sendall(command + b"\r\n")
        reply = read_reply(s)
        assert reply[:1] in (b"5",), reply
        s.sendall(b"NOOP\r\n")
        assert read_reply(s).startswith(b"250 ")
    assert gw.fb.count == 0


@pytest.mark.parametrize("mode", MODES)
def test_clienthello_before_starttls_is_closed(gateway, ca, mode):
    """A client that starts TLS on a STARTTLS port (configured for implicit
    TLS): closed at once, not read as lines nor left to time out."""
    gw = gateway(mode)
    with connect(gw.port) as s:
        assert read_line(s) == GREETING
        s.sendall(client_hello(HOSTNAME))
        assert recv_until_closed(s) == b""
    line = gw.wait_session_line()
    assert "TLS handshake before STARTTLS" in line, line
    assert gw.fb.count == 0
    smtp_session(gw, client_context(ca), HOSTNAME)  # still serving


def test_talking_before_the_greeting(gateway, ca):
    """A client that does not wait for the greeting: its lines are answered
    in order after the greeting, and STARTTLS still works."""
    gw = gateway("terminate")
    with connect(gw.port) as s:
        s.sendall(b"EHLO early.test\r\n")
        assert read_line(s) == GREETING
        assert read_reply(s).startswith(b"250-")
        s.sendall(b"STARTTLS\r\n")
        assert read_reply(s) == GO_AHEAD


def test_starttls_pipelined_before_the_greeting_is_injection(gateway):
    gw = gateway("terminate")
    with connect(gw.port) as s:
        s.sendall(b"EHLO early.test\r\nSTARTTLS\r\nMAIL FROM:<a@b.test>\r\n")
        data = recv_until_closed(s)
    # The greeting and the EHLO reply may go out, the go-ahead never does.
    assert GO_AHEAD not in data and b"\r\n220 2.0.0" not in data, data
    gw.sp.wait_log("command injection")
    assert gw.fb.count == 0


def test_command_split_over_many_writes(gateway, ca):
    """Commands arrive in pieces (one byte per write here) and are still whole
    lines to the dialogue; so is STARTTLS."""
    gw = gateway("terminate")
    with connect(gw.port) as s:
        assert read_line(s) == GREETING
        for command, expect in ((b"EHLO split.test\r\n", b"250-"), (b"MAIL FROM:<a@b>\r\n", b"530"),
                                (b"STARTTLS\r\n", b"220 2.0.0")):
            for i in range(len(command)):
                s.sendall(command[i:i + 1])
            assert read_reply(s).startswith(expect)
        with client_context(ca).wrap_socket(s, server_hostname=HOSTNAME) as t:
            t.sendall(b"EHLO client.test\r\n")
            assert read_reply(t).startswith(b"250")


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("bad", [b"a\r\nb", b"a\x00b", b"a b", b"a;b"],
                         ids=["crlf", "nul", "space", "semicolon"])
def test_sni_with_control_bytes_is_refused(gateway, service, bad):
    """A server name that could split a line or a log field never reaches a
    route or a backend: the ClientHello is refused as malformed."""
    gw = gateway("passthrough", service=service)
    hello = client_hello("axb.test")
    assert hello.count(b"axb") == 1
    hello = hello.replace(b"axb", bad)
    with connect(gw.port) as s:
        if service == "submission":
            cleartext_to_go_ahead(s)
        s.sendall(hello)
        assert recv_until_closed(s) == b""
    line = gw.wait_session_line()
    assert "bad ClientHello: malformed" in line and "sni=-" in line, line
    assert "\r" not in line and "\x00" not in line
    assert gw.fb.count == 0
