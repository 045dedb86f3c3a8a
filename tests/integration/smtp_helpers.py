"""Helpers for the SMTP integration tests (test_smtp_modes.py, test_smtp_routing.py).

- `Way`, `WAYS`: the four listener ways (implicit|starttls x terminate|passthrough).
- config builders: `global_section`, `certificate_section`, `listener_section`,
  `mailbox_section`, `backend_section`, `route_section`.
- `issue(ca, *sans)`: certificates from the session CA, cached, under file names
  no other test module uses (re-issuing a name would overwrite files that a
  running server still reads).
- messages: `make_message`, `body_part`, `sha256`, `standard_body`,
  `eightbit_body`, `dot_body`, `large_body`.
- clients: `send(client, ...)` with client in `CLIENTS` (smtplib, curl, swaks,
  openssl), and `smtplib_session()` for tests that look at the TLS session.
- stores: `maildir_messages`, `wait_maildir`, `assert_mailbox_stored`,
  `wait_postfix`, `assert_postfix_stored`.
- logs: `session_lines`, `wait_session_line`, `log_fields`.
"""
import base64
import hashlib
import os
import re
import select
import shlex
import socket
import smtplib
import ssl
import subprocess
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import wait_for

CLIENT_TIMEOUT = 60
EHLO_NAME = "client.test"
SENDER = "alice@sender.test"
USER = "alice"
PASSWORD = "s3cret-Passw0rd"


# ---- the four ways -------------------------------------------------------------

@dataclass(frozen=True)
class Way:
    tls: str   # "implicit" | "starttls"
    mode: str  # "terminate" | "passthrough"

    @property
    def service(self):
        """The listener's service word (also its section name)."""
        return "submissions" if self.tls == "implicit" else "submission"

    @property
    def id(self):
        return f"{self.tls}-{self.mode}"

    @property
    def passthrough(self):
        return self.mode == "passthrough"

    def __str__(self):
        return self.id


WAYS = [Way("implicit", "terminate"), Way("implicit", "passthrough"),
        Way("starttls", "terminate"), Way("starttls", "passthrough")]
WAY_IDS = [w.id for w in WAYS]
IMPLICIT_TERMINATE, IMPLICIT_PASSTHROUGH, STARTTLS_TERMINATE, STARTTLS_PASSTHROUGH = WAYS


# ---- config ----------------------------------------------------------------------

def global_section(log_level="debug"):
    return f"[global]\nlog_level = {log_level}\n\n"


def certificate_section(name, cert, key, default=False):
    text = f"[certificate {name}]\ncert = {cert}\nkey = {key}\n"
    if default:
        text += "default = yes\n"
    return text + "\n"


def listener_section(way, port, hostname="gw.test"):
    return (f"[listener {way.service}]\naddress = 127.0.0.1:{port}\nmode = {way.mode}\n"
            f"hostname = {hostname}\n\n")


def mailbox_section(name, port, maildir, tls="plain", cert=None, key=None, users=None,
                    hostname=None):
    text = f"[mailbox {name}]\naddress = 127.0.0.1:{port}\nmaildir = {maildir}\ntls = {tls}\n"
    if tls != "plain":
        text += f"cert = {cert}\nkey = {key}\n"
    if users:
        text += f"users = {users}\n"
    text += f"hostname = {hostname or name + '.test'}\n"
    return text + "\n"


def backend_section(name, endpoints, ca=None, tls_name=None):
    """endpoints: {"submissions": "127.0.0.1:P implicit", "submission": ...}."""
    text = f"[backend {name}]\n"
    for service, value in endpoints.items():
        text += f"{service} = {value}\n"
    if ca:
        text += f"ca = {ca}\n"
    if tls_name:
        text += f"tls_name = {tls_name}\n"
    return text + "\n"


def route_section(name, sni, backend):
    return f"[route {name}]\nsni = {sni}\nbackend = {backend}\n\n"


def mailbox_tls_for(way):
    """The TLS flavour a mailbox must have to be this way's backend: plain for
    terminate, the listener's own flavour for passthrough."""
    return way.tls if way.passthrough else "plain"


_issued = {}


def issue(ca, *sans):
    """(cert, key) for the DNS names `sans`, issued once per CA and test session."""
    key = (str(ca.dir), sans)
    if key not in _issued:
        tag = "smtpt-" + "-".join(s.replace("*", "wildcard") for s in sans)
        _issued[key] = ca.issue(tag, list(sans))
    return _issued[key]


def users_file(directory: Path, user=USER, password=PASSWORD):
    """A mailbox users file with one user:crypt-hash line."""
    hashed = subprocess.run(["openssl", "passwd", "-6", password], check=True,
                            capture_output=True, text=True).stdout.strip()
    path = Path(directory) / "users"
    path.write_text(f"{user}:{hashed}\n")
    return path


# ---- messages --------------------------------------------------------------------

def marker():
    return uuid.uuid4().hex


def make_message(mark, body: bytes, rcpt, sender=SENDER, extra_headers=()) -> bytes:
    """A message with CRLF line endings whose headers carry `mark`."""
    headers = [f"From: <{sender}>", f"To: <{rcpt}>", f"Subject: sallyport test {mark}",
               f"Message-ID: <{mark}@sender.test>", "Date: Mon, 01 Jan 2024 00:00:00 +0000",
               *extra_headers]
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


def body_part(message: bytes) -> bytes:
    """Everything after the first empty line of a CRLF message."""
    sep = message.find(b"\r\n\r\n")
    assert sep >= 0, "message has no header/body separator"
    return message[sep + 4:]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def standard_body(mark) -> bytes:
    """A small body with the lines that dot-stuffing has to get right. Free of
    backslashes and %...% (swaks expands them) and of a final "." line."""
    lines = [f"Hello through sallyport, {mark}.",
             ".",
             ".leading dot",
             "..two leading dots",
             "...",
             "line with trailing spaces   ",
             "",
             "tab\there",
             "last line"]
    return ("\r\n".join(lines) + "\r\n").encode()


def eightbit_body(mark) -> bytes:
    """Every byte 0x80-0xff, in lines, plus some UTF-8 and Latin-1 text."""
    high = bytes(range(0x80, 0x100))
    lines = [f"8-bit test {mark}".encode(),
             high[:64], high[64:], high[::-1],
             "Grüße, naïve café, 日本語, emoji \U0001F4E8".encode("utf-8"),
             "Latin-1: Gr\xfc\xdfe".encode("latin-1"),
             b"." + high[:16],
             b"end"]
    return b"\r\n".join(lines) + b"\r\n"


def dot_body(mark) -> bytes:
    """Edge cases of dot-stuffing: a "." line first, dots everywhere, lines that
    look like commands or like the end of data."""
    lines = [".",
             f"dot test {mark}",
             ".",
             "..",
             ". ",
             ".\t.",
             "x.",
             "." * 200,
             ".QUIT",
             ".RSET",
             "",
             ".",
             "the end"]
    return ("\r\n".join(lines) + "\r\n").encode()


def large_body(size=20 * 1024 * 1024, seed=b"sallyport") -> bytes:
    """About `size` bytes of deterministic pseudo-random base64 lines (76
    characters, within the 998 limit), with a "."-line every 1000 lines."""
    out = []
    total = 0
    block = hashlib.sha256(seed).digest()
    i = 0
    while total < size:
        chunk = b""
        for _ in range(19):   # 19 * 32 = 608 bytes -> 811 base64 chars = 10+ lines
            block = hashlib.sha256(block).digest()
            chunk += block
        enc = base64.b64encode(chunk)
        for j in range(0, len(enc), 76):
            line = enc[j:j + 76]
            if i % 1000 == 0:
                line = b"." + line
            out.append(line)
            total += len(line) + 2
            i += 1
    return b"\r\n".join(out) + b"\r\n"


# ---- stores ----------------------------------------------------------------------

def maildir_messages(maildir) -> list:
    """Raw bytes of the files in maildir/new, oldest first."""
    new = Path(maildir) / "new"
    if not new.is_dir():
        return []
    files = sorted(new.iterdir(), key=lambda f: (f.stat().st_mtime_ns, f.name))
    return [f.read_bytes() for f in files]


def wait_maildir(maildir, count=1, timeout=30):
    """Waits until maildir/new holds at least `count` messages; returns them."""
    wait_for(lambda: len(maildir_messages(maildir)) >= count, timeout,
             what=f"{count} message(s) in {maildir}/new")
    return maildir_messages(maildir)


def assert_mailbox_stored(stored: bytes, sent: bytes, sender=SENDER):
    """The embedded mailbox stores Return-Path: and Received: in front of the
    message exactly as sent (CRLF kept, dot-stuffing undone)."""
    assert stored.startswith(b"Return-Path: <" + sender.encode() + b">\r\n"), stored[:300]
    assert b"\r\nReceived: " in stored[:4096], stored[:600]
    assert sha256(body_part(stored)) == sha256(body_part(sent)), (
        f"body differs: stored {len(body_part(stored))} bytes, sent {len(body_part(sent))}")
    assert stored.endswith(sent), "stored message is not the sent message plus trace headers"


def wait_postfix(pf, rcpt, mark, timeout=30):
    """Waits for the one message to `rcpt` (an address of its own: see
    Postfix.new_address) in its domain's Maildir; checks it carries `mark`."""
    msgs = pf.wait_for_message(rcpt, timeout=timeout)
    assert len(msgs) == 1, f"{len(msgs)} messages for {rcpt}"
    assert mark.encode() in _lf_headers(msgs[0]), msgs[0][:1000]
    return msgs[0]


def _lf_headers(message: bytes) -> bytes:
    sep = message.find(b"\n\n")
    return message if sep < 0 else message[:sep + 1]


def assert_postfix_stored(stored: bytes, sent: bytes):
    """Postfix stores LF line endings: compare the body with the sent body's
    CRLF turned into LF."""
    sep = stored.find(b"\n\n")
    assert sep >= 0
    got = stored[sep + 2:]
    want = body_part(sent).replace(b"\r\n", b"\n")
    assert sha256(got) == sha256(want), (
        f"body differs: stored {len(got)} bytes, expected {len(want)}")


# ---- logs ------------------------------------------------------------------------

def session_lines(log_text):
    return [l for l in log_text.splitlines() if " listener=" in l and " close=" in l]


def wait_session_line(sp, *needles, timeout=20):
    """Waits for the per-connection log line that contains every needle."""
    def find():
        for line in session_lines(sp.log()):
            if all(n in line for n in needles):
                return line
        return None
    return wait_for(find, timeout, what=f"session log line with {needles} in {sp.log_path}")


_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def log_fields(line):
    """key=value pairs of a log line; quoted values are unquoted."""
    fields = {}
    for k, v in _FIELD.findall(line):
        if v.startswith('"'):
            v = v[1:-1]
        fields.setdefault(k, v)
    return fields


# ---- clients ---------------------------------------------------------------------

# Where a client of the Loopback* classes connects from, when a backend's log
# must tell the client from sallyport (which connects from 127.0.0.1).
SECOND_ADDRESS = "127.0.0.2"


def loopback_connection(port, timeout, source=None):
    """A TCP connection to 127.0.0.1:port, from `source` when given."""
    return socket.create_connection(("127.0.0.1", port), timeout,
                                    source_address=(source, 0) if source else None)


class LoopbackSMTP(smtplib.SMTP):
    """smtplib.SMTP that connects to 127.0.0.1 whatever the host name, which
    is kept for STARTTLS's server_hostname (SNI and certificate check)."""

    source = None  # or SECOND_ADDRESS

    def _get_socket(self, host, port, timeout):
        return loopback_connection(port, timeout, self.source)


class LoopbackSMTP_SSL(smtplib.SMTP_SSL):
    """smtplib.SMTP_SSL to 127.0.0.1 with SNI = the host name given (or none)."""

    sni = "unset"
    source = None

    def _get_socket(self, host, port, timeout):
        raw = loopback_connection(port, timeout, self.source)
        name = self._host if self.sni == "unset" else self.sni
        return self.context.wrap_socket(raw, server_hostname=name)


class SMTPFromSecondAddress(LoopbackSMTP):
    source = SECOND_ADDRESS


class SMTPSSLFromSecondAddress(LoopbackSMTP_SSL):
    source = SECOND_ADDRESS


def client_context(cafile, check_hostname=True):
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = check_hostname
    return ctx


@contextmanager
def smtplib_session(tls, port, sni, cafile, auth=None, no_sni=False):
    """An EHLO'd (and logged-in) smtplib session through TLS to 127.0.0.1:port.
    With no_sni, the client sends no server name and checks only the chain."""
    ctx = client_context(cafile, check_hostname=not no_sni)
    if tls == "implicit":
        cls = type("S", (LoopbackSMTP_SSL,), {"sni": None} if no_sni else {})
        s = cls(sni or "127.0.0.1", port, local_hostname=EHLO_NAME, context=ctx,
                timeout=CLIENT_TIMEOUT)
    else:
        s = LoopbackSMTP(sni or "127.0.0.1", port, local_hostname=EHLO_NAME,
                         timeout=CLIENT_TIMEOUT)
        s.ehlo()
        assert s.has_extn("starttls"), s.esmtp_features
        if no_sni:
            s._host = None
        s.starttls(context=ctx)
    try:
        s.ehlo()
        if auth:
            s.login(*auth)
        yield s
        s.quit()
    finally:
        s.close()


def send_smtplib(way, port, sni, cafile, rcpts, message, auth=None, mail_options=(), **_):
    with smtplib_session(way.tls, port, sni, cafile, auth) as s:
        refused = s.sendmail(SENDER, rcpts, message, mail_options=list(mail_options))
        assert not refused, refused


def send_curl(way, port, sni, cafile, rcpts, message, auth=None, tmp=None, **_):
    msgfile = Path(tmp) / f"curl-{uuid.uuid4().hex}.eml"
    msgfile.write_bytes(message)
    scheme = "smtps" if way.tls == "implicit" else "smtp"
    argv = ["curl", "-sS", "--max-time", str(CLIENT_TIMEOUT),
            f"{scheme}://{sni}:{port}/{EHLO_NAME}",
            "--resolve", f"{sni}:{port}:127.0.0.1", "--cacert", str(cafile),
            "--mail-from", SENDER, "--upload-file", str(msgfile)]
    if way.tls == "starttls":
        argv.append("--ssl-reqd")
    for r in rcpts:
        argv += ["--mail-rcpt", r]
    if auth:
        argv += ["--user", f"{auth[0]}:{auth[1]}"]
    _run(argv)


def send_swaks(way, port, sni, cafile, rcpts, message, auth=None, tmp=None, **_):
    msgfile = Path(tmp) / f"swaks-{uuid.uuid4().hex}.eml"
    # swaks sends its data followed by "\r\n.\r\n": leave off the last CRLF.
    assert message.endswith(b"\r\n")
    msgfile.write_bytes(message[:-2])
    argv = ["swaks", "--server", "127.0.0.1", "--port", str(port),
            "--tlsc" if way.tls == "implicit" else "--tls",
            "--tls-sni", sni, "--tls-verify", "--tls-ca-path", str(cafile),
            "--ehlo", EHLO_NAME, "--from", SENDER, "--to", ",".join(rcpts),
            "--data", f"@{msgfile}", "--timeout", str(CLIENT_TIMEOUT)]
    if auth:
        argv += ["--auth", "PLAIN", "--auth-user", auth[0], "--auth-password", auth[1]]
    _run(argv)


def _run(argv):
    r = subprocess.run(argv, capture_output=True, timeout=CLIENT_TIMEOUT + 10)
    assert r.returncode == 0, (
        f"{shlex.join(argv)} exited with {r.returncode}\n--- stdout ---\n"
        f"{r.stdout.decode(errors='replace')[-3000:]}\n--- stderr ---\n"
        f"{r.stderr.decode(errors='replace')[-3000:]}")
    return r


class OpenSSLDialogue:
    """`openssl s_client` driven line by line: send a command, read the reply."""

    def __init__(self, tls, port, sni, cafile, tmp, no_sni=False):
        argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                "-CAfile", str(cafile), "-verify_return_error", "-quiet", "-ign_eof"]
        if no_sni:
            argv.append("-noservername")
        else:
            argv += ["-servername", sni, "-verify_hostname", sni]
        if tls == "starttls":
            argv += ["-starttls", "smtp", "-name", EHLO_NAME]
        self.argv = argv
        self.stderr_path = Path(tmp) / f"s_client-{uuid.uuid4().hex}.err"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr)
        self.buf = b""
        self.transcript = []

    def stderr(self):
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def _fail(self, what):
        self.close()
        raise AssertionError(f"{shlex.join(self.argv)}: {what}\n--- transcript ---\n"
                             + "\n".join(self.transcript[-40:])
                             + f"\n--- stderr ---\n{self.stderr()[-3000:]}")

    def _readline(self, deadline):
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail("timed out waiting for a reply")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self._fail(f"connection closed, partial line {self.buf!r}")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r")

    def reply(self, expect):
        """Reads one (multi-line) reply; fails unless its code is `expect`."""
        deadline = time.monotonic() + CLIENT_TIMEOUT
        lines = []
        while True:
            line = self._readline(deadline)
            lines.append(line)
            self.transcript.append("S: " + line.decode(errors="replace"))
            if len(line) < 4 or line[3:4] != b"-":
                break
        code = int(lines[-1][:3]) if lines[-1][:3].isdigit() else -1
        if code != expect:
            self._fail(f"expected {expect}, got {lines!r}")
        return lines

    def send(self, data: bytes, show=None):
        self.transcript.append("C: " + (show or data.decode(errors="replace").rstrip()))
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            self._fail("s_client went away")

    def command(self, line, expect):
        self.send(line.encode() + b"\r\n")
        return self.reply(expect)

    def finish(self):
        """Closes stdin after QUIT; returns s_client's exit code."""
        self.proc.stdin.close()
        try:
            rc = self.proc.wait(timeout=CLIENT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._fail("s_client did not exit after QUIT")
        self._stderr.close()
        return rc

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self._stderr.closed:
            self._stderr.close()


def dot_stuff(data: bytes) -> bytes:
    """RFC 5321 4.5.2: a "." at the start of a line is doubled."""
    stuffed = re.sub(rb"(?m)^\.", b"..", data)
    return stuffed


def send_openssl(way, port, sni, cafile, rcpts, message, auth=None, mail_options=(),
                 tmp=None, no_sni=False, **_):
    d = OpenSSLDialogue(way.tls, port, sni, cafile, tmp, no_sni=no_sni or sni is None)
    try:
        if way.tls == "implicit":
            d.reply(220)
        d.command(f"EHLO {EHLO_NAME}", 250)
        if auth:
            token = base64.b64encode(f"\0{auth[0]}\0{auth[1]}".encode()).decode()
            d.command(f"AUTH PLAIN {token}", 235)
        params = "".join(" " + o for o in mail_options)
        d.command(f"MAIL FROM:<{SENDER}>{params}", 250)
        for r in rcpts:
            d.command(f"RCPT TO:<{r}>", 250)
        d.command("DATA", 354)
        assert message.endswith(b"\r\n")
        d.send(dot_stuff(message) + b".\r\n", show=f"<{len(message)} bytes of message>\r\n.")
        d.reply(250)
        d.command("QUIT", 221)
        rc = d.finish()
        assert rc == 0, f"s_client exited with {rc}: {d.stderr()[-2000:]}"
        return d
    finally:
        d.close()


CLIENTS = {"smtplib": send_smtplib, "curl": send_curl, "swaks": send_swaks,
           "openssl": send_openssl}


def send(client, way, port, sni, cafile, rcpts, message, auth=None, mail_options=(), tmp=None):
    """Sends `message` with the named client through the listener of `way` on
    127.0.0.1:port, asking for `sni` and verifying the server against cafile."""
    return CLIENTS[client](way, port, sni, cafile, list(rcpts), message, auth=auth,
                           mail_options=mail_options, tmp=tmp)
