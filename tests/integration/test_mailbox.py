"""The embedded mailbox, driven through the real sallyport binary with real
SMTP clients (smtplib, swaks, curl) and raw sockets for what clients never
send on purpose (smuggling, injection, overlong lines, heavy pipelining).

Every stored message starts with our two trace header lines (Return-Path and
Received); the bytes after them must be exactly what the client sent (after
dot-unstuffing)."""
import base64
import hashlib
import os
import re
import smtplib
import socket
import ssl
import subprocess
import threading
import time

import pytest

from conftest import free_port, wait_for

HOST = "mx.test"
SENDER = "alice@sender.example"
RCPT = "bob@mx.test"


# ---- helpers ----------------------------------------------------------------

class Mailbox:
    """A sallyport process running one [mailbox] section."""

    def __init__(self, sp, port, maildir):
        self.sp, self.port, self.maildir = sp, port, maildir

    def new(self):
        return sorted((self.maildir / "new").iterdir())

    def tmp(self):
        return sorted((self.maildir / "tmp").iterdir())

    def smtp(self, **kw):
        return smtplib.SMTP("127.0.0.1", self.port, timeout=30, **kw)


def start_mailbox(sallyport, tmp_path, mailbox_extra="", global_extra=""):
    port = free_port()
    maildir = tmp_path / "Maildir"
    config = (f"[global]\n{global_extra}\n"
              f"[mailbox test]\naddress = 127.0.0.1:{port}\nmaildir = {maildir}\n"
              f"hostname = {HOST}\n{mailbox_extra}\n")
    sp = sallyport(config)
    assert (maildir / "new").is_dir() and (maildir / "tmp").is_dir() and (maildir / "cur").is_dir()
    return Mailbox(sp, port, maildir)


def split_trace(content):
    """Returns the message bytes after our Return-Path and Received lines."""
    first, rest = content.split(b"\r\n", 1)
    second, message = rest.split(b"\r\n", 1)
    assert first.startswith(b"Return-Path: <"), first
    assert second.startswith(b"Received: from "), second
    assert b" by " + HOST.encode() + b" (sallyport mailbox) with " in second, second
    return first, second, message


def only_message(mb):
    files = mb.new()
    assert len(files) == 1, files
    assert mb.tmp() == []
    return files[0], files[0].read_bytes()


def sha(data):
    return hashlib.sha256(data).hexdigest()


class Raw:
    """A line-oriented SMTP client on a plain socket, for hand-made bytes."""

    def __init__(self, port, rcvbuf=None):
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(15)
        self.sock.connect(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        line = self.file.readline(4096)
        if not line.endswith(b"\r\n"):
            raise EOFError(line)
        return line[:-2]

    def reply(self):
        """One (possibly multi-line) reply: (code, [lines])."""
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return int(lines[-1][:3]), lines

    def expect(self, code, text=b""):
        got, lines = self.reply()
        assert got == code and text in lines[-1], lines
        return lines

    def until_eof(self):
        """Everything the server still sends until it closes."""
        return self.file.read()

    def starttls(self, context):
        """Starts TLS; the server has sent nothing after its "220"."""
        self.sock = context.wrap_socket(self.sock, server_hostname=HOST)
        self.file = self.sock.makefile("rb")

    def close(self):
        self.file.close()
        self.sock.close()


def raw_session(mb, rcvbuf=None):
    """A raw client that has been greeted and has said EHLO."""
    c = Raw(mb.port, rcvbuf)
    c.expect(220, f"{HOST} ESMTP sallyport mailbox".encode())
    c.send(b"EHLO client.example\r\n")
    c.expect(250)
    return c


def tls_mailbox(sallyport, tmp_path, ca, flavour, users=None):
    cert, key = ca.issue(HOST, [HOST, "127.0.0.1"])
    extra = f"tls = {flavour}\ncert = {cert}\nkey = {key}\n"
    if users:
        extra += f"users = {users}\n"
    return start_mailbox(sallyport, tmp_path, extra)


def client_context(ca):
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    return ctx


def make_users(tmp_path, name="alice", password="correct horse"):
    digest = subprocess.run(["openssl", "passwd", "-6", password], check=True,
                            capture_output=True, text=True).stdout.strip()
    assert digest.startswith("$6$")
    users = tmp_path / "users"
    users.write_text(f"# test users\n{name}:{digest}\n")
    return users


def session_log_line(mb, text):
    """The close line of a session that contains `text` (waits for it: the
    server logs it just after sending its last reply)."""
    def find():
        return [l for l in mb.sp.log().splitlines()
                if "mailbox test: client=" in l and " close=" in l and text in l]
    return wait_for(find, 10, what=f"session log line with {text!r}")[-1]


# ---- plain delivery -----------------------------------------------------------

MESSAGE = (b"From: Alice <alice@sender.example>\r\nTo: bob@mx.test\r\n"
           b"Subject: hello\r\nMessage-ID: <1@sender.example>\r\n\r\n"
           b"Hello Bob,\r\n\r\nthis is a test.\r\n")


def test_plain_send_stores_exact_bytes(sallyport, tmp_path):
    mb = start_mailbox(sallyport, tmp_path)
    with mb.smtp() as s:
        code, caps = s.ehlo("client.example")
        assert code == 250
        assert b"SIZE 52428800" in caps and b"8BITMIME" in caps and b"PIPELINING" in caps
        assert b"ENHANCEDSTATUSCODES" in caps
        assert b"STARTTLS" not in caps and b"AUTH" not in caps
        assert s.mail(SENDER) == (250, b"2.1.0 Ok")
        assert s.rcpt(RCPT) == (250, b"2.1.5 Ok")
        code, resp = s.data(MESSAGE)
        # The reply names the file, and the file is already in new/.
        assert code == 250 and resp.startswith(b"2.0.0 Ok: queued as "), resp
        name = resp.split(b"queued as ")[1].decode()
        path, content = only_message(mb)
        assert path.name == name
    ret, received, body = split_trace(content)
    assert ret == b"Return-Path: <alice@sender.example>"
    assert received.startswith(b"Received: from client.example (127.0.0.1) by mx.test")
    assert b"with ESMTP; " in received
    assert sha(body) == sha(MESSAGE)
    assert (path.stat().st_mode & 0o777) == 0o600
    line = session_log_line(mb, "messages=1")
    assert "tls=none auth=- messages=1 " in line and "close=quit" in line
    assert re.search(r"bytes_in=\d+ bytes_out=\d+ duration=[0-9.]+s", line)
    assert f"stored {name} from=<{SENDER}> rcpts=1" in mb.sp.log()


def test_eight_bit_content_intact(sallyport, tmp_path):
    mb = start_mailbox(sallyport, tmp_path)
    high = bytes(b for b in range(0x80, 0x100))
    body = (b"Subject: 8bit\r\nContent-Type: text/plain; charset=latin1\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n"
            + "café naïve 日本語\r\n".encode() + high + b"\r\n" + bytes(range(1, 10))
            + b"\x0b\x0c" + bytes(range(14, 32)) + b"\x00\x7f\r\n")
    assert b"\r" not in body.replace(b"\r\n", b"") and b"\n" not in body.replace(b"\r\n", b"")
    with mb.smtp() as s:
        s.sendmail(SENDER, [RCPT], body, mail_options=["BODY=8BITMIME"])
    _, content = only_message(mb)
    assert sha(split_trace(content)[2]) == sha(body)


def random_lines(size, seed):
    """`size` bytes of random 8-bit lines (no CR or LF inside), many of them
    starting with "." to exercise dot-stuffing."""
    rnd = bytearray(os.urandom(size))
    rnd = rnd.translate(bytes(range(256)).replace(b"\r", b"R").replace(b"\n", b"N"))
    lines, pos, i = [], 0, seed
    while pos < size:
        n = 40 + (i * 7919) % 900
        chunk = bytes(rnd[pos:pos + n])
        if i % 5 == 0:
            chunk = b"." + chunk
        lines.append(chunk)
        pos += n
        i += 1
    return b"Subject: big\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"


def test_twenty_megabyte_message(sallyport, tmp_path):
    mb = start_mailbox(sallyport, tmp_path)
    body = random_lines(20 * 1024 * 1024, 3)
    start = time.monotonic()
    with mb.smtp() as s:
        s.sendmail(SENDER, [RCPT], body)
    elapsed = time.monotonic() - start
    _, content = only_message(mb)
    assert sha(split_trace(content)[2]) == sha(body)
    print(f"\n20 MiB message: {len(body)} bytes stored in {elapsed:.2f}s")


def test_oversize_message_refused(sallyport, tmp_path):
    mb = start_mailbox(sallyport, tmp_path, "max_message_size = 10K")
    with mb.smtp() as s:
        s.ehlo("client.example")
        assert s.has_extn("size") and s.esmtp_features["size"] == "10240"
        # Announced too big: refused at MAIL.
        code, resp = s.mail(SENDER, ["SIZE=20000"])
        assert code == 552 and resp.startswith(b"5.3.4"), resp
        # Not announced: refused after the end of data, nothing stored.
        s.mail(SENDER)
        s.rcpt(RCPT)
        code, resp = s.data(b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 20)
        assert code == 552 and resp.startswith(b"5.3.4"), resp
        assert mb.new() == [] and mb.tmp() == []
        # The session goes on: a message at the limit is accepted.
        s.rset()
        small = b"Subject: small\r\n\r\n" + b"z" * (10240 - 20) + b"\r\n"
        assert len(small) == 10240
        s.sendmail(SENDER, [RCPT], small)
    _, content = only_message(mb)
    assert split_trace(content)[2] == small


def test_dot_stuffing_round_trip(sallyport, tmp_path):
    mb = start_mailbox(sallyport, tmp_path)
    body = (b"Subject: dots\r\n\r\n.\r\n..\r\n...\r\n.leading dot\r\n"
            b"middle . dot\r\n. space\r\n.\r\nlast line.\r\n")
    with mb.smtp() as s:
        s.sendmail(SENDER, [RCPT], body)
    _, content = only_message(mb)
    assert split_trace(content)[2] == body


def test_empty_message(sallyport, tmp_path):
    mb = start_mailbox(sallyport, tmp_path)
    c = raw_session(mb)
    c.send(b"MAIL FROM:<>\r\nRCPT TO:<bob@mx.test>\r\nDATA\r\n")
    c.expect(250)
    c.expect(250)
    c.expect(354, b"End data with <CR><LF>.<CR><LF>")
    c.send(b".\r\n")
    c.expect(250, b"queued as")
    _, content = only_message(mb)
    ret, _, body = split_trace(content)
    assert ret == b"Return-Path: <>" and body == b""


# ---- SMTP smuggling -------------------------------------------------------------

SMUGGLED = (b"MAIL FROM:<admin@sender.example>\r\nRCPT TO:<bob@mx.test>\r\nDATA\r\n"
            b"From: admin@sender.example\r\nSubject: smuggled\r\n\r\nsmuggled\r\n")


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n",
                                      b"\r\n.\r"], ids=repr)
def test_smuggling_variants_store_nothing(sallyport, tmp_path, fake_end):
    mb = start_mailbox(sallyport, tmp_path)
    c = raw_session(mb)
    c.send(b"MAIL FROM:<alice@sender.example>\r\nRCPT TO:<bob@mx.test>\r\nDATA\r\n")
    c.expect(250)
    c.expect(250)
    c.expect(354)
    # One write: a first message, a fake end, a smuggled transaction, the real end.
    c.send(b"Subject: first\r\n\r\nfirst" + fake_end + SMUGGLED + b".\r\nQUIT\r\n")
    code, lines = c.reply()
    assert code == 550 and b"5.6.0" in lines[-1] and b"bare CR or LF" in lines[-1], lines
    c.expect(221)  # the smuggled commands were message content, never answered
    assert c.until_eof() == b""
    assert mb.new() == [] and mb.tmp() == []
    assert "bare CR or LF" in mb.sp.log()


@pytest.mark.parametrize("fake_end", [b"\r\n\x00.\r\n", b"\r\n.\x00\r\n", b"\r\n\x00.\x00\r\n"],
                         ids=repr)
def test_nul_fake_ends_smuggle_nothing(sallyport, tmp_path, fake_end):
    """A NUL next to the dot (a server that drops NULs would see an end of
    data) is message content: one message is stored, holding the would-be
    smuggled transaction as text, and no second message appears."""
    mb = start_mailbox(sallyport, tmp_path)
    c = raw_session(mb)
    c.send(b"MAIL FROM:<alice@sender.example>\r\nRCPT TO:<bob@mx.test>\r\nDATA\r\n")
    c.expect(250)
    c.expect(250)
    c.expect(354)
    c.send(b"Subject: first\r\n\r\nfirst" + fake_end + SMUGGLED + b".\r\nQUIT\r\n")
    c.expect(250)
    c.expect(221)
    assert c.until_eof() == b""
    (stored,) = [p.read_bytes() for p in mb.new()]
    unstuffed = fake_end.replace(b"\r\n.", b"\r\n", 1)  # a leading dot is stuffing
    assert stored.endswith(b"\r\nSubject: first\r\n\r\nfirst" + unstuffed + SMUGGLED), stored
    assert "from=<admin@sender.example>" not in mb.sp.log()


def test_bare_lf_message_refused(sallyport, tmp_path):
    mb = start_mailbox(sallyport, tmp_path)
    c = raw_session(mb)
    c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
    c.expect(250)
    c.expect(250)
    c.expect(354)
    c.send(b"Subject: lf\r\n\r\nunix line\nending\r\n.\r\n")
    c.expect(550, b"5.6.0")
    # The session is usable afterwards: a clean message is stored.
    c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
    c.expect(250)
    c.expect(250)
    c.expect(354)
    c.send(b"Subject: ok\r\n\r\nfine\r\n.\r\n")
    c.expect(250, b"queued as")
    _, content = only_message(mb)
    assert split_trace(content)[2] == b"Subject: ok\r\n\r\nfine\r\n"


# ---- AUTH ---------------------------------------------------------------------

def test_auth_required(sallyport, tmp_path):
    users = make_users(tmp_path)
    mb = start_mailbox(sallyport, tmp_path, f"users = {users}")
    with mb.smtp() as s:
        s.ehlo("client.example")
        assert s.has_extn("auth") and "PLAIN" in s.esmtp_features["auth"]
        code, resp = s.mail(SENDER)
        assert code == 530 and resp == b"5.7.0 Authentication required", resp
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login("alice", "wrong password")
        assert e.value.smtp_code == 535 and e.value.smtp_error.startswith(b"5.7.8")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("mallory", "correct horse")  # unknown user
        assert s.mail(SENDER)[0] == 530
        s.login("alice", "correct horse")
        s.sendmail(SENDER, [RCPT], MESSAGE)
    _, content = only_message(mb)
    _, received, body = split_trace(content)
    assert body == MESSAGE and b"with ESMTPA; " in received
    assert "auth=alice messages=1" in session_log_line(mb, "auth=alice")
    assert "authentication failed for 'mallory'" in mb.sp.log()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_continuation(sallyport, tmp_path, mechanism):
    """AUTH without an initial response: the 334 continuation path."""
    users = make_users(tmp_path)
    mb = start_mailbox(sallyport, tmp_path, f"users = {users}")
    with mb.smtp() as s:
        s.ehlo("client.example")
        s.user, s.password = "alice", "correct horse"
        method = s.auth_plain if mechanism == "PLAIN" else s.auth_login
        code, resp = s.auth(mechanism, method, initial_response_ok=False)
        assert code == 235 and resp.startswith(b"2.7.0"), resp
        s.sendmail(SENDER, [RCPT], MESSAGE)
    assert len(mb.new()) == 1


def test_auth_raw_plain_and_cancel(sallyport, tmp_path):
    users = make_users(tmp_path)
    mb = start_mailbox(sallyport, tmp_path, f"users = {users}")
    c = raw_session(mb)
    c.send(b"AUTH PLAIN\r\n")
    c.expect(334)
    c.send(b"*\r\n")
    c.expect(501)
    c.send(b"AUTH PLAIN not-base64!\r\n")
    c.expect(501)
    c.send(b"AUTH CRAM-MD5\r\n")
    c.expect(504)
    good = base64.b64encode(b"\0alice\0correct horse")
    c.send(b"AUTH PLAIN " + good + b"\r\n")
    c.expect(235)
    c.send(b"AUTH PLAIN " + good + b"\r\n")
    c.expect(503)  # already authenticated
    c.send(b"QUIT\r\n")
    c.expect(221)


# ---- TLS ------------------------------------------------------------------------

def test_starttls_smtplib(sallyport, tmp_path, ca):
    users = make_users(tmp_path)
    mb = tls_mailbox(sallyport, tmp_path, ca, "starttls", users)
    with mb.smtp() as s:
        s.ehlo("client.example")
        assert s.has_extn("starttls")
        assert not s.has_extn("auth")  # no AUTH before TLS
        code, resp = s.mail(SENDER)
        assert code == 530 and resp == b"5.7.0 Must issue a STARTTLS command first", resp
        s.starttls(context=client_context(ca))
        s.ehlo("client.example")
        assert not s.has_extn("starttls") and s.has_extn("auth")
        s.login("alice", "correct horse")
        s.sendmail(SENDER, [RCPT], MESSAGE)
    _, content = only_message(mb)
    _, received, body = split_trace(content)
    assert body == MESSAGE and b"with ESMTPSA; " in received
    line = session_log_line(mb, "messages=1")
    assert re.search(r"tls=TLSv1\.[23]/\S+ auth=alice", line), line


def test_starttls_swaks(sallyport, tmp_path, ca):
    mb = tls_mailbox(sallyport, tmp_path, ca, "starttls")
    r = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(mb.port), "--tls",
                        "--from", SENDER, "--to", RCPT, "--helo", "swaks.example",
                        "--header", "Subject: via swaks", "--body", "hello from swaks"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "250 2.0.0 Ok: queued as" in r.stdout
    _, content = only_message(mb)
    _, received, body = split_trace(content)
    assert b"with ESMTPS; " in received and b"hello from swaks" in body


def test_starttls_command_injection_closes(sallyport, tmp_path, ca):
    mb = tls_mailbox(sallyport, tmp_path, ca, "starttls")
    c = raw_session(mb)
    c.send(b"STARTTLS\r\nRSET\r\n")  # one write: RSET would ride into the TLS session
    rest = c.until_eof()
    assert b"220" not in rest and b"250" not in rest, rest
    assert "STARTTLS command injection" in mb.sp.wait_log("command injection")
    assert mb.new() == []


def test_starttls_resets_state(sallyport, tmp_path, ca):
    mb = tls_mailbox(sallyport, tmp_path, ca, "starttls")
    c = raw_session(mb)
    c.send(b"STARTTLS\r\n")
    c.expect(220, b"Ready to start TLS")
    c.starttls(client_context(ca))
    c.send(b"MAIL FROM:<a@b.example>\r\n")
    c.expect(503, b"EHLO first")  # the EHLO before TLS no longer counts
    c.send(b"EHLO client.example\r\n")
    lines = c.expect(250)
    assert not any(b"STARTTLS" in l for l in lines)
    c.send(b"STARTTLS\r\n")
    c.expect(503)
    c.send(b"QUIT\r\n")
    c.expect(221)


def test_implicit_tls(sallyport, tmp_path, ca):
    mb = tls_mailbox(sallyport, tmp_path, ca, "implicit")
    big = random_lines(4 * 1024 * 1024, 1)
    with smtplib.SMTP_SSL("127.0.0.1", mb.port, context=client_context(ca), timeout=30) as s:
        s.ehlo("client.example")
        assert not s.has_extn("starttls")
        s.sendmail(SENDER, [RCPT], MESSAGE)
        s.sendmail(SENDER, [RCPT], big)
    contents = sorted(split_trace(p.read_bytes())[2] for p in mb.new())
    assert sorted([MESSAGE, big]) == contents
    assert "tls=TLSv1.3/" in session_log_line(mb, "messages=2")


# ---- other clients and protocol limits ----------------------------------------------

def test_curl_upload(sallyport, tmp_path):
    mb = start_mailbox(sallyport, tmp_path)
    upload = tmp_path / "mail.eml"
    body = b"From: a@b.example\r\nSubject: via curl\r\n\r\nline one\r\n.dot line\r\nend\r\n"
    upload.write_bytes(body)
    r = subprocess.run(["curl", "-sS", "--url", f"smtp://127.0.0.1:{mb.port}",
                        "--mail-from", "a@b.example", "--mail-rcpt", "c@d.example",
                        "-T", str(upload)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    _, content = only_message(mb)
    assert split_trace(content)[2] == body


def test_line_too_long(sallyport, tmp_path):
    mb = start_mailbox(sallyport, tmp_path)
    c = raw_session(mb)
    c.send(b"NOOP " + b"x" * 1200 + b"\r\n")
    c.expect(500, b"5.5.6 Line too long")
    # Longer than the input buffer, arriving in pieces: one error, then discarded.
    c.send(b"MAIL FROM:<" + b"y" * 20000)
    c.expect(500, b"5.5.6 Line too long")
    c.send(b"z" * 20000 + b">\r\nNOOP\r\n")
    c.expect(250, b"2.0.0 Ok")
    c.send(b"QUIT\r\n")
    c.expect(221)


def test_pipelining_in_order(sallyport, tmp_path):
    mb = start_mailbox(sallyport, tmp_path)
    c = raw_session(mb)
    c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<one@mx.test>\r\nRCPT TO:<two@mx.test>\r\n"
           b"RCPT TO:<>\r\nDATA\r\n")
    c.expect(250, b"2.1.0")
    c.expect(250, b"2.1.5")
    c.expect(250, b"2.1.5")
    c.expect(501)
    c.expect(354)
    # The message, and commands pipelined after its dot, in one write.
    c.send(b"Subject: p\r\n\r\nbody\r\n.\r\nNOOP\r\nMAIL FROM:<x@y.example>\r\nRSET\r\nQUIT\r\n")
    c.expect(250, b"queued as")
    c.expect(250, b"2.0.0 Ok")
    c.expect(250, b"2.1.0")
    c.expect(250, b"2.0.0 Ok")
    c.expect(221)
    _, content = only_message(mb)
    assert split_trace(content)[2] == b"Subject: p\r\n\r\nbody\r\n"
    assert "rcpts=2" in mb.sp.log()


def test_pipelining_bounded_when_client_does_not_read(sallyport, tmp_path):
    """400000 pipelined NOOPs (5 MB of replies, more than the kernel buffers
    hold) sent before reading any reply: the server stops reading while it
    cannot write, and resumes; every reply comes, in order."""
    mb = start_mailbox(sallyport, tmp_path)
    c = raw_session(mb, rcvbuf=4096)
    count = 400000
    batch = b"".join(b"NOOP %d\r\n" % i for i in range(count)) + b"QUIT\r\n"
    sender = threading.Thread(target=c.send, args=(batch,))
    sender.start()
    time.sleep(0.5)  # let both sides' buffers fill up
    for _ in range(count):
        assert c.line() == b"250 2.0.0 Ok"
    c.expect(221)
    sender.join(10)
    assert not sender.is_alive()


def test_sequence_and_syntax_errors(sallyport, tmp_path):
    mb = start_mailbox(sallyport, tmp_path)
    c = Raw(mb.port)
    c.expect(220)
    c.send(b"MAIL FROM:<a@b.example>\r\n")
    c.expect(503, b"5.5.1")
    c.send(b"EHLO\r\n")
    c.expect(501, b"5.5.4")
    c.send(b"EHLO client.example\r\n")
    c.expect(250)
    c.send(b"RCPT TO:<c@d.example>\r\n")
    c.expect(503, b"5.5.1")
    c.send(b"DATA\r\n")
    c.expect(503, b"5.5.1")
    c.send(b"MAIL FROM:a@b.example\r\n")
    c.expect(501, b"5.5.4")
    c.send(b"MAIL FROM:<a@b.example> SMTPUTF8\r\n")
    c.expect(555, b"5.5.4")
    c.send(b"BDAT 10\r\n")
    c.expect(500, b"5.5.2")
    c.send(b"VRFY bob\r\n")
    c.expect(252)
    c.send(b"HELP\r\n")
    c.expect(214)
    c.send(b"STARTTLS\r\n")
    c.expect(502)  # plain mailbox
    c.send(b"QUIT\r\n")
    c.expect(221)


def test_too_many_recipients(sallyport, tmp_path):
    mb = start_mailbox(sallyport, tmp_path)
    c = raw_session(mb)
    c.send(b"MAIL FROM:<a@b.example>\r\n" +
           b"".join(b"RCPT TO:<r%d@mx.test>\r\n" % i for i in range(101)))
    c.expect(250)
    for _ in range(100):
        c.expect(250, b"2.1.5")
    c.expect(452, b"4.5.3")
    c.send(b"QUIT\r\n")
    c.expect(221)


def test_too_many_errors(sallyport, tmp_path):
    mb = start_mailbox(sallyport, tmp_path, global_extra="max_errors = 3")
    c = raw_session(mb)
    c.send(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
    c.expect(500)
    c.expect(500)
    c.expect(500)
    c.expect(421, b"4.7.0 Too many errors")
    assert c.until_eof() == b""  # NOOP never answered
    assert "close=too many errors" in session_log_line(mb, "too many errors")


def test_idle_timeout(sallyport, tmp_path):
    mb = start_mailbox(sallyport, tmp_path, global_extra="idle_timeout = 1")
    c = raw_session(mb)
    start = time.monotonic()
    c.expect(421, f"4.4.2 {HOST} Timeout".encode())
    assert c.until_eof() == b""
    assert 0.5 < time.monotonic() - start < 10
    assert "close=idle timeout" in session_log_line(mb, "idle timeout")


def test_client_gone_during_data_leaves_nothing(sallyport, tmp_path):
    mb = start_mailbox(sallyport, tmp_path)
    c = raw_session(mb)
    c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
    c.expect(250)
    c.expect(250)
    c.expect(354)
    c.send(b"Subject: cut\r\n\r\n" + b"partial\r\n" * 1000)
    c.close()
    mb.sp.wait_log("client closed during DATA")
    assert mb.new() == [] and mb.tmp() == []
