"""A scripted fake SMTP backend, and small raw-socket helpers for the tests.

`FakeBackend` listens on 127.0.0.1 on an ephemeral port. Every connection it
accepts plays the same script in its own thread, and everything the peer (that
is, sallyport) sent is recorded, so a test can assert what reached the
backend, and in which form (cleartext or inside TLS):

    backend = FakeBackend([
        send(b"220 fake ESMTP\\r\\n"),
        recv_line(),                              # EHLO
        send(b"250-fake\\r\\n250 STARTTLS\\r\\n"),
        recv_line(),                              # STARTTLS
        send(b"220 go ahead\\r\\n"),
        tls(server_context),                      # handshake as the server
        smtp_server(),                            # answer commands until QUIT
    ])
    ...
    conn = backend.wait_connection()              # the first connection
    conn.wait_closed()
    assert b"MAIL" not in conn.cleartext

Steps (functions below): send, recv_line, recv_proxy_header, tls, tls_records_together,
smtp_server, hold, close.
A script that runs out of steps reads and records until the peer closes
(`hold`), so "what else arrived" is always known.

Every socket operation is bounded (`timeout`); `close()` (or the context
manager) stops the listener and every connection thread.

The client side of the tests lives here too: `connect` (a bounded raw
socket), `read_line` / `read_reply` (byte-exact, never reading past the
reply), `recv_until_closed`, `client_hello` (the bytes of a real ClientHello),
`cleartext_to_go_ahead` (a STARTTLS listener up to "220 Ready"), and
`Gateway` (a running sallyport, its listener port and its fake backend).
"""
import socket
import ssl
import threading
import time

DEFAULT_TIMEOUT = 30.0


class ScriptError(Exception):
    """The peer did something the script did not expect."""


class Connection:
    """One accepted connection: what arrived, and how the script ended."""

    def __init__(self, sock, peer):
        self.sock = sock
        self.peer = peer
        self.cleartext = b""   # bytes received before TLS started (all, if never)
        self.tls_data = b""    # bytes received inside TLS (decrypted)
        self.in_tls = False    # the TLS handshake completed
        self.tls_error = None  # why the TLS handshake failed, if it did
        self.error = None      # why the script stopped early (ScriptError, OSError, ...)
        self.tag = b"*"        # the tag (first word) of the last line read (IMAP)
        self.proxy_header = None  # what recv_proxy_header() read
        self.closed = threading.Event()
        self._buf = b""        # received, not yet consumed by a step
        self._tls_started = False  # bytes now go to tls_data

    # -- what the tests read --------------------------------------------------

    @property
    def received(self):
        """Everything received, cleartext then decrypted TLS data."""
        return self.cleartext + self.tls_data

    def lines(self, tls_part=None):
        """Received lines (CRLF stripped); tls_part None = all, False = cleartext, True = TLS."""
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
        """Waits until the script finished and the socket is closed."""
        if not self.closed.wait(timeout):
            raise AssertionError("fake backend connection did not end")
        return self

    # -- what the steps use ---------------------------------------------------

    def _record(self, data):
        if self._tls_started:
            self.tls_data += data
        else:
            self.cleartext += data

    def recv_some(self):
        """Reads once; returns b"" at EOF (a TLS EOF without close_notify counts)."""
        try:
            data = self.sock.recv(65536)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
            data = b""
        self._record(data)
        return data

    def read_line(self):
        """One line including its LF, or raises ScriptError at EOF."""
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
            # Bytes pipelined behind the STARTTLS command: the injection a
            # careful client never does. Keep them recorded, refuse to go on.
            raise ScriptError(f"bytes before the TLS handshake: {self._buf!r}")
        self._tls_started = True
        try:
            self.sock = context.wrap_socket(self.sock, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.tls_error = e
            raise
        self.in_tls = True

    def drain(self):
        """Reads and records until the peer closes."""
        while self.recv_some():
            pass


# -- script steps -------------------------------------------------------------

def send(data):
    """Sends `data` in one write (so a test controls what arrives together)."""
    def step(conn):
        conn.sock.sendall(data)
    step.__name__ = f"send({data!r})"
    return step


def recv_proxy_header():
    """Reads a PROXY header (a v1 line, or a v2 header by its length) into
    conn.proxy_header, so that a test can check it byte by byte. Reads
    exactly the header, never a byte of what follows (a ClientHello that a
    later tls() step must see). The first step of a script."""
    def exact(conn, n):
        data = b""
        while len(data) < n:
            chunk = conn.sock.recv(n - len(data))
            if not chunk:
                raise ScriptError(f"EOF inside the PROXY header (got {data!r})")
            data += chunk
        return data

    def step(conn):
        header = exact(conn, 1)
        if header == b"P":
            while not header.endswith(b"\n") and len(header) < 107:
                header += exact(conn, 1)
        else:
            header += exact(conn, 15)
            header += exact(conn, int.from_bytes(header[14:16], "big"))
        conn.proxy_header = header
    step.__name__ = "recv_proxy_header"
    return step


def recv_line(expect=None):
    """Reads one line; with `expect`, the line (case-insensitively) must start with it."""
    def step(conn):
        line = conn.read_line()
        if expect is not None and not line.upper().startswith(expect.upper()):
            raise ScriptError(f"expected {expect!r}, got {line!r}")
    step.__name__ = f"recv_line({expect!r})"
    return step


def tls(context):
    """TLS handshake as the server (implicit TLS first step, or after a go-ahead)."""
    def step(conn):
        conn.start_tls(context)
    step.__name__ = "tls"
    return step


def tls_records_together(context, *chunks):
    """TLS handshake as the server, then each chunk as a TLS record of its
    own, all in one write: several records that arrive together, as a
    peer's kernel may deliver them. Done through memory BIOs over the raw
    socket, so that the grouping is exact. Then records raw bytes until the
    peer closes."""
    def step(conn):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = context.wrap_bio(incoming, outgoing, server_side=True)
        conn._tls_started = True
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    conn.sock.sendall(outgoing.read())
                data = conn.sock.recv(65536)
                if not data:
                    raise ScriptError("EOF during the TLS handshake")
                incoming.write(data)
        conn.in_tls = True
        for chunk in chunks:
            obj.write(chunk)
        conn.sock.sendall(outgoing.read())
        conn.drain()
    step.__name__ = f"tls_records_together({len(chunks)} records)"
    return step


def smtp_server(name=b"fake.backend.test", greet=False):
    """A minimal SMTP server: answers every command until QUIT or EOF.

    DATA is answered 354 and its text read up to the lone "." line; QUIT is
    answered 221 and the connection closed. With
    greet=True a 220 greeting is sent first. EHLO lists neither STARTTLS nor
    AUTH, so nothing upstream can be tempted to negotiate anything."""
    def step(conn):
        if greet:
            conn.sock.sendall(b"220 " + name + b" ESMTP fake\r\n")
        while True:
            try:
                line = conn.read_line()
            except ScriptError:
                return  # the peer closed: a fine way to end
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb in (b"EHLO", b"LHLO"):
                conn.sock.sendall(b"250-" + name + b"\r\n250-8BITMIME\r\n250 SIZE 10240000\r\n")
            elif verb == b"DATA":
                conn.sock.sendall(b"354 go ahead\r\n")
                while conn.read_line() not in (b".\r\n", b".\n"):
                    pass
                conn.sock.sendall(b"250 2.0.0 queued as FAKE\r\n")
            elif verb == b"QUIT":
                conn.sock.sendall(b"221 2.0.0 bye\r\n")
                raise _Close()
            else:
                conn.sock.sendall(b"250 2.0.0 OK\r\n")
    step.__name__ = "smtp_server"
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


class _Close(Exception):
    pass


# -- the server ---------------------------------------------------------------

class FakeBackend:
    """Listens on 127.0.0.1:<ephemeral> (or host, port); plays `script` on
    every connection.

    Subclasses may set `name` (for thread names) and `drain_after_error`
    (after a step fails, keep recording what arrives until the peer closes,
    instead of closing at once)."""

    name = "fakebackend"
    drain_after_error = False

    def __init__(self, script, timeout=DEFAULT_TIMEOUT, host="127.0.0.1", port=0):
        self.script = list(script)
        self.timeout = timeout
        self.connections = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = False
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(16)
        self._listener.settimeout(0.2)  # lets the accept loop notice close()
        self.host, self.port = self._listener.getsockname()[:2]
        self._threads = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name=f"{self.name}-{self.port}")
        self._acceptor.start()

    @property
    def address(self):
        """"127.0.0.1:PORT" (or "[::1]:PORT"), as a backend endpoint in a config."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

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
                                 name=f"{self.name}-{self.port}-{len(self.connections)}")
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
            if self.drain_after_error:
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
        """Waits for the index-th accepted connection and returns it."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.connections) <= index:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"fake backend {self.address}: no connection #{index} "
                        f"(got {len(self.connections)})")
                self._changed.wait(left)
            return self.connections[index]

    @property
    def count(self):
        with self._lock:
            return len(self.connections)

    def close(self):
        """Stops accepting and ends every connection thread."""
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
    """A TLS server context for a fake backend holding (cert, key)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


# -- client-side helpers for the tests ------------------------------------------

CLIENT_TIMEOUT = 10.0


def connect(port, host="127.0.0.1", timeout=CLIENT_TIMEOUT):
    """A raw TCP connection with every operation bounded by `timeout`."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_line(sock, limit=65536):
    """Reads one line (through LF) byte-exactly; b"" if the peer closed first.

    Reads one byte at a time so nothing after the line is consumed."""
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


def read_reply(sock):
    """Reads one SMTP reply (all its lines); returns the raw bytes."""
    reply = b""
    while True:
        line = read_line(sock)
        reply += line
        if not line.endswith(b"\n"):
            raise AssertionError(f"connection closed inside a reply: {reply!r}")
        if len(line) < 4 or line[3:4] != b"-":
            return reply


def recv_until_closed(sock):
    """Reads until EOF (or reset); returns every byte received.

    A timeout is a failure: the test expected the peer to close."""
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


# -- what sallyport says, and how a test drives it ------------------------------------

HOSTNAME = "gw.test"  # the listener hostname the tests configure
GREETING = b"220 gw.test ESMTP sallyport\r\n"
MUST_STARTTLS = b"530 5.7.0 Must issue a STARTTLS command first\r\n"
GO_AHEAD = b"220 2.0.0 Ready to start TLS\r\n"


class Gateway:
    """One running sallyport (`sp`, from the conftest factory) with one
    listener on `port` of `service` in `mode`, in front of FakeBackend `fb`
    (or None)."""

    def __init__(self, sp, port, fb, service, mode):
        self.sp, self.port, self.fb, self.service, self.mode = sp, port, fb, service, mode

    def session_lines(self):
        return [line for line in self.sp.log().splitlines() if "session listener=" in line]

    def wait_session_line(self):
        """Waits for the one log line of a finished session and returns the last one."""
        self.sp.wait_log("session listener=")
        return self.session_lines()[-1]


def assert_alive(gw):
    assert gw.sp.proc.poll() is None, f"sallyport died:\n{gw.sp.log()}"


def client_context(ca):
    """A strict TLS client context trusting the test CA."""
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def alpn_context(ca, protocols, selected):
    """client_context() offering the ALPN `protocols`; appends each
    handshake's selected ALPN protocol (or None) to `selected`."""
    class Recording(ssl.SSLSocket):
        def do_handshake(self, *args, **kwargs):
            super().do_handshake(*args, **kwargs)
            selected.append(self.selected_alpn_protocol())

    ctx = client_context(ca)
    ctx.set_alpn_protocols(protocols)
    ctx.sslsocket_class = Recording
    return ctx


def cleartext_to_go_ahead(sock):
    """Greeting, EHLO, STARTTLS, "220 Ready" on a STARTTLS listener: up to
    where the client's TLS handshake must start."""
    assert read_line(sock) == GREETING
    sock.sendall(b"EHLO client.test\r\n")
    assert read_reply(sock).startswith(b"250")
    sock.sendall(b"STARTTLS\r\n")
    assert read_reply(sock) == GO_AHEAD
