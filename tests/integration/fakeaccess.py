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

Nothing here is SMTP-specific and nothing depends on fakebackend.py, so the
access tests do not move when the SMTP fake changes.
"""
import re
import socket
import ssl
import threading
import time

DEFAULT_TIMEOUT = 30.0
CLIENT_TIMEOUT = 10.0


class ScriptError(Exception):
    """The peer did something the script did not expect."""


class _Close(Exception):
    pass


class Connection:
    """One accepted connection: what arrived, and how the script ended."""

    def __init__(self, sock, peer):
        self.sock = sock
        self.peer = peer
        self.cleartext = b""   # bytes received before TLS started (all, if never)
        self.tls_data = b""    # bytes received inside TLS (decrypted)
        self.in_tls = False    # the TLS handshake completed
        self.tls_error = None  # why the TLS handshake failed, if it did
        self.error = None      # why the script stopped early
        self.tag = b"*"        # the tag (first word) of the last line read
        self.closed = threading.Event()
        self._buf = b""
        self._tls_started = False

    @property
    def received(self):
        """Everything received, cleartext then decrypted TLS data."""
        return self.cleartext + self.tls_data

    def lines(self, tls_part=None):
        """Received lines (CRLF stripped); None = all, False = cleartext, True = TLS."""
        data = {None: self.received, False: self.cleartext, True: self.tls_data}[tls_part]
        return [line.rstrip(b"\r") for line in data.split(b"\n") if line]

    def verbs(self, tls_part=None, tagged=False):
        """The command word of every received line, upper-cased (after the tag
        when `tagged`, i.e. for IMAP)."""
        out = []
        for line in self.lines(tls_part):
            words = line.split(b" ")
            if tagged:
                words = words[1:]
            out.append(words[0].upper() if words else b"")
        return out

    def wait_closed(self, timeout=DEFAULT_TIMEOUT):
        if not self.closed.wait(timeout):
            raise AssertionError("fake backend connection did not end")
        return self

    # -- used by the steps --------------------------------------------------------

    def _record(self, data):
        if self._tls_started:
            self.tls_data += data
        else:
            self.cleartext += data

    def recv_some(self):
        """Reads once; b"" at EOF (a TLS EOF without close_notify counts)."""
        try:
            data = self.sock.recv(65536)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
            data = b""
        self._record(data)
        return data

    def read_line(self):
        while b"\n" not in self._buf:
            data = self.recv_some()
            if not data:
                raise ScriptError(f"EOF while waiting for a line (got {self._buf!r})")
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        self.tag = line.split(b" ", 1)[0].strip() or b"*"
        return line + b"\n"

    def start_tls(self, context):
        if self._buf:
            raise ScriptError(f"bytes before the TLS handshake: {self._buf!r}")
        self._tls_started = True
        try:
            self.sock = context.wrap_socket(self.sock, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.tls_error = e
            raise
        self.in_tls = True

    def drain(self):
        while self.recv_some():
            pass


# -- script steps -------------------------------------------------------------------

def send(data):
    """Sends `data` in one write (so a test controls what arrives together)."""
    def step(conn):
        conn.sock.sendall(data)
    step.__name__ = f"send({data!r})"
    return step


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


def tls(context):
    """TLS handshake as the server (implicit TLS, or after the go-ahead)."""
    def step(conn):
        conn.start_tls(context)
    step.__name__ = "tls"
    return step


def wait_event(event, timeout=DEFAULT_TIMEOUT):
    """Waits until the test sets `event` (to order the fake after the client)."""
    def step(conn):
        if not event.wait(timeout):
            raise ScriptError("the test never set the event")
    step.__name__ = "wait_event"
    return step


def hold():
    """Never answers; records everything until the peer closes."""
    def step(conn):
        conn.drain()
    step.__name__ = "hold"
    return step


def close():
    """Closes the connection now (the rest of the script is not played)."""
    def step(conn):
        raise _Close()
    step.__name__ = "close"
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

class FakeAccess:
    """Listens on 127.0.0.1:<ephemeral>; plays `script` on every connection."""

    def __init__(self, script, timeout=DEFAULT_TIMEOUT):
        self.script = list(script)
        self.timeout = timeout
        self.connections = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = False
        self._threads = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.2)  # lets the accept loop notice close()
        self.host, self.port = self._listener.getsockname()
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name=f"fakeaccess-{self.port}")
        self._acceptor.start()

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _accept_loop(self):
        while not self._stopping:
            try:
                sock, peer = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(self.timeout)
            conn = Connection(sock, peer)
            t = threading.Thread(target=self._play, args=(conn,), daemon=True,
                                 name=f"fakeaccess-{self.port}-{len(self.connections)}")
            with self._changed:
                self.connections.append(conn)
                self._threads.append(t)
                self._changed.notify_all()
            t.start()

    def _play(self, conn):
        try:
            for step in self.script:
                step(conn)
            conn.drain()
        except _Close:
            pass
        except Exception as e:  # recorded for the test to inspect
            if conn.error is None:
                conn.error = e
            try:
                conn.drain()  # keep recording what else arrives
            except Exception:
                pass
        finally:
            try:
                conn.sock.close()
            except OSError:
                pass
            conn.closed.set()
            with self._changed:
                self._changed.notify_all()

    def wait_connection(self, index=0, timeout=DEFAULT_TIMEOUT):
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.connections) <= index:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fake backend {self.address}: no connection #{index} "
                                         f"(got {len(self.connections)})")
                self._changed.wait(left)
            return self.connections[index]

    @property
    def count(self):
        with self._lock:
            return len(self.connections)

    def close(self):
        self._stopping = True
        try:
            self._listener.close()
        except OSError:
            pass
        self._acceptor.join(timeout=5)
        for conn in list(self.connections):
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in list(self._threads):
            t.join(timeout=5)


def server_context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


# -- client side ----------------------------------------------------------------------

def connect(port, host="127.0.0.1", timeout=CLIENT_TIMEOUT):
    """A raw TCP connection with every operation bounded by `timeout`."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_line(sock, limit=65536):
    """One line (through LF), byte-exactly; what came before EOF if the peer closed."""
    line = b""
    while not line.endswith(b"\n") and len(line) < limit:
        try:
            c = sock.recv(1)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
            c = b""
        if not c:
            return line
        line += c
    return line


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


def recv_until_closed(sock):
    """Every byte until EOF or reset; a timeout is a failure (the peer should close)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
            return data
        except socket.timeout:
            raise AssertionError(f"peer did not close the connection (got {data!r})")
        if not chunk:
            return data
        data += chunk


def client_hello(server_name):
    """The bytes of a real TLS ClientHello for `server_name` (Python's ssl)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def client_context(ca):
    """A strict TLS client context trusting the test CA."""
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


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
