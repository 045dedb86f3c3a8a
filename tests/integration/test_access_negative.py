"""What an IMAP, POP3 or ManageSieve client must not be able to do before (or
instead of) TLS.

The cleartext dialogues of the imap, pop3 and sieve STARTTLS listeners (exact
greetings, the few commands allowed, everything else refused with the
protocol's "TLS required" answer), the STARTTLS injection rules, literals
before TLS, the limits (errors, line length, time), plaintext on the implicit
imaps and pop3s listeners, and SNI routing. Every listener runs in terminate
and in passthrough mode in front of a FakeAccess backend that records every
connection: the cleartext phase never touches the backend, so most tests
assert that nothing ever reached it.

Raw sockets throughout, so every byte sallyport sends is checked exactly.
"""
import re
import ssl

import pytest

from conftest import free_port
from fakebackend import alpn_context
from fakeaccess import (HOSTNAME, IMAP, IMAP_BACKEND_TLS_GREETING, IMAP_CAPABILITY,
                        POP3, POP3_BACKEND_GREETING, POP3_GREETING, POP3_MUST_STLS, SIEVE,
                        SIEVE_BACKEND_CAPS, FakeAccess, Gateway, access_config,
                        assert_sieve_cleartext_capabilities, client_context, client_hello,
                        connect, good_script, read_imap, read_line, read_pop3_multiline,
                        read_sieve, recv_until_closed, server_context, session_inside_tls)

MODES = ["terminate", "passthrough"]
PROTOS = [IMAP, POP3, SIEVE]
STARTTLS_SERVICES = ["imap", "pop3", "sieve"]
IMPLICIT_SERVICES = ["imaps", "pop3s"]
ENDPOINT_FLAVOUR = {"imap": "starttls", "pop3": "starttls", "sieve": "starttls",
                    "imaps": "implicit", "pop3s": "implicit"}


# -- set-up ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gw_cert(ca):
    """sallyport's certificate (terminate mode)."""
    return ca.issue("an-gw", [HOSTNAME, "known.test"])


@pytest.fixture(scope="module")
def backend_cert(ca):
    """The fake backend's certificate: trusted as backend.test by sallyport, and
    valid for the client's names too (passthrough clients see it)."""
    return ca.issue("an-backend", ["backend.test", HOSTNAME, "known.test"])


@pytest.fixture
def gateway(sallyport, ca, gw_cert, backend_cert):
    """Factory: one sallyport listener (`service`, `mode`) in front of a FakeAccess.

    The backend has every access service at the fake (imap, pop3, sieve as
    STARTTLS; imaps, pop3s as implicit TLS), so every listener/mode pair is
    valid; the fake plays a well-behaved script for the listener's service."""
    backends = []

    def start(service, mode, sni="*", **global_opts):
        flavour = ENDPOINT_FLAVOUR[service]
        proto = {"imaps": "imap", "pop3s": "pop3"}.get(service, service)
        fb = FakeAccess(good_script(proto, flavour, server_context(*backend_cert)))
        backends.append(fb)
        port = free_port()
        endpoints = {s: f"{fb.address} {f}" for s, f in ENDPOINT_FLAVOUR.items()}
        text = access_config(port, service, mode, endpoints, gw_cert, ca, sni=sni,
                             **global_opts)
        return Gateway(sallyport(text), port, fb, service, mode)

    yield start
    for fb in backends:
        fb.close()


def proto_id(p):
    return p.name


def assert_backend_untouched(gw):
    """The session ended (its log line is written) without a backend connection."""
    line = gw.wait_session_line()
    assert "backend_addr=-" in line, line
    assert gw.fb.count == 0, "the cleartext phase reached the backend"
    gw.assert_alive()
    return line


def logout(proto, s):
    """The protocol's goodbye; checks the reply and that the connection closes."""
    if proto is IMAP:
        s.sendall(b"z LOGOUT\r\n")
        reply = read_imap(s, b"z")
        assert re.fullmatch(rb"\* BYE [^\r\n]*\r\nz OK [^\r\n]*\r\n", reply), reply
    elif proto is POP3:
        s.sendall(b"QUIT\r\n")
        reply = read_line(s)
        assert re.fullmatch(rb"\+OK [^\r\n]*\r\n", reply), reply
    else:
        s.sendall(b"LOGOUT\r\n")
        reply = read_sieve(s)
        assert re.fullmatch(rb"OK( [^\r\n]*)?\r\n", reply), reply
    assert recv_until_closed(s) == b""


def still_talking(proto, s):
    """A command that is allowed before TLS gets its normal answer."""
    if proto is IMAP:
        s.sendall(b"y NOOP\r\n")
        assert re.fullmatch(rb"y OK [^\r\n]*\r\n", read_imap(s, b"y"))
    elif proto is POP3:
        s.sendall(b"CAPA\r\n")
        assert read_pop3_multiline(s).startswith(b"+OK")
    else:
        s.sendall(b"NOOP\r\n")
        reply = read_sieve(s)
        assert re.fullmatch(rb"OK( [^\r\n]*)?\r\n", reply), reply


# -- greetings and allowed commands ------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_imap_greeting_and_allowed_commands(gateway, mode):
    gw = gateway("imap", mode)
    with connect(gw.port) as s:
        greeting = read_line(s)
        assert re.fullmatch(
            rb"\* OK \[CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\] [^\r\n]*\r\n", greeting), \
            greeting
        s.sendall(b"A001 CAPABILITY\r\n")
        reply = read_imap(s, b"A001")
        assert reply.startswith(IMAP_CAPABILITY), reply
        assert re.fullmatch(rb"A001 OK [^\r\n]*\r\n", reply[len(IMAP_CAPABILITY):]), reply
        s.sendall(b"A002 NOOP\r\n")
        assert re.fullmatch(rb"A002 OK [^\r\n]*\r\n", read_imap(s, b"A002"))
        s.sendall(b"a3 capability\r\n")  # commands are case-insensitive
        assert read_imap(s, b"a3").startswith(IMAP_CAPABILITY)
        s.sendall(b"A004 LOGOUT\r\n")
        reply = read_imap(s, b"A004")
        assert re.fullmatch(rb"\* BYE [^\r\n]*\r\nA004 OK [^\r\n]*\r\n", reply), reply
        assert recv_until_closed(s) == b""
    assert_backend_untouched(gw)


@pytest.mark.parametrize("mode", MODES)
def test_pop3_greeting_and_allowed_commands(gateway, mode):
    gw = gateway("pop3", mode)
    with connect(gw.port) as s:
        greeting = read_line(s)
        # +OK, one line, and no APOP timestamp ("<...>"): APOP is not offered.
        assert POP3_GREETING.match(greeting), greeting
        s.sendall(b"CAPA\r\n")
        reply = read_pop3_multiline(s)
        lines = reply.split(b"\r\n")
        assert lines[0].startswith(b"+OK") and lines[-2:] == [b".", b""], reply
        caps = [line.split(b" ")[0].upper() for line in lines[1:-2]]
        assert b"STLS" in caps, reply
        assert b"USER" not in caps and b"SASL" not in caps, reply
        logout(POP3, s)
    assert_backend_untouched(gw)


@pytest.mark.parametrize("mode", MODES)
def test_sieve_greeting_and_allowed_commands(gateway, mode):
    gw = gateway("sieve", mode)
    with connect(gw.port) as s:
        greeting = read_sieve(s)
        assert_sieve_cleartext_capabilities(greeting)
        s.sendall(b"CAPABILITY\r\n")
        reply = read_sieve(s)
        assert_sieve_cleartext_capabilities(reply)
        s.sendall(b"NOOP\r\n")
        reply = read_sieve(s)
        assert re.fullmatch(rb"OK( [^\r\n]*)?\r\n", reply), reply
        logout(SIEVE, s)
    assert_backend_untouched(gw)


# -- commands refused before TLS --------------------------------------------------------

PRIVACY = rb"a NO \[PRIVACYREQUIRED\] [^\r\n]*\r\n"
REFUSED = [
    (IMAP, b"a LOGIN alice secret", PRIVACY),
    (IMAP, b"a login alice secret", PRIVACY),
    (IMAP, b"a AUTHENTICATE PLAIN", PRIVACY),
    (IMAP, b"a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==", PRIVACY),
    (IMAP, b"a SELECT INBOX", rb"a BAD [^\r\n]*\r\n"),
    (IMAP, b"a ENABLE UTF8=ACCEPT", rb"a BAD [^\r\n]*\r\n"),
    (POP3, b"USER alice", re.escape(POP3_MUST_STLS)),
    (POP3, b"user alice", re.escape(POP3_MUST_STLS)),
    (POP3, b"PASS secret", re.escape(POP3_MUST_STLS)),
    (POP3, b"APOP alice c4c9334bac560ecc979e58001b3e22fb", re.escape(POP3_MUST_STLS)),
    (POP3, b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", re.escape(POP3_MUST_STLS)),
    (POP3, b"AUTH", re.escape(POP3_MUST_STLS)),  # would list SASL mechanisms
    (SIEVE, b'AUTHENTICATE "PLAIN" "AGFsaWNlAHNlY3JldA=="', rb"NO \(ENCRYPT-NEEDED\) [^\r\n]*\r\n"),
    (SIEVE, b'authenticate "PLAIN"', rb"NO \(ENCRYPT-NEEDED\) [^\r\n]*\r\n"),
    (SIEVE, b'PUTSCRIPT "s" "keep;"', rb"NO( [^\r\n]*)?\r\n"),
    (SIEVE, b"LISTSCRIPTS", rb"NO( [^\r\n]*)?\r\n"),
]
REFUSED_IDS = [f"{p.name}-{c.decode().split()[1 if p is IMAP else 0]}-{i}"
               for i, (p, c, _) in enumerate(REFUSED)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("proto,command,expected", REFUSED, ids=REFUSED_IDS)
def test_commands_before_starttls_are_refused(gateway, mode, proto, command, expected):
    gw = gateway(proto.starttls_service, mode)
    with connect(gw.port) as s:
        proto.read_greeting(s)
        s.sendall(command + b"\r\n")
        reply = read_line(s)
        assert re.fullmatch(expected, reply), reply
        still_talking(proto, s)  # still in the dialogue, nothing else happened
        logout(proto, s)
    assert_backend_untouched(gw)


# -- STARTTLS injection ------------------------------------------------------------------

INJECTIONS = {
    "imap": [b"a STARTTLS\r\nb NOOP\r\n", b"a STARTTLS\r\nb"],
    "pop3": [b"STLS\r\nCAPA\r\n", b"STLS\r\nC"],
    "sieve": [b"STARTTLS\r\nCAPABILITY\r\n", b"STARTTLS\r\nC"],
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", [0, 1], ids=["command", "partial"])
@pytest.mark.parametrize("proto", PROTOS, ids=proto_id)
def test_command_pipelined_behind_starttls_drops_the_connection(gateway, proto, mode, variant):
    gw = gateway(proto.starttls_service, mode)
    with connect(gw.port) as s:
        proto.read_greeting(s)
        s.sendall(INJECTIONS[proto.name][variant])  # one write: one segment
        # Neither the go-ahead nor an answer to the injected command.
        assert recv_until_closed(s) == b""
    gw.sp.wait_log("command injection")
    assert_backend_untouched(gw)


NOOPS = {"imap": b"b NOOP\r\n", "pop3": b"CAPA\r\n", "sieve": b"NOOP\r\n"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("proto", PROTOS, ids=proto_id)
def test_cleartext_after_go_ahead_drops_the_connection(gateway, proto, mode):
    gw = gateway(proto.starttls_service, mode)
    with connect(gw.port) as s:
        proto.to_go_ahead(s)
        s.sendall(NOOPS[proto.name])  # instead of a ClientHello
        assert recv_until_closed(s) == b""
    gw.sp.wait_log("command injection")
    assert_backend_untouched(gw)


# -- literals before TLS -----------------------------------------------------------------

IMAP_BYE = rb"\* BYE [^\r\n]*\r\n"
SIEVE_BYE = rb"BYE( [^\r\n]*)?\r\n"
LITERALS = {
    # A synchronizing literal: the client waits for "+ ..." before sending it.
    "imap-sync": (IMAP, b"a LOGIN {5}\r\n", IMAP_BYE),
    # Non-synchronizing (RFC 7888): the bytes follow at once.
    "imap-nonsync": (IMAP, b"a LOGIN {5+}\r\nalice secret\r\n", IMAP_BYE),
    "imap-content-is-a-command": (IMAP, b"a NOOP {8+}\r\nb NOOP\r\n", IMAP_BYE),
    "imap-literal8": (IMAP, b"a APPEND INBOX ~{8+}\r\nb NOOP\r\n", IMAP_BYE),
    "sieve-sync": (SIEVE, b'AUTHENTICATE "PLAIN" {13}\r\n', SIEVE_BYE),
    "sieve-nonsync": (SIEVE, b'AUTHENTICATE "PLAIN" {13+}\r\n\x00alice\x00secret\r\n',
                      SIEVE_BYE),
    "sieve-content-is-a-command": (SIEVE, b'PUTSCRIPT "s" {12+}\r\nCAPABILITY\r\n', SIEVE_BYE),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(LITERALS))
def test_literal_before_tls_says_bye(gateway, mode, case):
    proto, data, expected = LITERALS[case]
    gw = gateway(proto.starttls_service, mode)
    with connect(gw.port) as s:
        proto.read_greeting(s)
        s.sendall(data)
        reply = recv_until_closed(s)
    # Exactly one BYE line: no "+" continuation, and nothing answered from the
    # literal's bytes (no "b OK", no capability list).
    assert re.fullmatch(expected, reply), reply
    assert_backend_untouched(gw)


LONG_LITERALS = {
    # The announcement ends an over-long line: its bytes still follow it.
    "imap": (IMAP, b"a LOGIN " + b"x" * 1100 + b" {8+}\r\nb NOOP\r\nc LOGOUT\r\n"),
    "sieve": (SIEVE, b'PUTSCRIPT "' + b"x" * 1100 + b'" {12+}\r\nCAPABILITY\r\nLOGOUT\r\n'),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(LONG_LITERALS))
def test_literal_after_overlong_line_is_never_read_as_commands(gateway, mode, case):
    proto, data = LONG_LITERALS[case]
    gw = gateway(proto.starttls_service, mode)
    with connect(gw.port) as s:
        proto.read_greeting(s)
        s.sendall(data)
        reply = recv_until_closed(s)
    lines = reply.split(b"\r\n")
    if proto is IMAP:
        assert not any(line.startswith(b"b ") for line in lines), reply
    else:
        assert b'"STARTTLS"' not in reply and b'"IMPLEMENTATION"' not in reply, reply
    assert_backend_untouched(gw)


# -- limits ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_imap_too_many_errors(gateway, mode):
    gw = gateway("imap", mode, max_errors=3)
    with connect(gw.port) as s:
        IMAP.read_greeting(s)
        s.sendall(b"a SELECT INBOX\r\n")
        assert re.fullmatch(rb"a BAD [^\r\n]*\r\n", read_line(s))
        s.sendall(b"b NOOP\r\n")  # a good command is not an error
        assert re.fullmatch(rb"b OK [^\r\n]*\r\n", read_line(s))
        s.sendall(b"c LOGIN alice secret\r\n")
        assert re.fullmatch(PRIVACY.replace(b"a NO", b"c NO"), read_line(s))
        s.sendall(b"d FETCH 1 BODY[]\r\n")
        reply = recv_until_closed(s)
        assert re.fullmatch(IMAP_BYE, reply), reply
    assert "too many errors" in assert_backend_untouched(gw)


@pytest.mark.parametrize("mode", MODES)
def test_pop3_too_many_errors(gateway, mode):
    gw = gateway("pop3", mode, max_errors=3)
    with connect(gw.port) as s:
        POP3.read_greeting(s)
        s.sendall(b"USER alice\r\n")
        assert read_line(s) == POP3_MUST_STLS
        s.sendall(b"CAPA\r\n")
        assert read_pop3_multiline(s).startswith(b"+OK")
        s.sendall(b"PASS secret\r\n")
        assert read_line(s) == POP3_MUST_STLS
        s.sendall(b"STAT\r\n")
        reply = recv_until_closed(s)
        assert re.fullmatch(rb"-ERR [^\r\n]*\r\n", reply), reply
        assert reply != POP3_MUST_STLS, reply
    assert "too many errors" in assert_backend_untouched(gw)


@pytest.mark.parametrize("mode", MODES)
def test_sieve_too_many_errors(gateway, mode):
    gw = gateway("sieve", mode, max_errors=3)
    with connect(gw.port) as s:
        SIEVE.read_greeting(s)
        s.sendall(b'PUTSCRIPT "s" "keep;"\r\n')
        assert read_line(s).startswith(b"NO")
        s.sendall(b"NOOP\r\n")
        assert read_line(s).startswith(b"OK")
        s.sendall(b'AUTHENTICATE "PLAIN"\r\n')
        assert read_line(s).startswith(b"NO (ENCRYPT-NEEDED)")
        s.sendall(b"LISTSCRIPTS\r\n")
        reply = recv_until_closed(s)
        assert re.fullmatch(SIEVE_BYE, reply), reply
    assert "too many errors" in assert_backend_untouched(gw)


# For each protocol: a refused command padded to a given line length (CRLF
# included), the answer to a line of 1000 octets, and the answer to a longer
# one when the dialogue goes on after it.
LONG = {
    "imap": (lambda n: b"a LOGIN " + b"x" * (n - 10) + b"\r\n", PRIVACY, rb"\* BAD [^\r\n]*\r\n"),
    "pop3": (lambda n: b"USER " + b"x" * (n - 7) + b"\r\n", re.escape(POP3_MUST_STLS),
             rb"-ERR [^\r\n]*\r\n"),
    "sieve": (lambda n: b'PUTSCRIPT "' + b"x" * (n - 14) + b'"\r\n', rb"NO [^\r\n]*\r\n",
              rb"NO [^\r\n]*\r\n"),
}
# An over-long line may also end the session (IMAP and ManageSieve: a literal
# it announces could not be recognised): then with the protocol's BYE.
LONG_BYE = {"imap": IMAP_BYE, "pop3": None, "sieve": SIEVE_BYE}


def answer_to_long_line(proto, s, may_reset=False):
    """Reads the answer to an over-long line; True if it ended the session
    (BYE, then a close), False if it was an error reply and the dialogue goes on.

    With `may_reset`, a session that ends may also end with a reset and no
    BYE: closing with the rest of the line unread makes the kernel send RST,
    which can overtake the BYE."""
    _, normal, too_long = LONG[proto.name]
    reply = read_line(s)
    bye = LONG_BYE[proto.name]
    if bye and may_reset and reply == b"":
        return True
    if bye and re.fullmatch(bye, reply):
        assert recv_until_closed(s) == b""
        return True
    assert re.fullmatch(too_long, reply), reply
    if normal != too_long:
        assert not re.fullmatch(normal, reply), reply
    return False


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("proto", PROTOS, ids=proto_id)
def test_overlong_line_is_refused_and_skipped(gateway, proto, mode):
    make, normal, _ = LONG[proto.name]
    assert len(make(1000)) == 1000 and len(make(1001)) == 1001
    gw = gateway(proto.starttls_service, mode)
    with connect(gw.port) as s:
        proto.read_greeting(s)
        # 1000 octets with the CRLF are a line like any other ...
        s.sendall(make(1000))
        assert re.fullmatch(normal, read_line(s))
        # ... 1001 are too long.
        s.sendall(make(1001))
        if not answer_to_long_line(proto, s):
            still_talking(proto, s)
            logout(proto, s)
    assert_backend_untouched(gw)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("proto", PROTOS, ids=proto_id)
def test_line_longer_than_the_buffer_is_one_line(gateway, proto, mode):
    """Longer than sallyport's buffer: still one line, one answer, and its tail
    (here a command) is never read as a command."""
    make, _, _ = LONG[proto.name]
    gw = gateway(proto.starttls_service, mode)
    with connect(gw.port) as s:
        proto.read_greeting(s)
        try:
            s.sendall(make(40000)[:-2] + NOOPS[proto.name])
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on the over-long line: its answer decides below
        if not answer_to_long_line(proto, s, may_reset=True):
            still_talking(proto, s)
            logout(proto, s)
    assert_backend_untouched(gw)


TIMEOUT_REPLY = {"imap": rb"\* BYE [^\r\n]*\r\n", "pop3": rb"-ERR [^\r\n]*\r\n",
                 "sieve": rb"BYE( [^\r\n]*)?\r\n"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("proto", PROTOS, ids=proto_id)
def test_plaintext_timeout(gateway, proto, mode):
    gw = gateway(proto.starttls_service, mode, plaintext_timeout=1)
    with connect(gw.port, timeout=30) as s:
        proto.read_greeting(s)
        reply = recv_until_closed(s)
        assert re.fullmatch(TIMEOUT_REPLY[proto.name], reply), reply
    assert "timeout" in assert_backend_untouched(gw)


# -- the TLS gate ------------------------------------------------------------------------

def access_session(gw, ctx, server_name):
    """A short, successful session through the gateway; returns the peer's DER certificate."""
    proto = gw.proto
    with connect(gw.port) as raw:
        if gw.starttls:
            proto.to_go_ahead(raw)
        with ctx.wrap_socket(raw, server_hostname=server_name) as s:
            if proto is SIEVE:
                greeting = SIEVE_BACKEND_CAPS  # re-sent after TLS (RFC 5804 2.2)
            elif gw.starttls:
                greeting = None
            else:
                greeting = IMAP_BACKEND_TLS_GREETING if proto is IMAP else POP3_BACKEND_GREETING
            session_inside_tls(proto, s, greeting)
            return s.getpeercert(binary_form=True)


PLAINTEXT_PROBES = {"imaps": b"a CAPABILITY\r\n", "pop3s": b"CAPA\r\n"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("service", IMPLICIT_SERVICES)
def test_plaintext_on_implicit_tls_listener_is_closed(gateway, ca, service, mode):
    gw = gateway(service, mode)
    with connect(gw.port) as s:
        s.sendall(PLAINTEXT_PROBES[service])
        assert recv_until_closed(s) == b""
    assert_backend_untouched(gw)
    # Still serving TLS clients.
    access_session(gw, client_context(ca), HOSTNAME)
    assert gw.fb.count == 1


ALL_SERVICES = STARTTLS_SERVICES + IMPLICIT_SERVICES


@pytest.mark.parametrize("service", ALL_SERVICES)
def test_unknown_sni_terminate_gets_unrecognized_name(gateway, ca, backend_cert, service):
    gw = gateway(service, "terminate", sni="known.test")
    with connect(gw.port) as s:
        if gw.starttls:
            gw.proto.to_go_ahead(s)
        with pytest.raises(ssl.SSLError) as failure:
            client_context(ca).wrap_socket(s, server_hostname="unknown.test")
    assert "UNRECOGNIZED_NAME" in str(failure.value).upper(), failure.value
    line = gw.wait_session_line()
    assert "no route" in line, line
    assert gw.fb.count == 0
    # The known name is routed (the refusal was about the name).
    access_session(gw, client_context(ca), "known.test")
    assert gw.fb.count == 1


@pytest.mark.parametrize("sni", ["unknown.test", None], ids=["unknown", "none"])
@pytest.mark.parametrize("service", ALL_SERVICES)
def test_unknown_sni_passthrough_closes_without_bytes(gateway, ca, backend_cert, service, sni):
    gw = gateway(service, "passthrough", sni="known.test")
    with connect(gw.port) as s:
        if gw.starttls:
            gw.proto.to_go_ahead(s)
        s.sendall(client_hello(sni))
        assert recv_until_closed(s) == b""
    line = gw.wait_session_line()
    assert "no route" in line, line
    assert gw.fb.count == 0
    gw.assert_alive()
    # The known name is passed through to the backend, which holds the certificate.
    der = access_session(gw, client_context(ca), "known.test")
    assert der == ssl.PEM_cert_to_DER_cert(backend_cert[0].read_text())
    conn = gw.fb.wait_connection().wait_closed()
    assert conn.in_tls and conn.error is None, conn.error


# -- ALPN (ALPACA: a TLS session meant for another protocol) -------------------------

ALPN_IDS = {"imap": "imap", "imaps": "imap", "pop3": "pop3", "pop3s": "pop3",
            "sieve": "managesieve"}




@pytest.mark.parametrize("service", ALL_SERVICES)
def test_foreign_alpn_terminate_gets_no_application_protocol(gateway, ca, service):
    gw = gateway(service, "terminate")
    ours = ALPN_IDS[service]
    foreign = ["http/1.1", "smtp"] + [p for p in ("imap", "pop3", "managesieve") if p != ours]
    with connect(gw.port) as s:
        if gw.starttls:
            gw.proto.to_go_ahead(s)
        with pytest.raises(ssl.SSLError) as failure:
            alpn_context(ca, foreign, []).wrap_socket(s, server_hostname=HOSTNAME)
    assert "NO APPLICATION PROTOCOL" in str(failure.value).upper().replace("_", " "), failure.value
    line = gw.wait_session_line()
    assert "alert no_application_protocol" in line, line
    assert gw.fb.count == 0
    # Offering our protocol among others is fine, and it is the one selected.
    selected = []
    access_session(gw, alpn_context(ca, foreign + [ours], selected), HOSTNAME)
    assert selected == [ours], selected
    assert gw.fb.count == 1


# -- the attack suite: spellings, the wrong handshake ---------------------------------

SPELLED_INJECTIONS = {
    "imap": [b"a starttls\r\nb NOOP\r\n", b"a StartTLS\r\nb LOGIN u p\r\n",
             b"a STARTTLS \r\nb NOOP\r\n"],
    "pop3": [b"stls\r\nUSER u\r\n", b"Stls\r\nCAPA\r\n", b"STLS \r\nCAPA\r\n"],
    "sieve": [b"starttls\r\nNOOP\r\n", b"StartTls\r\nAUTHENTICATE \"PLAIN\"\r\n",
              b"STARTTLS \r\nNOOP\r\n"],
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", [0, 1, 2], ids=["lower", "mixed", "trailing-space"])
@pytest.mark.parametrize("proto", PROTOS, ids=proto_id)
def test_starttls_spellings_with_injection_drop(gateway, proto, mode, variant):
    gw = gateway(proto.starttls_service, mode)
    with connect(gw.port) as s:
        proto.read_greeting(s)
        s.sendall(SPELLED_INJECTIONS[proto.name][variant])
        assert recv_until_closed(s) == b""
    gw.sp.wait_log("command injection")
    assert_backend_untouched(gw)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("proto", PROTOS, ids=proto_id)
def test_clienthello_before_starttls_is_closed(gateway, ca, proto, mode):
    gw = gateway(proto.starttls_service, mode)
    with connect(gw.port) as s:
        proto.read_greeting(s)
        s.sendall(client_hello(HOSTNAME))
        assert recv_until_closed(s) == b""
    line = assert_backend_untouched(gw)
    assert "TLS handshake before STARTTLS" in line, line
    access_session(gw, client_context(ca), HOSTNAME)  # still serving
    assert gw.fb.count == 1


class OneByteAtATime:
    """A socket whose sendall() writes one byte per send() call."""

    def __init__(self, sock):
        self.sock = sock

    def sendall(self, data):
        for i in range(len(data)):
            self.sock.sendall(data[i:i + 1])

    def __getattr__(self, name):
        return getattr(self.sock, name)


@pytest.mark.parametrize("proto", PROTOS, ids=proto_id)
def test_commands_in_one_byte_writes_and_before_the_greeting(gateway, ca, proto):
    """A client that speaks before the greeting, and one whose commands come a
    byte per write: both are answered in order, and STARTTLS still works."""
    gw = gateway(proto.starttls_service, "terminate")
    with connect(gw.port) as s:
        s.sendall(NOOPS[proto.name])  # before reading the greeting
        proto.read_greeting(s)
        if proto is IMAP:
            assert re.fullmatch(rb"b OK [^\r\n]*\r\n", read_imap(s, b"b"))
        elif proto is POP3:
            assert read_pop3_multiline(s).startswith(b"+OK")
        else:
            assert re.fullmatch(rb"OK( [^\r\n]*)?\r\n", read_sieve(s))
        slow = OneByteAtATime(s)
        still_talking(proto, slow)
        proto.starttls(slow)
        with client_context(ca).wrap_socket(s, server_hostname=HOSTNAME) as t:
            expect = (SIEVE_BACKEND_CAPS if proto is SIEVE else None)
            session_inside_tls(proto, t, expect)
    assert gw.fb.count == 1
