"""IMAP, POP3 and ManageSieve backends that fail, misbehave or cannot be trusted.

Terminate listeners (imap, pop3, sieve with STARTTLS; imaps, pop3s with
implicit TLS) in front of a FakeAccess backend playing a bad script: the
client, inside the TLS session sallyport terminated, must get the protocol's
"try again later" line (IMAP "* BYE [UNAVAILABLE]", POP3 "-ERR [SYS/TEMP]",
ManageSieve "BYE (TRYLATER)") and a close, and sallyport must never carry on
with a backend that refused, pre-authenticated, downgraded or injected:
the fake records every byte, and no STARTTLS it did not offer, no login and no
client byte may ever reach it. Passthrough listeners cannot answer, so the
client's connection must simply be closed.

Also the greeting rules after TLS: a client greeted by sallyport never sees
the backend's cleartext greeting or untagged data, while ManageSieve clients
get the backend's capabilities after TLS (RFC 5804 2.2).
"""
import base64
import re
import threading

import pytest

from conftest import free_port
from fakeaccess import (HOSTNAME, IMAP, IMAP_BACKEND_TLS_GREETING, POP3, POP3_BACKEND_GREETING,
                        PROTO_OF_SERVICE, SIEVE, SIEVE_BACKEND_CAPS, FakeAccess, Gateway,
                        access_config, client_context, client_hello, close, connect,
                        good_script, hold, imap_server, pop3_server, read_line, recv_line,
                        recv_until_closed, send, send_tagged, server_context, session_inside_tls,
                        sieve_server, tls, wait_event)

PROTOS = [IMAP, POP3, SIEVE]
MARKER = b"MARKER-cleartext-7f3a"


def proto_id(p):
    return p.name


def terminate_services(proto):
    """The listeners of `proto` that terminate TLS: STARTTLS and, where the
    protocol has one, implicit TLS."""
    return [s for s in (proto.starttls_service, proto.implicit_service) if s]


def proto_services(protos=PROTOS):
    return [(p, s) for p in protos for s in terminate_services(p)]


def ps_ids(pairs):
    return [f"{p.name}-{s}" for p, s in pairs]


# -- set-up ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gw_cert(ca):
    return ca.issue("abf-gw", [HOSTNAME])


@pytest.fixture(scope="module")
def backend_ctx(ca):
    return server_context(*ca.issue("abf-backend", ["backend.test", HOSTNAME]))


@pytest.fixture
def gateway(sallyport, ca, gw_cert):
    """Factory: one listener (`service`, `mode`) in front of one backend endpoint
    of `flavour`. `script` is played by a FakeAccess at the endpoint;
    script=None points the endpoint at a port where nothing listens."""
    backends = []

    def start(service, flavour, script, mode="terminate", **global_opts):
        fb = None
        if script is None:
            address = f"127.0.0.1:{free_port()}"
        else:
            fb = FakeAccess(script)
            backends.append(fb)
            address = fb.address
        port = free_port()
        text = access_config(port, service, mode, {service: f"{address} {flavour}"}, gw_cert,
                             ca, **global_opts)
        return Gateway(sallyport(text), port, fb, service, mode)

    yield start
    for fb in backends:
        fb.close()


def client_gets_unavailable(gw, ca):
    """Through the client's TLS session: exactly the protocol's "try again
    later" line, then a close. Returns the session's log line."""
    with connect(gw.port, timeout=30) as raw:
        if gw.starttls:
            gw.proto.to_go_ahead(raw)
        with client_context(ca).wrap_socket(raw, server_hostname=HOSTNAME) as s:
            data = recv_until_closed(s)
    assert data.startswith(gw.proto.unavailable), data
    assert data.endswith(b"\r\n") and data.count(b"\n") == 1, data
    assert MARKER not in data, data
    gw.assert_alive()
    return gw.wait_session_line()


def passthrough_client_closed(gw):
    """The client's ClientHello is answered by a close without a byte."""
    with connect(gw.port, timeout=30) as s:
        if gw.starttls:
            gw.proto.to_go_ahead(s)
        s.sendall(client_hello(HOSTNAME))
        assert recv_until_closed(s) == b""
    gw.assert_alive()
    return gw.wait_session_line()


def assert_only(conn, proto, allowed):
    """The fake received only commands in `allowed` (verbs), all in cleartext,
    and never a TLS record (the client's ClientHello) nor TLS from sallyport."""
    verbs = conn.verbs(tagged=proto is IMAP)
    assert set(verbs) <= set(allowed), conn.received
    assert b"\x16\x03" not in conn.received, conn.received
    assert not conn.in_tls and conn.tls_data == b"", conn.received


# -- IMAP greetings that must be refused -------------------------------------------------

PREAUTH = b"* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] " + MARKER + b" logged in as alice\r\n"


@pytest.mark.parametrize("service", ["imap", "imaps"])
def test_imap_preauth_on_starttls_endpoint_is_refused(gateway, ca, service):
    gw = gateway(service, "starttls", [send(PREAUTH), hold()])
    line = client_gets_unavailable(gw, ca)
    assert "PREAUTH" in line, line
    conn = gw.fb.wait_connection().wait_closed()
    # No STARTTLS, no LOGIN, no CAPABILITY: not a byte.
    assert conn.received == b"", conn.received


def test_imap_preauth_on_starttls_endpoint_passthrough(gateway):
    gw = gateway("imap", "starttls", [send(PREAUTH), hold()], mode="passthrough")
    passthrough_client_closed(gw)
    conn = gw.fb.wait_connection().wait_closed()
    assert conn.received == b"", "the ClientHello went to a pre-authenticated session"


@pytest.mark.parametrize("flavour", ["plain", "implicit"])
@pytest.mark.parametrize("service", ["imap", "imaps"])
def test_imap_preauth_on_plain_or_implicit_endpoint_is_refused(gateway, ca, backend_ctx,
                                                               service, flavour):
    script = [send(PREAUTH), hold()]
    if flavour == "implicit":
        script = [tls(backend_ctx)] + script
    gw = gateway(service, flavour, script)
    line = client_gets_unavailable(gw, ca)
    assert "PREAUTH" in line, line
    conn = gw.fb.wait_connection().wait_closed()
    assert conn.received == b"", "a client command reached a pre-authenticated session"


REFUSAL_GREETINGS = [
    (IMAP, b"* BYE [UNAVAILABLE] " + MARKER + b" shutting down\r\n"),
    (POP3, b"-ERR [SYS/TEMP] " + MARKER + b" busy\r\n"),
    (SIEVE, b'BYE (TRYLATER) "' + MARKER + b' busy"\r\n'),
    (SIEVE, b'NO "' + MARKER + b' not now"\r\n'),
]


@pytest.mark.parametrize("flavour", ["plain", "starttls", "implicit"])
@pytest.mark.parametrize("proto,greeting", REFUSAL_GREETINGS,
                         ids=["imap-bye", "pop3-err", "sieve-bye", "sieve-no"])
def test_backend_refusal_greeting(gateway, ca, backend_ctx, proto, greeting, flavour):
    script = [send(greeting), hold()]
    if flavour == "implicit":
        script = [tls(backend_ctx)] + script
    gw = gateway(proto.starttls_service, flavour, script)
    client_gets_unavailable(gw, ca)
    conn = gw.fb.wait_connection().wait_closed()
    assert conn.received == b"", "sallyport went on after the backend refused"


MALFORMED = {
    "hello": b"HELLO\r\n",
    "empty-line": b"\r\n",
    "binary": b"\x00\xff\xfe\x80\x01garbage\r\n",
    "overlong": b"* OK " + b"x" * 2000,
}


@pytest.mark.parametrize("flavour", ["plain", "starttls"])
@pytest.mark.parametrize("greeting", list(MALFORMED))
@pytest.mark.parametrize("proto", PROTOS, ids=proto_id)
def test_malformed_greeting_is_refused(gateway, ca, proto, greeting, flavour):
    data = MALFORMED[greeting]
    if proto is SIEVE and greeting == "overlong":
        data = b'"IMPLEMENTATION" "' + b"x" * 2000
    elif proto is POP3 and greeting == "overlong":
        data = b"+OK " + b"x" * 2000
    gw = gateway(proto.starttls_service, flavour, [send(data), hold()])
    client_gets_unavailable(gw, ca)
    conn = gw.fb.wait_connection().wait_closed()
    assert conn.received == b"", conn.received


@pytest.mark.parametrize("proto", PROTOS, ids=proto_id)
def test_tls_bytes_instead_of_greeting_are_refused(gateway, ca, proto):
    """No line at all, only a TLS record: refused when connect_timeout expires."""
    gw = gateway(proto.starttls_service, "starttls", [send(b"\x16\x03\x01\x00\x05hello"), hold()],
                 connect_timeout=1)
    client_gets_unavailable(gw, ca)
    conn = gw.fb.wait_connection().wait_closed()
    assert conn.received == b"", conn.received


# -- STARTTLS towards the backend: never downgrade ------------------------------------------

NO_STARTTLS = {
    "imap-absent": (IMAP, [
        send(b"* OK " + MARKER + b" ready\r\n"), recv_line(b"CAPABILITY"),
        send_tagged(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN LOGIN-REFERRALS\r\n{tag} OK done\r\n")]),
    "imap-greeting-caps": (IMAP, [
        send(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] " + MARKER + b"\r\n"),
        recv_line(b"CAPABILITY"),
        send_tagged(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n{tag} OK done\r\n")]),
    "imap-lookalike": (IMAP, [
        send(b"* OK [CAPABILITY IMAP4rev1 XSTARTTLS] STARTTLS " + MARKER + b"\r\n"),
        recv_line(b"CAPABILITY"),
        send_tagged(b"* CAPABILITY IMAP4rev1 XSTARTTLS STARTTLSX\r\n"
                    b"* OK STARTTLS\r\n{tag} OK STARTTLS\r\n")]),
    "imap-capability-refused": (IMAP, [
        send(b"* OK " + MARKER + b"\r\n"), recv_line(b"CAPABILITY"),
        send_tagged(b"{tag} BAD unknown command\r\n")]),
    "pop3-absent": (POP3, [
        send(b"+OK " + MARKER + b"\r\n"), recv_line(b"CAPA"),
        send(b"+OK capabilities\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n")]),
    "pop3-lookalike": (POP3, [
        send(b"+OK " + MARKER + b"\r\n"), recv_line(b"CAPA"),
        send(b"+OK capabilities\r\nXSTLS\r\nSTLSX\r\nSTLS-LIKE\r\nUSER\r\n.\r\n")]),
    "pop3-capa-err": (POP3, [
        send(b"+OK " + MARKER + b"\r\n"), recv_line(b"CAPA"),
        send(b"-ERR unknown command\r\n")]),
    "sieve-absent": (SIEVE, [
        send(b'"IMPLEMENTATION" "' + MARKER + b'"\r\n"SASL" "PLAIN"\r\n'
             b'"VERSION" "1.0"\r\nOK\r\n')]),
    "sieve-lookalike": (SIEVE, [
        send(b'"IMPLEMENTATION" "' + MARKER + b'"\r\n"STARTTLSX"\r\n"SASL" "STARTTLS"\r\n'
             b'"VERSION" "1.0"\r\nOK "STARTTLS"\r\n')]),
}
ALLOWED_BEFORE_REFUSAL = {"imap": [b"CAPABILITY", b"LOGOUT"], "pop3": [b"CAPA", b"QUIT"],
                          "sieve": [b"LOGOUT"]}
NO_STARTTLS_CASES = [(case, service) for case, (proto, _) in NO_STARTTLS.items()
                     for service in terminate_services(proto)]


@pytest.mark.parametrize("case,service", NO_STARTTLS_CASES,
                         ids=[f"{c}-{s}" for c, s in NO_STARTTLS_CASES])
def test_backend_without_starttls_is_never_downgraded(gateway, ca, case, service):
    proto, script = NO_STARTTLS[case]
    gw = gateway(service, "starttls", script + [hold()])
    line = client_gets_unavailable(gw, ca)
    assert "backend" in line, line
    conn = gw.fb.wait_connection().wait_closed()
    # No STARTTLS / STLS it did not offer, no LOGIN, USER, PASS or
    # AUTHENTICATE, no client byte: at most a polite goodbye.
    assert_only(conn, proto, ALLOWED_BEFORE_REFUSAL[proto.name])


@pytest.mark.parametrize("case", ["imap-absent", "pop3-absent", "sieve-absent"])
def test_backend_without_starttls_passthrough(gateway, case):
    proto, script = NO_STARTTLS[case]
    gw = gateway(proto.starttls_service, "starttls", script + [hold()], mode="passthrough")
    passthrough_client_closed(gw)
    conn = gw.fb.wait_connection().wait_closed()
    # The ClientHello never went to a backend that did not agree to TLS.
    assert_only(conn, proto, ALLOWED_BEFORE_REFUSAL[proto.name])


PASSWORD = b"s3cret-" + MARKER
CREDENTIALS = {
    "imap": b"a LOGIN alice " + PASSWORD + b"\r\n",
    "pop3": b"USER alice\r\nPASS " + PASSWORD + b"\r\n",
    "sieve": (b'AUTHENTICATE "PLAIN" "' + base64.b64encode(b"\0alice\0" + PASSWORD)
              + b'"\r\n'),
}


@pytest.mark.parametrize("case", ["imap-absent", "pop3-absent", "sieve-absent"])
def test_credentials_never_reach_a_backend_without_starttls(gateway, ca, case):
    """The client logs in inside TLS before the backend has told it lacks
    STARTTLS (the fake waits for the test): the login must stay with sallyport."""
    proto, script = NO_STARTTLS[case]
    logged_in = threading.Event()
    gw = gateway(proto.starttls_service, "starttls", [wait_event(logged_in)] + script + [hold()])
    try:
        with connect(gw.port, timeout=30) as raw:
            proto.to_go_ahead(raw)
            with client_context(ca).wrap_socket(raw, server_hostname=HOSTNAME) as s:
                s.sendall(CREDENTIALS[proto.name])
                logged_in.set()
                data = recv_until_closed(s)
    finally:
        logged_in.set()
    # The client may see the "try later" line, or a reset because its login
    # was never read; never anything else.
    assert data == b"" or (data.startswith(proto.unavailable) and data.count(b"\n") == 1), data
    conn = gw.fb.wait_connection().wait_closed()
    assert b"alice" not in conn.received and PASSWORD not in conn.received, conn.received
    assert base64.b64encode(b"\0alice\0" + PASSWORD) not in conn.received
    assert_only(conn, proto, ALLOWED_BEFORE_REFUSAL[proto.name])
    gw.assert_alive()


REFUSE_STARTTLS = {
    "imap-no": (IMAP, [send(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] " + MARKER + b"\r\n"),
                       recv_line(b"STARTTLS"), send_tagged(b"{tag} NO not now\r\n")],
                [b"STARTTLS"]),
    "imap-bad": (IMAP, [send(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] " + MARKER + b"\r\n"),
                        recv_line(b"STARTTLS"), send_tagged(b"{tag} BAD what\r\n")],
                 [b"STARTTLS"]),
    "imap-bye": (IMAP, [send(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] " + MARKER + b"\r\n"),
                        recv_line(b"STARTTLS"), send(b"* BYE going away\r\n")],
                 [b"STARTTLS"]),
    "pop3-err": (POP3, [send(b"+OK " + MARKER + b"\r\n"), recv_line(b"CAPA"),
                        send(b"+OK\r\nSTLS\r\nUSER\r\n.\r\n"), recv_line(b"STLS"),
                        send(b"-ERR not now\r\n")],
                 [b"CAPA", b"STLS"]),
    "sieve-no": (SIEVE, [send(b'"IMPLEMENTATION" "' + MARKER + b'"\r\n"STARTTLS"\r\n'
                              b'"VERSION" "1.0"\r\nOK\r\n'),
                         recv_line(b"STARTTLS"), send(b'NO "not now"\r\n')],
                 [b"STARTTLS"]),
}


REFUSE_CASES = [(case, service) for case, (proto, _, _) in REFUSE_STARTTLS.items()
                for service in terminate_services(proto)]


@pytest.mark.parametrize("case,service", REFUSE_CASES,
                         ids=[f"{c}-{s}" for c, s in REFUSE_CASES])
def test_backend_refuses_starttls(gateway, ca, case, service):
    proto, script, dance = REFUSE_STARTTLS[case]
    gw = gateway(service, "starttls", script + [hold()])
    line = client_gets_unavailable(gw, ca)
    assert "backend" in line, line
    conn = gw.fb.wait_connection().wait_closed()
    verbs = conn.verbs(tagged=proto is IMAP)
    assert verbs[:len(dance)] == dance, conn.received
    assert_only(conn, proto, dance + ALLOWED_BEFORE_REFUSAL[proto.name])
    assert verbs.count(dance[-1]) == 1, conn.received


# -- response injection ---------------------------------------------------------------------

def injection_script(proto, injected):
    """A backend that offers STARTTLS and puts `injected` behind its go-ahead, in one write."""
    if proto is IMAP:
        return [send(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] fake\r\n"), recv_line(b"STARTTLS"),
                send_tagged(b"{tag} OK Begin TLS\r\n" + injected)]
    if proto is POP3:
        return [send(b"+OK fake\r\n"), recv_line(b"CAPA"), send(b"+OK\r\nSTLS\r\n.\r\n"),
                recv_line(b"STLS"), send(b"+OK\r\n" + injected)]
    return [send(b'"IMPLEMENTATION" "fake"\r\n"STARTTLS"\r\n"VERSION" "1.0"\r\nOK\r\n'),
            recv_line(b"STARTTLS"), send(b"OK\r\n" + injected)]


INJECTED = {
    "imap": b"* OK injected " + MARKER + b"\r\n",
    "pop3": b"+OK injected " + MARKER,
    "sieve": b"OK",
}
DANCE = {"imap": [b"STARTTLS"], "pop3": [b"CAPA", b"STLS"], "sieve": [b"STARTTLS"]}


@pytest.mark.parametrize("kind", ["line", "tls-bytes"])
@pytest.mark.parametrize("proto,service", proto_services(), ids=ps_ids(proto_services()))
def test_backend_response_injection(gateway, ca, proto, service, kind):
    injected = INJECTED[proto.name] if kind == "line" else b"\x16\x03\x01\x00\x05hello"
    gw = gateway(service, "starttls", injection_script(proto, injected) + [hold()])
    line = client_gets_unavailable(gw, ca)
    assert "response injection" in line, line
    conn = gw.fb.wait_connection().wait_closed()
    # sallyport never started TLS on top of the injected bytes.
    assert conn.verbs(tagged=proto is IMAP) == DANCE[proto.name], conn.received
    assert_only(conn, proto, DANCE[proto.name])


@pytest.mark.parametrize("proto", PROTOS, ids=proto_id)
def test_backend_response_injection_passthrough(gateway, proto):
    gw = gateway(proto.starttls_service, "starttls",
                 injection_script(proto, INJECTED[proto.name]) + [hold()], mode="passthrough")
    line = passthrough_client_closed(gw)
    assert "response injection" in gw.sp.log(), line
    conn = gw.fb.wait_connection().wait_closed()
    # The client's ClientHello never followed the injected bytes.
    assert conn.verbs(tagged=proto is IMAP) == DANCE[proto.name], conn.received
    assert_only(conn, proto, DANCE[proto.name])


# -- what the backend says before TLS stays there -------------------------------------------

def chatty_starttls_script(proto, ctx):
    """A STARTTLS backend that says MARKER in every cleartext line it can,
    then behaves inside TLS."""
    if proto is IMAP:
        return [send(b"* OK " + MARKER + b" greeting\r\n"), recv_line(b"CAPABILITY"),
                send_tagged(b"* CAPABILITY IMAP4rev1 STARTTLS X-" + MARKER + b"\r\n"
                            b"* OK [ALERT] " + MARKER + b" alert\r\n"
                            b"* 3 EXISTS\r\n{tag} OK " + MARKER + b"\r\n"),
                recv_line(b"STARTTLS"),
                send_tagged(b"* OK [ALERT] " + MARKER + b" again\r\n{tag} OK " + MARKER
                            + b" begin TLS\r\n"),
                tls(ctx), imap_server()]
    if proto is POP3:
        return [send(b"+OK " + MARKER + b" greeting\r\n"), recv_line(b"CAPA"),
                send(b"+OK " + MARKER + b"\r\nSTLS\r\nIMPLEMENTATION " + MARKER + b"\r\n.\r\n"),
                recv_line(b"STLS"), send(b"+OK " + MARKER + b" begin TLS\r\n"),
                tls(ctx), pop3_server()]
    return [send(b'"IMPLEMENTATION" "' + MARKER + b'"\r\n"SASL" ""\r\n"STARTTLS"\r\n'
                 b'"VERSION" "1.0"\r\nOK "' + MARKER + b'"\r\n'),
            recv_line(b"STARTTLS"), send(b'OK "' + MARKER + b' begin TLS"\r\n'),
            tls(ctx), sieve_server(greeting=SIEVE_BACKEND_CAPS)]


FRESH_GREETING = {"imap": rb"\* OK [^\r\n\[]*\r\n", "pop3": rb"\+OK [^\r\n<>]*\r\n"}


@pytest.mark.parametrize("proto,service", proto_services(), ids=ps_ids(proto_services()))
def test_cleartext_from_backend_never_reaches_client(gateway, ca, backend_ctx, proto, service):
    gw = gateway(service, "starttls", chatty_starttls_script(proto, backend_ctx))
    received = b""
    with connect(gw.port, timeout=30) as raw:
        if gw.starttls:
            received += proto.read_greeting(raw)
            proto.starttls(raw)
        with client_context(ca).wrap_socket(raw, server_hostname=HOSTNAME) as s:
            if proto is SIEVE:
                # The backend's own capabilities, re-issued inside TLS (RFC 5804 2.2).
                expect = SIEVE_BACKEND_CAPS
            elif gw.starttls:
                # Already greeted by sallyport: the next bytes answer our own command.
                expect = None
            else:
                # Not greeted yet: sallyport's fresh greeting (the backend's went
                # to the STARTTLS dance), without the stale cleartext capabilities.
                greeting = read_line(s)
                assert re.fullmatch(FRESH_GREETING[proto.name], greeting), greeting
                received += greeting
                expect = None
            received += session_inside_tls(proto, s, expect)
    assert MARKER not in received, received
    conn = gw.fb.wait_connection().wait_closed()
    assert conn.in_tls and conn.error is None, conn.error


# greeting the client gets first after TLS, by listener and backend flavour:
# "backend" = the backend's own greeting, None = none (swallowed), "fresh" =
# sallyport's own.
AFTER_TLS = [
    ("imap", "plain", None), ("imap", "implicit", None), ("imap", "starttls", None),
    ("imaps", "plain", "backend"), ("imaps", "implicit", "backend"), ("imaps", "starttls", "fresh"),
    ("pop3", "plain", None), ("pop3", "implicit", None), ("pop3", "starttls", None),
    ("pop3s", "plain", "backend"), ("pop3s", "implicit", "backend"), ("pop3s", "starttls", "fresh"),
    ("sieve", "plain", "backend"), ("sieve", "implicit", "backend"),
    ("sieve", "starttls", "backend"),
]
BACKEND_GREETING = {"imap": IMAP_BACKEND_TLS_GREETING, "pop3": POP3_BACKEND_GREETING,
                    "sieve": SIEVE_BACKEND_CAPS}


@pytest.mark.parametrize("service,flavour,greeting", AFTER_TLS,
                         ids=[f"{s}-{f}" for s, f, _ in AFTER_TLS])
def test_greeting_after_tls(gateway, ca, backend_ctx, service, flavour, greeting):
    proto = PROTO_OF_SERVICE[service]
    gw = gateway(service, flavour, good_script(proto, flavour, backend_ctx))
    with connect(gw.port, timeout=30) as raw:
        if gw.starttls:
            proto.to_go_ahead(raw)
        with client_context(ca).wrap_socket(raw, server_hostname=HOSTNAME) as s:
            if greeting == "fresh":
                first = read_line(s)
                assert re.fullmatch(FRESH_GREETING[proto.name], first), first
                session_inside_tls(proto, s, None)
            else:
                session_inside_tls(proto, s, BACKEND_GREETING[proto.name] if greeting else None)
    conn = gw.fb.wait_connection().wait_closed()
    assert conn.error is None, conn.error


# -- the backend cannot be reached or will not talk -------------------------------------------

FAILURES = {
    "refused": None,
    "closes": [close()],
    "silent": [hold()],
}
TERMINATE_CASES = [("imap", "starttls"), ("imap", "plain"), ("imaps", "implicit"),
                   ("pop3", "starttls"), ("pop3", "plain"), ("pop3s", "implicit"),
                   ("sieve", "starttls"), ("sieve", "plain")]


# A silent plain backend fails like a silent STARTTLS one (no greeting within
# connect_timeout): left out to keep the run short.
TERMINATE_FAILURES = [(s, f, failure) for s, f in TERMINATE_CASES for failure in FAILURES
                      if not (f == "plain" and failure == "silent")]


@pytest.mark.parametrize("service,flavour,failure", TERMINATE_FAILURES,
                         ids=[f"{s}-{f}-{x}" for s, f, x in TERMINATE_FAILURES])
def test_backend_unavailable_terminate(gateway, ca, service, flavour, failure):
    gw = gateway(service, flavour, FAILURES[failure], connect_timeout=1)
    client_gets_unavailable(gw, ca)
    if gw.fb is not None:
        conn = gw.fb.wait_connection().wait_closed()
        if flavour != "implicit":
            assert conn.received == b"", "sallyport spoke before the backend's greeting"


PASSTHROUGH_CASES = [("imap", "refused"), ("imap", "closes"), ("imap", "silent"),
                     ("pop3", "refused"), ("pop3", "closes"), ("pop3", "silent"),
                     ("sieve", "refused"), ("sieve", "closes"), ("sieve", "silent"),
                     ("imaps", "refused"), ("imaps", "closes"),
                     ("pop3s", "refused"), ("pop3s", "closes")]


@pytest.mark.parametrize("service,failure", PASSTHROUGH_CASES,
                         ids=[f"{s}-{f}" for s, f in PASSTHROUGH_CASES])
def test_backend_unavailable_passthrough_closes_client(gateway, service, failure):
    flavour = "implicit" if service in ("imaps", "pop3s") else "starttls"
    gw = gateway(service, flavour, FAILURES[failure], mode="passthrough", connect_timeout=1)
    passthrough_client_closed(gw)
    if failure == "silent":
        conn = gw.fb.wait_connection().wait_closed()
        # Nothing before the greeting, and the ClientHello never went out.
        assert conn.received == b"", conn.received


FIRST_COMMAND = {"imap": b"a CAPABILITY\r\n", "pop3": b"CAPA\r\n"}


@pytest.mark.parametrize("failure", ["closes", "silent"])
@pytest.mark.parametrize("proto", [IMAP, POP3], ids=proto_id)
def test_client_that_already_spoke_still_gets_unavailable(gateway, ca, proto, failure):
    """An IMAP or POP3 client of a STARTTLS listener is not greeted again after
    TLS, so it sends its first command at once, while sallyport still waits
    for the backend. When sallyport gives up (here the backend closes right
    after the client spoke, or never greets), that client too must get the
    protocol's "try later" line: the unread command must not turn the close
    into a reset that loses the reply."""
    spoke = threading.Event()
    script = [wait_event(spoke), close()] if failure == "closes" else [hold()]
    gw = gateway(proto.starttls_service, "starttls", script, connect_timeout=1)
    try:
        with connect(gw.port, timeout=30) as raw:
            proto.to_go_ahead(raw)
            with client_context(ca).wrap_socket(raw, server_hostname=HOSTNAME) as s:
                s.sendall(FIRST_COMMAND[proto.name])
                spoke.set()
                data = recv_until_closed(s)
    finally:
        spoke.set()
    line = gw.wait_session_line()
    assert data.startswith(proto.unavailable), (data, line)
    assert data.endswith(b"\r\n") and data.count(b"\n") == 1, data
    conn = gw.fb.wait_connection().wait_closed()
    assert conn.received == b"", "the client's command reached a backend that never greeted"
