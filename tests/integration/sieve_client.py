"""A small ManageSieve (RFC 5804) client for the tests, over any connected socket.

    sock = socket.create_connection((host, port), timeout=10)
    c = SieveClient(sock)                  # reads the capability greeting
    assert "STARTTLS" in c.caps
    c.starttls(ctx, "imap.route1.test")    # wraps the socket; reads the new capabilities
    c.authenticate("alice", "secret")      # AUTHENTICATE "PLAIN"
    c.putscript("test", 'keep;\\r\\n')
    assert c.listscripts() == [("test", False)]
    c.logout()

`caps` maps capability names (upper case) to their value (None if the
capability has none): the greeting's, then those sent after STARTTLS (and
after AUTHENTICATE if the server re-sends them), or of the last
capabilities() call. Commands raise SieveError for NO and BYE (with
.status, .code and .text); the raw Response of the last command is in
`last`. (Debian 12 also packages a ManageSieve CLI client, sieve-connect
0.90; the tests do not use it.)
"""
import base64

MAX_LINE = 65536


class SieveError(Exception):
    """A NO or BYE response (or a protocol violation: status "PROTOCOL")."""

    def __init__(self, status, code, text, response=None):
        super().__init__(f"{status} ({code}) {text!r}" if code else f"{status} {text!r}")
        self.status, self.code, self.text, self.response = status, code, text, response


class Response:
    """One server response: data `lines` (each a list of tokens: str for atoms,
    bytes for quoted strings and literals) and the final OK/NO/BYE line's
    status, response code (str or None) and human-readable text (str or None)."""

    def __init__(self, lines, status, code, text):
        self.lines, self.status, self.code, self.text = lines, status, code, text

    def __repr__(self):
        return f"<Response {self.status} {self.code!r} {self.text!r} {len(self.lines)} lines>"


def quote(s):
    """A ManageSieve quoted string (for short strings without CR/LF)."""
    if isinstance(s, bytes):
        s = s.decode()
    if "\r" in s or "\n" in s:
        raise ValueError("quoted strings cannot contain CR or LF; use a literal")
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(data):
    """A non-synchronizing literal {N+} followed by data (bytes or str)."""
    if isinstance(data, str):
        data = data.encode()
    return b"{%d+}\r\n" % len(data) + data


class SieveClient:
    def __init__(self, sock, read_greeting=True):
        self.sock = sock
        self._buf = b""
        self.caps = {}
        self.greeting = None
        self.last = None
        if read_greeting:
            self.greeting = self._expect_ok("greeting")
            self.caps = self._caps_of(self.greeting)

    # -- wire ---------------------------------------------------------------------

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise SieveError("PROTOCOL", None, "connection closed by server")
        self._buf += chunk

    def _read_line(self):
        while b"\r\n" not in self._buf:
            if len(self._buf) > MAX_LINE:
                raise SieveError("PROTOCOL", None, "line too long")
            self._fill()
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _read_exact(self, n):
        while len(self._buf) < n:
            self._fill()
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def _tokens(self):
        """Reads one logical response line (following literals) as tokens."""
        tokens = []
        line = self._read_line()
        i = 0
        while True:
            while i < len(line) and line[i:i + 1] == b" ":
                i += 1
            if i >= len(line):
                return tokens
            c = line[i:i + 1]
            if c == b'"':
                i += 1
                out = bytearray()
                while True:
                    if i >= len(line):
                        raise SieveError("PROTOCOL", None, f"unterminated string in {line!r}")
                    ch = line[i:i + 1]
                    if ch == b"\\":
                        out += line[i + 1:i + 2]
                        i += 2
                    elif ch == b'"':
                        i += 1
                        break
                    else:
                        out += ch
                        i += 1
                tokens.append(bytes(out))
            elif c == b"{":
                end = line.index(b"}", i)
                n = int(line[i + 1:end].rstrip(b"+"))
                if end + 1 != len(line):
                    raise SieveError("PROTOCOL", None, f"literal not at end of line: {line!r}")
                tokens.append(self._read_exact(n))
                line, i = self._read_line(), 0
            elif c == b"(":
                end = line.index(b")", i)
                tokens.append(("CODE", line[i + 1:end].decode()))
                i = end + 1
            else:
                j = i
                while j < len(line) and line[j:j + 1] not in b' "({':
                    j += 1
                tokens.append(line[i:j].decode())
                i = j

    def _response(self):
        lines = []
        while True:
            tokens = self._tokens()
            if tokens and isinstance(tokens[0], str) and tokens[0].upper() in ("OK", "NO", "BYE"):
                status = tokens[0].upper()
                code = text = None
                for t in tokens[1:]:
                    if isinstance(t, tuple):
                        code = t[1]
                    elif isinstance(t, bytes):
                        text = t.decode(errors="replace")
                self.last = Response(lines, status, code, text)
                return self.last
            lines.append(tokens)

    def _expect_ok(self, what):
        r = self._response()
        if r.status != "OK":
            raise SieveError(r.status, r.code, r.text or f"{what} failed", r)
        return r

    def send(self, data):
        """Sends raw bytes (a command must end with CRLF)."""
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def command(self, *parts):
        """Sends one command (parts joined with spaces; bytes are sent as they
        are, str as they are too: quote() and literal() build arguments) and
        returns its Response, raising SieveError for NO/BYE."""
        line = b" ".join(p if isinstance(p, bytes) else p.encode() for p in parts) + b"\r\n"
        self.send(line)
        return self._expect_ok(parts[0] if isinstance(parts[0], str) else parts[0].decode())

    @staticmethod
    def _caps_of(response):
        caps = {}
        for tokens in response.lines:
            if not tokens:
                continue
            name = tokens[0].decode() if isinstance(tokens[0], bytes) else tokens[0]
            value = tokens[1] if len(tokens) > 1 else None
            caps[name.upper()] = value.decode() if isinstance(value, bytes) else value
        return caps

    # -- commands -----------------------------------------------------------------

    def capabilities(self):
        """Sends CAPABILITY; returns (and keeps in .caps) the capability dict."""
        self.caps = self._caps_of(self.command("CAPABILITY"))
        return self.caps

    def starttls(self, context, server_hostname=None):
        """STARTTLS, TLS handshake on the socket, then reads the capabilities the
        server must send after TLS (RFC 5804 2.2). Returns them."""
        self.command("STARTTLS")
        if self._buf:
            raise SieveError("PROTOCOL", None, f"data after STARTTLS OK: {self._buf!r}")
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        self.caps = self._caps_of(self._expect_ok("capabilities after STARTTLS"))
        return self.caps

    def authenticate(self, user, password, authzid=""):
        """AUTHENTICATE "PLAIN" with an initial response. A server that re-sends
        capabilities after authentication updates .caps."""
        token = base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()
        r = self.command("AUTHENTICATE", quote("PLAIN"), quote(token))
        if r.lines:
            self.caps = self._caps_of(r)
        return r

    def putscript(self, name, text):
        """PUTSCRIPT name {N+} text."""
        return self.command("PUTSCRIPT", quote(name), literal(text))

    def checkscript(self, text):
        return self.command("CHECKSCRIPT", literal(text))

    def listscripts(self):
        """[(name, active), ...] in the server's order."""
        r = self.command("LISTSCRIPTS")
        out = []
        for tokens in r.lines:
            if tokens:
                active = len(tokens) > 1 and str(tokens[1]).upper() == "ACTIVE"
                out.append((tokens[0].decode(), active))
        return out

    def getscript(self, name):
        """The script's text (str)."""
        r = self.command("GETSCRIPT", quote(name))
        return r.lines[0][0].decode() if r.lines and r.lines[0] else ""

    def setactive(self, name):
        """SETACTIVE name ("" deactivates)."""
        return self.command("SETACTIVE", quote(name))

    def deletescript(self, name):
        return self.command("DELETESCRIPT", quote(name))

    def havespace(self, name, size):
        return self.command("HAVESPACE", quote(name), str(size))

    def noop(self, tag=None):
        return self.command("NOOP", quote(tag)) if tag else self.command("NOOP")

    def logout(self):
        """LOGOUT; closes the socket."""
        try:
            return self.command("LOGOUT")
        finally:
            self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
