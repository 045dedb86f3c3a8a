"""Backends that fail, misbehave or cannot be trusted.

Terminate listeners (implicit TLS and STARTTLS) in front of a FakeBackend
playing a bad script: wherever sallyport can still answer the client (inside
the TLS session it terminated), the client must get "421 4.3.0" and a close,
and sallyport must never carry on with a backend that refused, downgraded,
injected or could not be verified. Passthrough listeners cannot answer, so the
client's connection must simply be closed.
"""
import ssl

import pytest

from conftest import CertAuthority, free_port
from fakebackend import (GREETING, HOSTNAME, FakeBackend, Gateway, assert_alive,
                         cleartext_to_go_ahead, client_context, client_hello, close, connect,
                         hold, read_line, read_reply, recv_line, recv_until_closed, send,
                         server_context, smtp_server, tls, tls_records_together)

SERVICES = ["submissions", "submission"]  # implicit TLS, STARTTLS
BACKEND_GREETING = b"220 fake.backend.test ESMTP fake\r\n"


@pytest.fixture(scope="module")
def gw_cert(ca):
    return ca.issue("bf-gw", [HOSTNAME])


@pytest.fixture(scope="module")
def good_backend_cert(ca):
    return ca.issue("bf-backend", ["backend.test"])


@pytest.fixture(scope="module")
def untrusted_backend_cert(tmp_path_factory):
    """backend.test, but issued by a CA sallyport does not trust."""
    return CertAuthority(tmp_path_factory.mktemp("other-ca")).issue("backend.test")


@pytest.fixture(scope="module")
def misnamed_backend_cert(ca):
    """Trusted CA, wrong name."""
    return ca.issue("bf-wrong", ["wrong.test"])


@pytest.fixture
def gateway(sallyport, ca, gw_cert):
    """Factory: one listener in front of one backend endpoint.

    `script` is played by a FakeBackend at the endpoint; script=None points
    the endpoint at a port where nothing listens."""
    backends = []

    def start(service, flavour, script, mode="terminate", verify="yes", **global_opts):
        fb = None
        if script is None:
            address = f"127.0.0.1:{free_port()}"
        else:
            fb = FakeBackend(script)
            backends.append(fb)
            address = fb.address
        port = free_port()
        options = {"log_level": "debug", "connect_timeout": 10, **global_opts}
        text = "[global]\n" + "".join(f"{k} = {v}\n" for k, v in options.items())
        text += (f"[certificate gw]\ncert = {gw_cert[0]}\nkey = {gw_cert[1]}\n"
                 f"[listener l]\nservice = {service}\naddress = 127.0.0.1:{port}\n"
                 f"mode = {mode}\nhostname = {HOSTNAME}\n"
                 f"[backend b]\n{service} = {address} {flavour}\n"
                 f"ca = {ca.cert}\ntls_name = backend.test\nverify = {verify}\n"
                 f"[route r]\nsni = *\nbackend = b\n")
        return Gateway(sallyport(text), port, fb, service, mode)

    yield start
    for fb in backends:
        fb.close()


def client_gets_421(gw, ca):
    """Through the client's TLS session: exactly one "421 4.3.0" line, then close."""
    with connect(gw.port, timeout=30) as raw:
        if gw.service == "submission":
            cleartext_to_go_ahead(raw)
        with client_context(ca).wrap_socket(raw, server_hostname=HOSTNAME) as s:
            data = recv_until_closed(s)
    assert data.startswith(b"421 4.3.0 "), data
    assert data.endswith(b"\r\n") and data.count(b"\n") == 1, data
    assert_alive(gw)
    return gw.wait_session_line()


def ehlo_dance(ehlo_reply):
    """A STARTTLS backend up to its EHLO reply."""
    return [send(BACKEND_GREETING), recv_line(b"EHLO"), send(ehlo_reply)]


# -- the backend cannot be reached or will not talk ---------------------------------

FLAVOURS = ["plain", "starttls", "implicit"]


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("service", SERVICES)
def test_backend_refuses_connection(gateway, ca, service, flavour):
    gw = gateway(service, flavour, script=None)
    client_gets_421(gw, ca)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("service", SERVICES)
def test_backend_closes_before_greeting(gateway, ca, service, flavour):
    gw = gateway(service, flavour, script=[close()])
    client_gets_421(gw, ca)
    assert gw.fb.count == 1


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("service", SERVICES)
def test_backend_never_greets(gateway, ca, service, flavour):
    gw = gateway(service, flavour, script=[hold()], connect_timeout=1)
    client_gets_421(gw, ca)
    conn = gw.fb.wait_connection().wait_closed()
    if flavour != "implicit":
        assert conn.received == b"", "sallyport spoke before the backend's greeting"


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("service", SERVICES)
def test_backend_greets_554(gateway, ca, good_backend_cert, service, flavour):
    script = [send(b"554 5.3.2 fake.backend.test not accepting mail\r\n"), hold()]
    if flavour == "implicit":
        script = [tls(server_context(*good_backend_cert))] + script
    gw = gateway(service, flavour, script=script)
    client_gets_421(gw, ca)
    conn = gw.fb.wait_connection().wait_closed()
    assert conn.lines(tls_part=flavour == "implicit") == [], "sallyport went on after a 554"


# -- STARTTLS towards the backend: never downgrade, never accept injection ----------

NO_STARTTLS = {
    "absent": b"250-fake.backend.test\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n"
              b"250 8BITMIME\r\n",
    "lookalike": b"250-fake.backend.test\r\n250-XSTARTTLS\r\n250 STARTTLSX\r\n",
    "as-hostname": b"250-STARTTLS\r\n250 8BITMIME\r\n",
}


@pytest.mark.parametrize("ehlo", list(NO_STARTTLS.values()), ids=list(NO_STARTTLS))
@pytest.mark.parametrize("service", SERVICES)
def test_backend_without_starttls_is_never_downgraded(gateway, ca, service, ehlo):
    gw = gateway(service, "starttls", script=ehlo_dance(ehlo) + [hold()])
    client_gets_421(gw, ca)
    conn = gw.fb.wait_connection().wait_closed()
    lines = conn.lines()
    assert lines[0].upper().startswith(b"EHLO "), lines
    # Nothing after EHLO: no STARTTLS, no MAIL, no AUTH, no client bytes
    # (at most a polite QUIT).
    assert [line for line in lines[1:] if line.upper() != b"QUIT"] == [], lines


@pytest.mark.parametrize("service", SERVICES)
def test_backend_refuses_starttls_454(gateway, ca, service):
    script = ehlo_dance(b"250-fake.backend.test\r\n250 STARTTLS\r\n") + [
        recv_line(b"STARTTLS"), send(b"454 4.7.0 TLS not available due to temporary reason\r\n"),
        hold()]
    gw = gateway(service, "starttls", script=script)
    client_gets_421(gw, ca)
    conn = gw.fb.wait_connection().wait_closed()
    lines = conn.lines()
    assert [line.split(b" ")[0].upper() for line in lines[:2]] == [b"EHLO", b"STARTTLS"], lines
    assert [line for line in lines[2:] if line.upper() != b"QUIT"] == [], lines


@pytest.mark.parametrize("injected", [b"250 2.0.0 injected\r\n", b"\x16\x03\x01\x00\x05hello"],
                         ids=["smtp-line", "tls-bytes"])
@pytest.mark.parametrize("service", SERVICES)
def test_backend_response_injection(gateway, ca, service, injected):
    script = ehlo_dance(b"250-fake.backend.test\r\n250 STARTTLS\r\n") + [
        recv_line(b"STARTTLS"), send(b"220 go ahead\r\n" + injected), hold()]
    gw = gateway(service, "starttls", script=script)
    line = client_gets_421(gw, ca)
    assert "response injection" in line, line
    conn = gw.fb.wait_connection().wait_closed()
    # sallyport never started TLS on top of the injected bytes.
    assert conn.lines() == [b"EHLO gw.test", b"STARTTLS"], conn.received


# -- the backend's certificate ---------------------------------------------------

def tls_backend(flavour, cert):
    """A well-behaved TLS backend of the given flavour holding `cert`."""
    ctx = server_context(*cert)
    if flavour == "implicit":
        return [tls(ctx), smtp_server(greet=True)]
    return ehlo_dance(b"250-fake.backend.test\r\n250 STARTTLS\r\n") + [
        recv_line(b"STARTTLS"), send(b"220 2.0.0 go ahead\r\n"), tls(ctx), smtp_server()]


@pytest.mark.parametrize("flavour", ["implicit", "starttls"])
@pytest.mark.parametrize("service", SERVICES)
def test_untrusted_backend_certificate(gateway, ca, untrusted_backend_cert, service, flavour):
    gw = gateway(service, flavour, script=tls_backend(flavour, untrusted_backend_cert))
    line = client_gets_421(gw, ca)
    assert "certificate" in line, line
    conn = gw.fb.wait_connection().wait_closed()
    assert conn.tls_data == b"", "sallyport talked to an untrusted backend"


@pytest.mark.parametrize("flavour", ["implicit", "starttls"])
@pytest.mark.parametrize("service", SERVICES)
def test_backend_certificate_name_mismatch(gateway, ca, misnamed_backend_cert, service, flavour):
    gw = gateway(service, flavour, script=tls_backend(flavour, misnamed_backend_cert))
    line = client_gets_421(gw, ca)
    assert "certificate" in line, line
    conn = gw.fb.wait_connection().wait_closed()
    assert conn.tls_data == b"", "sallyport talked to a backend with the wrong name"


MESSAGE = b"Subject: relayed\r\n\r\nhello through TLS\r\n..dot-stuffed line\r\n"


def send_message(s):
    for command, code in [(b"EHLO client.test", b"250"),
                          (b"MAIL FROM:<alice@client.test>", b"250"),
                          (b"RCPT TO:<bob@backend.test>", b"250"),
                          (b"DATA", b"354")]:
        s.sendall(command + b"\r\n")
        assert read_reply(s).startswith(code), command
    s.sendall(MESSAGE + b".\r\n")
    assert read_reply(s).startswith(b"250")
    s.sendall(b"QUIT\r\n")
    assert read_reply(s).startswith(b"221")
    return recv_until_closed(s)


@pytest.mark.parametrize("flavour", ["implicit", "starttls"])
@pytest.mark.parametrize("service", SERVICES)
def test_verify_no_accepts_the_same_backend(gateway, ca, untrusted_backend_cert, service,
                                            flavour):
    """Control for the certificate tests: with verify = no the mail goes through."""
    gw = gateway(service, flavour, script=tls_backend(flavour, untrusted_backend_cert),
                 verify="no")
    with connect(gw.port) as raw:
        if service == "submission":
            cleartext_to_go_ahead(raw)
        with client_context(ca).wrap_socket(raw, server_hostname=HOSTNAME) as s:
            if service == "submissions":
                greeting = read_line(s)
                # The backend's own greeting, or sallyport's after a STARTTLS dance.
                assert greeting == (BACKEND_GREETING if flavour == "implicit" else GREETING)
            assert send_message(s) == b""
    conn = gw.fb.wait_connection().wait_closed()
    assert conn.in_tls and conn.error is None, conn.error
    assert conn.cleartext == (b"" if flavour == "implicit" else b"EHLO gw.test\r\nSTARTTLS\r\n")
    assert (b"MAIL FROM:<alice@client.test>\r\nRCPT TO:<bob@backend.test>\r\nDATA\r\n"
            + MESSAGE + b".\r\nQUIT\r\n") in conn.tls_data


def test_greeting_in_records_that_arrive_together(gateway, ca, good_backend_cert):
    """An implicit-TLS backend whose two-line greeting comes as two TLS
    records in one TCP segment: sallyport reads ahead, so both records can
    arrive in one read, and the second must still be taken from TLS (no
    socket event announces it) within the connect timeout."""
    first, last = b"220-fake.backend.test first line\r\n", b"220 fake.backend.test ESMTP\r\n"
    gw = gateway("submissions", "implicit",
                 script=[tls_records_together(server_context(*good_backend_cert), first, last)],
                 connect_timeout=30)
    with connect(gw.port) as raw:
        with client_context(ca).wrap_socket(raw, server_hostname=HOSTNAME) as s:
            assert read_reply(s) == first + last


# -- passthrough: nobody can answer, so the client's connection is closed -----------

PASSTHROUGH_FAILURES = {
    "refused": None,
    "closes": [close()],
    "silent": [hold()],
    "no-starttls": ehlo_dance(NO_STARTTLS["absent"]) + [hold()],
}
# An implicit-TLS backend has no prelude: a silent one is the client's own
# handshake timeout, and it has no STARTTLS to refuse.
PASSTHROUGH_CASES = [("submissions", "refused"), ("submissions", "closes"),
                     ("submission", "refused"), ("submission", "closes"),
                     ("submission", "silent"), ("submission", "no-starttls")]


@pytest.mark.parametrize("service,failure", PASSTHROUGH_CASES,
                         ids=[f"{s}-{f}" for s, f in PASSTHROUGH_CASES])
def test_passthrough_backend_failure_closes_client(gateway, service, failure):
    script = PASSTHROUGH_FAILURES[failure]
    flavour = "implicit" if service == "submissions" else "starttls"
    gw = gateway(service, flavour, script=script, mode="passthrough", connect_timeout=1)
    with connect(gw.port, timeout=30) as s:
        if service == "submission":
            cleartext_to_go_ahead(s)
        s.sendall(client_hello(HOSTNAME))
        assert recv_until_closed(s) == b""
    assert_alive(gw)
    gw.wait_session_line()
    if failure == "no-starttls":
        conn = gw.fb.wait_connection().wait_closed()
        # The ClientHello never went to a backend that did not agree to TLS.
        assert conn.lines() == [b"EHLO gw.test"], conn.received


# -- the backend dies in the middle of DATA: the client never sees 250 --------------

def dies_in_data(ctx=None):
    """A backend that takes the envelope, says 354, reads a little of the
    message and disappears."""
    head = [tls(ctx)] if ctx is not None else []
    return head + [send(BACKEND_GREETING), recv_line(b"EHLO"),
                   send(b"250-fake.backend.test\r\n250 8BITMIME\r\n"),
                   recv_line(b"MAIL"), send(b"250 2.1.0 Ok\r\n"),
                   recv_line(b"RCPT"), send(b"250 2.1.5 Ok\r\n"),
                   recv_line(b"DATA"), send(b"354 go ahead\r\n"),
                   recv_line(), close()]


MID_DATA = [("submissions", "plain", "terminate"), ("submissions", "implicit", "terminate"),
            ("submission", "plain", "terminate"), ("submissions", "implicit", "passthrough")]


@pytest.mark.parametrize("service,flavour,mode", MID_DATA,
                         ids=[f"{s}-{m}-to-{f}" for s, f, m in MID_DATA])
def test_backend_dying_mid_data_never_yields_250(gateway, ca, good_backend_cert, service,
                                                 flavour, mode):
    ctx = server_context(*good_backend_cert) if flavour == "implicit" else None
    gw = gateway(service, flavour, dies_in_data(ctx), mode=mode)
    name = "backend.test" if mode == "passthrough" else HOSTNAME
    with connect(gw.port, timeout=30) as raw:
        if service == "submission":
            cleartext_to_go_ahead(raw)
        with client_context(ca).wrap_socket(raw, server_hostname=name) as s:
            if service == "submissions":
                assert read_reply(s) == BACKEND_GREETING
            s.sendall(b"EHLO client.test\r\n")
            assert read_reply(s).startswith(b"250")
            s.sendall(b"MAIL FROM:<a@client.test>\r\n")
            assert read_reply(s).startswith(b"250")
            s.sendall(b"RCPT TO:<b@backend.test>\r\n")
            assert read_reply(s).startswith(b"250")
            s.sendall(b"DATA\r\n")
            assert read_reply(s).startswith(b"354")
            try:
                s.sendall(b"Subject: lost\r\n\r\n" + b"x" * 200000 + b"\r\n.\r\n")
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass  # the relay may close before the whole message is written
            try:
                rest = recv_until_closed(s)
            except (ConnectionResetError, ssl.SSLError):
                rest = b""
    assert not any(line.startswith(b"250") for line in rest.split(b"\r\n")), rest
    line = gw.wait_session_line()
    assert 'close="' in line, line
    assert_alive(gw)
