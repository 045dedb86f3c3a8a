"""A scripted fake IMAP / POP3 / ManageSieve backend, and the client side of
the access-protocol tests (test_access_negative.py,
test_access_backend_failures.py).

`FakeAccess` listens on 127.0.0.1 on an ephemeral port. Every connection it
accepts plays the same script in its own thread, and every byte the peer
(that is, sallyport) sent is recorded, split into what arrived before TLS
(`cleartext`) and inside it (`tls_data`), so a test can assert what reached
the backend and in which form:

    backend = FakeAccess([
        send(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] fake ready\\r\\n"),
        recv_line(b"STARTTLS"),                   # "<tag> STARTTLS"
        send_tagged(b"{tag} OK Begin TLS\\r\\n"),  # echoes the tag just read
        tls(server_context(cert, key)),           # handshake as the server
        imap_server(),                            # answer commands until LOGOUT
    ])
    ...
    conn = backend.wait_connection()
    conn.wait_closed()
    assert b"LOGIN" not in conn.cleartext

Steps: send, send_tagged, recv_line, tls, wait_event, hold, close, and the
small protocol servers imap_server, pop3_server, sieve_server. A script that
runs out of steps reads and records until the peer closes, so "what else
arrived" is always known. Every socket operation is bounded (`timeout`);
`close()` (or the context manager) stops the listener and every thread.

The server itself (FakeBackend, Connection) and the steps and socket
helpers that do not depend on the protocol come from fakebackend.py and are
re-exported here; FakeAccess differs only in recording on after a failed
step.
"""
import re

# The scripted server, its steps and the raw-socket client helpers are the
# SMTP fake's; this module adds the access protocols' steps and helpers.
from fakebackend import (CLIENT_TIMEOUT, DEFAULT_TIMEOUT, Connection, FakeBackend,  # noqa: F401
                         ScriptError, _Close, client_context, client_hello, close, connect,
                         hold, read_line, recv_until_closed, send, server_context, tls)









# -- script steps -------------------------------------------------------------------



def send_tagged(template):
    """Like send, with b"{tag}" replaced by the tag of the last line read."""
    def step(conn):
        conn.sock.sendall(template.replace(b"{tag}", conn.tag))
    step.__name__ = f"send_tagged({template!r})"
    return step


def recv_line(expect=None):
    """Reads one line. With `expect`, the line's first word (or, for IMAP, the
    word after the tag) must be `expect`, in any case."""
    def step(conn):
        line = conn.read_line()
        if expect is None:
            return
        words = line.strip().upper().split(b" ")
        if expect.upper() not in words[:2]:
            raise ScriptError(f"expected {expect!r}, got {line!r}")
    step.__name__ = f"recv_line({expect!r})"
    return step




def wait_event(event, timeout=DEFAULT_TIMEOUT):
    """Waits until the test sets `event` (to order the fake after the client)."""
    def step(conn):
        if not event.wait(timeout):
            raise ScriptError("the test never set the event")
    step.__name__ = "wait_event"
    return step






def _lines_until_eof(conn):
    while True:
        try:
            yield conn.read_line()
        except ScriptError:
            return  # the peer closed: a fine way to end


IMAP_BACKEND_CAPABILITY = b"IMAP4rev1 AUTH=PLAIN"


def imap_server(greeting=None):
    """A minimal IMAP server: every command is answered "<tag> OK"; CAPABILITY
    lists no STARTTLS; LOGOUT says BYE and closes. `greeting` is sent first."""
    def step(conn):
        if greeting:
            conn.sock.sendall(greeting)
        for line in _lines_until_eof(conn):
            words = line.strip().split(b" ")
            tag = words[0]
            verb = words[1].upper() if len(words) > 1 else b""
            if verb == b"CAPABILITY":
                conn.sock.sendall(b"* CAPABILITY " + IMAP_BACKEND_CAPABILITY + b"\r\n"
                                  + tag + b" OK CAPABILITY completed\r\n")
            elif verb == b"LOGOUT":
                conn.sock.sendall(b"* BYE fake logging out\r\n" + tag + b" OK LOGOUT completed\r\n")
                raise _Close()
            else:
                conn.sock.sendall(tag + b" OK " + verb + b" completed\r\n")
    step.__name__ = "imap_server"
    return step


def pop3_server(greeting=None):
    """A minimal POP3 server: "+OK" to everything; CAPA lists USER (no STLS);
    QUIT closes."""
    def step(conn):
        if greeting:
            conn.sock.sendall(greeting)
        for line in _lines_until_eof(conn):
            verb = line.strip().split(b" ")[0].upper()
            if verb == b"CAPA":
                conn.sock.sendall(b"+OK capabilities\r\nUSER\r\n.\r\n")
            elif verb == b"QUIT":
                conn.sock.sendall(b"+OK fake signing off\r\n")
                raise _Close()
            else:
                conn.sock.sendall(b"+OK " + verb + b" done\r\n")
    step.__name__ = "pop3_server"
    return step


SIEVE_BACKEND_CAPS = (b'"IMPLEMENTATION" "fake sieve"\r\n"SASL" "PLAIN"\r\n'
                      b'"SIEVE" "fileinto"\r\n"VERSION" "1.0"\r\nOK "fake ready"\r\n')


def sieve_server(greeting=None):
    """A minimal ManageSieve server: `greeting` (capabilities) first, then "OK"
    to everything; CAPABILITY repeats the greeting; LOGOUT closes."""
    def step(conn):
        if greeting:
            conn.sock.sendall(greeting)
        for line in _lines_until_eof(conn):
            verb = line.strip().split(b" ")[0].upper()
            if verb == b"CAPABILITY":
                conn.sock.sendall(greeting or SIEVE_BACKEND_CAPS)
            elif verb == b"LOGOUT":
                conn.sock.sendall(b'OK "fake logout"\r\n')
                raise _Close()
            else:
                conn.sock.sendall(b'OK "' + verb + b' done"\r\n')
    step.__name__ = "sieve_server"
    return step


# -- the server -------------------------------------------------------------------

class FakeAccess(FakeBackend):
    """FakeBackend for IMAP, POP3 and ManageSieve scripts: after a step fails it
    keeps recording until the peer closes, so a test sees everything sent."""

    name = "fakeaccess"
    drain_after_error = True





# -- client side ----------------------------------------------------------------------





def read_until(sock, last):
    """Lines through the first one for which last(line) is true; raises if closed first."""
    data = b""
    while True:
        line = read_line(sock)
        data += line
        if not line.endswith(b"\n"):
            raise AssertionError(f"connection closed inside a response: {data!r}")
        if last(line):
            return data


def read_imap(sock, tag):
    """An IMAP response: untagged lines through the line tagged `tag`."""
    return read_until(sock, lambda line: line.startswith(tag + b" "))


def read_pop3_multiline(sock):
    """A POP3 multi-line response through its lone "." line."""
    first = read_line(sock)
    if not first.startswith(b"+OK"):
        return first
    return first + read_until(sock, lambda line: line == b".\r\n")


SIEVE_RESPONSE = re.compile(rb"^(OK|NO|BYE)( |\r\n)", re.IGNORECASE)


def read_sieve(sock):
    """A ManageSieve response: data lines through the OK / NO / BYE line."""
    return read_until(sock, lambda line: SIEVE_RESPONSE.match(line) is not None)








# -- what sallyport says in cleartext -------------------------------------------------

HOSTNAME = "gw.test"  # the listener hostname the tests configure

IMAP_GREETING = re.compile(
    rb"\A\* OK \[CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\] [^\r\n]*\r\n\Z")
IMAP_CAPABILITY = b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n"
POP3_GREETING = re.compile(rb"\A\+OK [^\r\n<>]*\r\n\Z")  # no APOP timestamp
POP3_MUST_STLS = b"-ERR Must issue a STLS command first\r\n"


def sieve_capabilities(response):
    """The capability lines of a ManageSieve greeting / CAPABILITY response as
    {NAME: value or None}, checking the shape; returns (caps, final line)."""
    lines = response.split(b"\r\n")
    assert lines[-1] == b"", response
    lines = lines[:-1]
    caps = {}
    for line in lines[:-1]:
        m = re.fullmatch(rb'"([A-Z0-9-]+)"(?: "([^"]*)")?', line, re.IGNORECASE)
        assert m, f"not a capability line: {line!r} in {response!r}"
        caps[m.group(1).upper()] = m.group(2)
    return caps, lines[-1]


def assert_sieve_cleartext_capabilities(response):
    caps, last = sieve_capabilities(response)
    assert "STARTTLS".encode() in caps and caps[b"STARTTLS"] is None, response
    assert caps.get(b"SASL") == b"", f"SASL mechanisms offered in cleartext: {response!r}"
    assert b"IMPLEMENTATION" in caps and caps.get(b"VERSION") == b"1.0", response
    assert last == b"OK" or last.startswith(b"OK "), response


class Proto:
    """How a client reaches the go-ahead of one protocol, and what sallyport
    answers when it must give up."""

    def __init__(self, name, starttls_service, implicit_service, unavailable):
        self.name = name
        self.starttls_service = starttls_service
        self.implicit_service = implicit_service
        self.unavailable = unavailable  # prefix of sallyport's "try later" line

    def __repr__(self):
        return self.name

    def read_greeting(self, sock):
        if self.name == "imap":
            greeting = read_line(sock)
            assert IMAP_GREETING.match(greeting), greeting
        elif self.name == "pop3":
            greeting = read_line(sock)
            assert POP3_GREETING.match(greeting), greeting
        else:
            greeting = read_sieve(sock)
            assert_sieve_cleartext_capabilities(greeting)
        return greeting

    def starttls(self, sock):
        """Sends the STARTTLS command and checks the go-ahead."""
        if self.name == "imap":
            sock.sendall(b"a STARTTLS\r\n")
            reply = read_line(sock)
            assert reply.startswith(b"a OK ") and reply.endswith(b"\r\n"), reply
        elif self.name == "pop3":
            sock.sendall(b"STLS\r\n")
            reply = read_line(sock)
            assert reply.startswith(b"+OK") and reply.endswith(b"\r\n"), reply
        else:
            sock.sendall(b"STARTTLS\r\n")
            reply = read_line(sock)
            assert re.match(rb"OK( [^\r\n]*)?\r\n\Z", reply), reply

    def to_go_ahead(self, sock):
        """Greeting and STARTTLS on a STARTTLS listener: the client's TLS
        handshake must start now."""
        self.read_greeting(sock)
        self.starttls(sock)


IMAP = Proto("imap", "imap", "imaps", b"* BYE [UNAVAILABLE] ")
POP3 = Proto("pop3", "pop3", "pop3s", b"-ERR [SYS/TEMP] ")
SIEVE = Proto("sieve", "sieve", None, b"BYE (TRYLATER) ")
PROTOS = [IMAP, POP3, SIEVE]
PROTO_OF_SERVICE = {"imap": IMAP, "imaps": IMAP, "pop3": POP3, "pop3s": POP3, "sieve": SIEVE}


class Gateway:
    """One running sallyport (`sp`) with one listener on `port` of `service` in
    `mode`, in front of FakeAccess `fb` (or None)."""

    def __init__(self, sp, port, fb, service, mode):
        self.sp, self.port, self.fb, self.service, self.mode = sp, port, fb, service, mode
        self.proto = PROTO_OF_SERVICE[service]

    @property
    def starttls(self):
        return self.service in ("imap", "pop3", "sieve")

    def session_lines(self):
        return [line for line in self.sp.log().splitlines() if "session listener=" in line]

    def wait_session_line(self, timeout=20):
        """Waits for the log line of a finished session; returns the last one."""
        self.sp.wait_log("session listener=", timeout)
        return self.session_lines()[-1]

    def assert_alive(self):
        assert self.sp.proc.poll() is None, f"sallyport died:\n{self.sp.log()}"


def access_config(port, service, mode, endpoints, gw_cert, ca, sni="*", **global_opts):
    """A sallyport config: one listener, one backend with `endpoints`
    ({service: "host:port flavour"}), one route."""
    options = {"log_level": "debug", "plaintext_timeout": 60, "handshake_timeout": 30,
               "connect_timeout": 10, **global_opts}
    text = "[global]\n" + "".join(f"{k} = {v}\n" for k, v in options.items())
    text += (f"[certificate gw]\ncert = {gw_cert[0]}\nkey = {gw_cert[1]}\n"
             f"[listener l]\nservice = {service}\naddress = 127.0.0.1:{port}\n"
             f"mode = {mode}\nhostname = {HOSTNAME}\n[backend b]\n")
    text += "".join(f"{s} = {e}\n" for s, e in endpoints.items())
    text += (f"ca = {ca.cert}\ntls_name = backend.test\nverify = yes\n"
             f"[route r]\nsni = {sni}\nbackend = b\n")
    return text


# -- well-behaved backends ------------------------------------------------------------

IMAP_BACKEND_GREETING = b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] fake ready\r\n"
IMAP_BACKEND_TLS_GREETING = b"* OK fake imap ready\r\n"
POP3_BACKEND_GREETING = b"+OK fake pop3 ready\r\n"
SIEVE_BACKEND_STARTTLS_CAPS = (b'"IMPLEMENTATION" "fake sieve"\r\n"SASL" ""\r\n'
                               b'"SIEVE" "fileinto"\r\n"STARTTLS"\r\n"VERSION" "1.0"\r\n'
                               b'OK "fake ready"\r\n')


def good_script(proto, flavour, ctx):
    """A backend that does everything right, for `proto` at an endpoint of `flavour`."""
    name = proto.name if isinstance(proto, Proto) else proto
    if name == "imap":
        if flavour == "starttls":
            return [send(IMAP_BACKEND_GREETING), recv_line(b"STARTTLS"),
                    send_tagged(b"{tag} OK Begin TLS negotiation now\r\n"), tls(ctx),
                    imap_server()]
        pre = [tls(ctx)] if flavour == "implicit" else []
        return pre + [imap_server(greeting=IMAP_BACKEND_TLS_GREETING)]
    if name == "pop3":
        if flavour == "starttls":
            return [send(POP3_BACKEND_GREETING), recv_line(b"CAPA"),
                    send(b"+OK capabilities\r\nUSER\r\nSTLS\r\n.\r\n"), recv_line(b"STLS"),
                    send(b"+OK Begin TLS negotiation\r\n"), tls(ctx), pop3_server()]
        pre = [tls(ctx)] if flavour == "implicit" else []
        return pre + [pop3_server(greeting=POP3_BACKEND_GREETING)]
    if flavour == "starttls":
        return [send(SIEVE_BACKEND_STARTTLS_CAPS), recv_line(b"STARTTLS"),
                send(b'OK "Begin TLS negotiation now"\r\n'), tls(ctx),
                sieve_server(greeting=SIEVE_BACKEND_CAPS)]
    pre = [tls(ctx)] if flavour == "implicit" else []
    return pre + [sieve_server(greeting=SIEVE_BACKEND_CAPS)]


def session_inside_tls(proto, s, expect_greeting):
    """A short exchange inside TLS with a well-behaved backend: `expect_greeting`
    (bytes the client must get first, or None), then a no-op and a logout.
    Returns everything read."""
    data = b""
    if expect_greeting is not None:
        got = (read_sieve(s) if proto.name == "sieve" else read_line(s))
        assert got == expect_greeting, got
        data += got
    if proto.name == "imap":
        s.sendall(b"n1 NOOP\r\n")
        got = read_imap(s, b"n1")
        assert got == b"n1 OK NOOP completed\r\n", got
        s.sendall(b"n2 LOGOUT\r\n")
        got += read_imap(s, b"n2")
    elif proto.name == "pop3":
        s.sendall(b"NOOP\r\n")
        got = read_line(s)
        assert got == b"+OK NOOP done\r\n", got
        s.sendall(b"QUIT\r\n")
        got += read_line(s)
    else:
        s.sendall(b"NOOP\r\n")
        got = read_sieve(s)
        assert got == b'OK "NOOP done"\r\n', got
        s.sendall(b"LOGOUT\r\n")
        got += read_sieve(s)
    data += got
    assert recv_until_closed(s) == b""
    return data
