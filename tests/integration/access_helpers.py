"""Helpers for the mail-access integration tests (test_access_modes.py,
test_access_routing.py): IMAP, POP3 and ManageSieve through sallyport, with
the private Dovecot of dovecot.py as the backend.

- `AccessWay`, `IMAP_WAYS`, `POP3_WAYS`, `SIEVE_WAYS`: a listener's protocol,
  TLS flavour (implicit | starttls) and mode (terminate | passthrough);
  `backend_cases()` pairs each way with every backend flavour it can use and
  the Dovecot fixture offers.
- `Target`: one route (SNI name) to one Dovecot and one of its users;
  `new_user(dv)` makes a user of its own for a test (so its first message is
  UID 1 and POP3 message 1, and its Sieve directory is empty).
- `start_gateway()`: sallyport with one access listener plus an SMTP listener
  (submissions, terminate) whose route leads, per target, to an embedded
  mailbox writing into the target user's Dovecot Maildir; `deliver()` sends a
  message that way and returns what was stored.
- clients, each returning a `Fetched` (message bytes and the certificate's
  CN): `FETCHERS["imap"|"pop3"][client]` for imaplib/poplib, curl and
  openssl s_client; `sieve_session()` for the SieveClient and s_client.
- `RawSession`: a line-oriented socket (+ STARTTLS) for greeting checks.
- logs: `access_session_lines()`, `wait_access_line()`.
"""
import base64
import imaplib
import os
import poplib
import re
import secrets
import select
import shlex
import socket
import ssl
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from conftest import free_port, wait_for
from sieve_client import SieveClient
from smtp_helpers import (
    SENDER, Way, assert_mailbox_stored, backend_section, body_part, certificate_section,
    global_section, listener_section, log_fields, mailbox_section, make_message, marker,
    SECOND_ADDRESS, loopback_connection, session_lines, sha256, smtplib_session, standard_body,
    wait_maildir)

CLIENT_TIMEOUT = 15
SMTP_WAY = Way("implicit", "terminate")   # how tests deliver mail: submissions, terminate


# ---- ways ----------------------------------------------------------------------------

_SERVICES = {("imap", "implicit"): "imaps", ("imap", "starttls"): "imap",
             ("pop3", "implicit"): "pop3s", ("pop3", "starttls"): "pop3",
             ("sieve", "starttls"): "sieve"}


@dataclass(frozen=True)
class AccessWay:
    proto: str  # "imap" | "pop3" | "sieve"
    tls: str    # "implicit" | "starttls"
    mode: str   # "terminate" | "passthrough"

    @property
    def service(self):
        """The listener's service word (also its section name)."""
        return _SERVICES[(self.proto, self.tls)]

    @property
    def passthrough(self):
        return self.mode == "passthrough"

    @property
    def id(self):
        return f"{self.service}-{self.mode}"

    def __str__(self):
        return self.id


def _ways(proto, flavours=("implicit", "starttls")):
    return [AccessWay(proto, t, m) for t in flavours for m in ("terminate", "passthrough")]


IMAP_WAYS = _ways("imap")
POP3_WAYS = _ways("pop3")
SIEVE_WAYS = _ways("sieve", ("starttls",))   # ManageSieve has no implicit-TLS port

# The backend flavours the Dovecot fixture offers per protocol (no implicit-TLS
# ManageSieve port).
FIXTURE_FLAVOURS = {"imap": ("plain", "implicit", "starttls"),
                    "pop3": ("plain", "implicit", "starttls"),
                    "sieve": ("plain", "starttls")}


def backend_cases(ways):
    """[(way, backend flavour)]: passthrough needs the listener's own flavour,
    terminate takes every flavour the fixture offers."""
    return [(w, f) for w in ways
            for f in ((w.tls,) if w.passthrough else FIXTURE_FLAVOURS[w.proto])]


def case_ids(cases):
    return [f"{w.id}-to-{f}" for w, f in cases]


def dovecot_port(dv, proto, flavour):
    attr = {"plain": f"{proto}_plain_port", "implicit": f"{proto}s_port",
            "starttls": f"{proto}_port"}[flavour]
    port = getattr(dv, attr)
    assert port, f"the Dovecot fixture has no {attr}"
    return port


# ---- certificates ---------------------------------------------------------------------

_issued = {}


def gateway_cn(sni):
    """The CN of the certificate sallyport presents for `sni` in terminate mode
    (the Dovecot fixture's certificates have CN = its hostname)."""
    return f"sallyport.{sni}"


def gateway_cert(ca, sni):
    """(cert, key) for sallyport's terminate listeners: CN gateway_cn(sni), SANs
    that name and sni. Issued once per CA and session, under file names of
    this module's own."""
    key = (str(ca.dir), sni)
    if key not in _issued:
        _issued[key] = ca.issue(f"acct-{sni}", [gateway_cn(sni), sni])
    return _issued[key]


def peer_cn(tls_sock):
    """The subject CN of the certificate the TLS socket's peer presented."""
    for rdn in tls_sock.getpeercert()["subject"]:
        for k, v in rdn:
            if k == "commonName":
                return v
    return None


def peer_dns_names(tls_sock):
    return {v for k, v in tls_sock.getpeercert().get("subjectAltName", ()) if k == "DNS"}


def client_context(cafile):
    """Verifies the chain against the test CA and the name against the SNI."""
    return ssl.create_default_context(cafile=str(cafile))


# ---- the gateway ------------------------------------------------------------------------

def _new_user(dv):
    name, password = "u" + secrets.token_hex(4), secrets.token_hex(8)
    dv.set_user(name, password)
    return name, password


class UserPool:
    """Dovecot users for one test each: (name, password), free of characters a
    client would have to quote. Dovecot re-reads its passwd-file at most once
    a second (db-passwd-file.c: last_sync_time == ioloop_time), so a user
    added right after a login may stay unknown for up to a second: the pool
    makes its users in one go, before the module's first login, and only
    when it runs dry adds one and polls `doveadm auth test` until Dovecot
    knows it."""

    def __init__(self, dv, size):
        self.dv = dv
        self.free = [_new_user(dv) for _ in range(size)]

    def take(self):
        if self.free:
            return self.free.pop()
        name, password = _new_user(self.dv)
        argv = ["doveadm", "-c", str(self.dv.config_path), "auth", "test", name, password]
        wait_for(lambda: subprocess.run(argv, capture_output=True, timeout=30).returncode == 0,
                 timeout=10, what=f"Dovecot to know the new user {name}")
        return name, password


@dataclass
class Target:
    """Route `route` (SNI `sni`) -> backend "dv-<route>": `dv`'s port of
    `flavour` for the access service, and for mail delivery an embedded
    mailbox that writes into `user`'s Maildir."""
    route: str
    sni: str
    dv: object
    user: str
    password: str
    flavour: str

    @property
    def backend(self):
        return f"dv-{self.route}"

    @property
    def rcpt(self):
        return f"{self.user}@{self.sni}"


@dataclass
class Gateway:
    sp: object         # conftest.Sallyport
    port: int          # the access listener
    smtp_port: int     # the submissions listener (None for sieve)
    way: AccessWay
    targets: list


def distinct_ports(n):
    """n different ports that were free a moment ago."""
    ports = set()
    while len(ports) < n:
        ports.add(free_port())
    return list(ports)


def gateway_config(ca, way, targets, port, smtp_port=None, mailbox_ports=()):
    conf = global_section()
    for t in targets:
        conf += certificate_section(f"c-{t.route}", *gateway_cert(ca, t.sni))
    conf += listener_section(way, port)
    if smtp_port:
        conf += listener_section(SMTP_WAY, smtp_port)
    for t, mport in zip(targets, mailbox_ports or [None] * len(targets)):
        endpoints = {way.service: f"127.0.0.1:{dovecot_port(t.dv, way.proto, t.flavour)} "
                                  f"{t.flavour}"}
        if smtp_port:
            conf += mailbox_section(f"box-{t.route}", mport, t.dv.maildir(t.user),
                                    hostname=f"box.{t.sni}")
            endpoints[SMTP_WAY.service] = f"127.0.0.1:{mport} plain"
        conf += backend_section(t.backend, endpoints, ca=ca.cert, tls_name=t.dv.hostname)
        conf += f"[route {t.route}]\nsni = {t.sni}\nbackend = {t.backend}\n\n"
    return conf


def start_gateway(sallyport, ca, way, targets):
    """sallyport with the access listener of `way` and, unless way is sieve, a
    submissions listener for delivering test mail; one route per target."""
    smtp = way.proto != "sieve"
    for attempt in range(3):
        port, *more = distinct_ports(1 + (1 + len(targets) if smtp else 0))
        smtp_port, mailbox_ports = (more[0], more[1:]) if smtp else (None, ())
        conf = gateway_config(ca, way, targets, port, smtp_port, mailbox_ports)
        try:
            sp = sallyport(conf, name=f"sallyport{attempt or ''}")
        except AssertionError as e:
            # free_port() is only a guess: another process may take a port
            # before sallyport binds it. Try again with new ones.
            if "Address already in use" in str(e) and attempt < 2:
                continue
            raise
        return Gateway(sp, port, smtp_port, way, list(targets))


def deliver(gw, target, cafile):
    """Sends a fresh message to target.rcpt through the gateway's SMTP listener
    (SNI target.sni), waits for it in the user's Dovecot Maildir and hands it
    to Dovecot's mail user. Returns (sent, stored) bytes."""
    mark = marker()
    sent = make_message(mark, standard_body(mark), target.rcpt)
    with smtplib_session(SMTP_WAY.tls, gw.smtp_port, target.sni, cafile) as s:
        refused = s.sendmail(SENDER, [target.rcpt], sent)
        assert not refused, refused
    msgs = wait_maildir(target.dv.maildir(target.user), timeout=15)
    assert len(msgs) == 1, f"{len(msgs)} messages in {target.user}'s Maildir"
    assert_mailbox_stored(msgs[0], sent)
    # sallyport runs as root and writes 0600: Dovecot reads as its mail user.
    target.dv.adopt(target.user)
    return sent, msgs[0]


def assert_same_message(fetched: bytes, stored: bytes, sent: bytes):
    """What a client fetched is the stored file byte for byte, and its body is
    the body that was sent."""
    assert sha256(body_part(fetched)) == sha256(body_part(sent)), (
        f"body differs: fetched {len(body_part(fetched))} bytes, sent {len(body_part(sent))}")
    assert fetched == stored, (
        f"fetched {len(fetched)} bytes differ from the stored {len(stored)}:\n"
        f"{fetched[:300]!r}\n{stored[:300]!r}")


def assert_certificate(cn, way, target):
    """Terminate: sallyport's certificate for the SNI; passthrough: Dovecot's."""
    want = target.dv.hostname if way.passthrough else gateway_cn(target.sni)
    assert cn == want, f"{way}: certificate CN {cn!r}, expected {want!r}"


def wait_dovecot_login(target, tls):
    """Waits for Dovecot's login line for target.user; checks that the
    backend connection was TLS (implicit or STARTTLS backend) or not (plain)."""
    line = wait_for(lambda: next((l for l in target.dv.logins()
                                  if f"user=<{target.user}>" in l), None),
                    timeout=10, what=f"Dovecot login of {target.user}")
    assert (", TLS" in line) == tls, line
    return line


# ---- logs -----------------------------------------------------------------------------

def access_session_lines(sp, listener):
    return [l for l in session_lines(sp.log()) if f" listener={listener} " in l]


def wait_access_line(sp, listener, sni, count=1):
    """Waits for `count` per-connection log lines of `listener` with sni=`sni`;
    returns their fields."""
    def find():
        found = [log_fields(l) for l in access_session_lines(sp, listener)
                 if f" sni={sni} " in l]
        return found if len(found) >= count else None
    return wait_for(find, 20, what=f"{count} session line(s) listener={listener} sni={sni} "
                                   f"in {sp.log_path}")


def assert_session_fields(f, way, target, dv_port=None):
    assert f["listener"] == way.service, f
    assert f["sni"] == target.sni, f
    assert f["route"] == target.route, f
    assert f["backend"] == target.backend, f
    assert f["mode"] == way.mode, f
    if dv_port is not None:
        assert f["backend_addr"].endswith(f":{dv_port}"), f
    if way.passthrough:
        assert f["tls"] == "passthrough", f


# ---- Python clients ------------------------------------------------------------------

@dataclass
class Fetched:
    message: bytes
    cn: str                 # the presented certificate's CN
    dns_names: set = None   # its DNS subjectAltNames, where the client tells them
    extra: dict = None


class LoopbackIMAP4(imaplib.IMAP4):
    """IMAP4 to 127.0.0.1 whatever the host, which stays the STARTTLS SNI
    (from `source` when set: see smtp_helpers.SECOND_ADDRESS)."""

    source = None

    def _create_socket(self, timeout):
        return loopback_connection(self.port, timeout, self.source)


class LoopbackIMAP4_SSL(imaplib.IMAP4_SSL):
    source = None

    def _create_socket(self, timeout):
        raw = loopback_connection(self.port, timeout, self.source)
        return self.ssl_context.wrap_socket(raw, server_hostname=self.host)


class LoopbackPOP3(poplib.POP3):
    source = None

    def _create_socket(self, timeout):
        return loopback_connection(self.port, timeout, self.source)


class LoopbackPOP3_SSL(poplib.POP3_SSL):
    source = None

    def _create_socket(self, timeout):
        raw = loopback_connection(self.port, timeout, self.source)
        return self.context.wrap_socket(raw, server_hostname=self.host)


class IMAPFromSecondAddress(LoopbackIMAP4):
    source = SECOND_ADDRESS


class IMAPSSLFromSecondAddress(LoopbackIMAP4_SSL):
    source = SECOND_ADDRESS


class POP3FromSecondAddress(LoopbackPOP3):
    source = SECOND_ADDRESS


class POP3SSLFromSecondAddress(LoopbackPOP3_SSL):
    source = SECOND_ADDRESS


def imap_open(tls, port, sni, cafile):
    """A TLS imaplib session (not logged in) to 127.0.0.1:port with SNI `sni`."""
    ctx = client_context(cafile)
    if tls == "implicit":
        return LoopbackIMAP4_SSL(sni, port, ssl_context=ctx, timeout=CLIENT_TIMEOUT)
    m = LoopbackIMAP4(sni, port, timeout=CLIENT_TIMEOUT)
    assert "STARTTLS" in m.capabilities, m.capabilities
    m.starttls(ssl_context=ctx)
    return m


def _imap_close(m):
    if m.state != "LOGOUT":
        try:
            m.shutdown()
        except OSError:
            pass


def imaplib_fetch(way, port, sni, cafile, user, password, tmp=None):
    m = imap_open(way.tls, port, sni, cafile)
    try:
        typ, data = m.login(user, password)
        assert typ == "OK", data
        typ, data = m.select("INBOX")
        assert typ == "OK" and data == [b"1"], (typ, data)
        typ, data = m.uid("FETCH", "1", "(BODY.PEEK[])")
        assert typ == "OK" and isinstance(data[0], tuple), (typ, data)
        fetched = Fetched(data[0][1], peer_cn(m.sock), peer_dns_names(m.sock))
        assert m.logout()[0] == "BYE"
        return fetched
    finally:
        _imap_close(m)


def imaplib_login_fails(way, port, sni, cafile, user, password):
    """True if the IMAP server refuses this login (after a good TLS session)."""
    m = imap_open(way.tls, port, sni, cafile)
    try:
        try:
            m.login(user, password)
        except imaplib.IMAP4.error as e:
            assert "AUTHENTICATIONFAILED" in str(e) or "failed" in str(e).lower(), e
            return True
        return False
    finally:
        _imap_close(m)


def pop3_open(tls, port, sni, cafile):
    ctx = client_context(cafile)
    if tls == "implicit":
        return LoopbackPOP3_SSL(sni, port, context=ctx, timeout=CLIENT_TIMEOUT)
    p = LoopbackPOP3(sni, port, timeout=CLIENT_TIMEOUT)
    p.stls(context=ctx)
    return p


def poplib_fetch(way, port, sni, cafile, user, password, tmp=None):
    p = pop3_open(way.tls, port, sni, cafile)
    try:
        assert p.user(user).startswith(b"+OK")
        assert p.pass_(password).startswith(b"+OK")
        count, size = p.stat()
        assert count == 1, (count, size)
        resp, lines, octets = p.retr(1)
        assert resp.startswith(b"+OK"), resp
        message = b"\r\n".join(lines) + b"\r\n"
        assert len(message) == size, (len(message), size)
        fetched = Fetched(message, peer_cn(p.sock), peer_dns_names(p.sock))
        assert p.quit().startswith(b"+OK")
        return fetched
    finally:
        p.close()


def poplib_login_fails(way, port, sni, cafile, user, password):
    p = pop3_open(way.tls, port, sni, cafile)
    try:
        try:
            p.user(user)
            p.pass_(password)
        except poplib.error_proto as e:
            assert str(e).startswith("b'-ERR"), e
            return True
        return False
    finally:
        p.close()


# ---- curl ----------------------------------------------------------------------------

def run_client(argv, timeout=CLIENT_TIMEOUT + 10):
    r = subprocess.run(argv, capture_output=True, timeout=timeout)
    assert r.returncode == 0, (
        f"{shlex.join(argv)} exited with {r.returncode}\n--- stdout ---\n"
        f"{r.stdout.decode(errors='replace')[-3000:]}\n--- stderr ---\n"
        f"{r.stderr.decode(errors='replace')[-3000:]}")
    return r


def curl_argv(way, port, sni, cafile, user, password, path):
    scheme = way.proto + ("s" if way.tls == "implicit" else "")
    argv = ["curl", "-sS", "-v", "--max-time", str(CLIENT_TIMEOUT),
            f"{scheme}://{sni}:{port}/{path}",
            "--resolve", f"{sni}:{port}:127.0.0.1", "--cacert", str(cafile),
            "-u", f"{user}:{password}"]
    if way.tls == "starttls":
        argv.append("--ssl-reqd")
    return argv


def curl_cn(stderr: bytes):
    m = re.search(rb"\*\s+subject: [^\r\n]*?CN\s*=\s*([^\s,;/]+)", stderr)
    assert m, f"no server certificate subject in curl -v output:\n{stderr[-3000:]!r}"
    return m.group(1).decode()


def curl_fetch(way, port, sni, cafile, user, password, tmp=None):
    path = "INBOX;UID=1" if way.proto == "imap" else "1"
    r = run_client(curl_argv(way, port, sni, cafile, user, password, path))
    return Fetched(r.stdout, curl_cn(r.stderr))


# ---- openssl s_client ------------------------------------------------------------------

class SClient:
    """`openssl s_client -quiet -ign_eof` driven line by line. For a STARTTLS
    listener s_client holds the cleartext part itself (-starttls PROTO)."""

    def __init__(self, way, port, sni, cafile, tmp):
        argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                "-servername", sni, "-verify_hostname", sni,
                "-CAfile", str(cafile), "-verify_return_error", "-quiet", "-ign_eof"]
        if way.tls == "starttls":
            argv += ["-starttls", way.proto]
        self.argv = argv
        self.stderr_path = Path(tmp) / f"s_client-{uuid.uuid4().hex}.err"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr)
        self.buf = b""
        self.transcript = []
        self.deadline = time.monotonic() + CLIENT_TIMEOUT

    def stderr(self):
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def cn(self):
        """The leaf certificate's CN, from the verify callback's "depth=0" line."""
        m = re.search(r"^depth=0 .*?CN = ([^\s,]+)", self.stderr(), re.M)
        assert m, f"no depth=0 line in s_client's stderr:\n{self.stderr()}"
        return m.group(1)

    def fail(self, what):
        self.close()
        raise AssertionError(f"{shlex.join(self.argv)}: {what}\n--- transcript ---\n"
                             + "\n".join(self.transcript[-40:])
                             + f"\n--- stderr ---\n{self.stderr()[-3000:]}")

    def _fill(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.fail("timed out waiting for the server")
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                self.fail(f"connection closed, pending {self.buf!r}")
            self.buf += chunk

    def readline(self):
        while b"\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\n")
        line = line.rstrip(b"\r")
        self.transcript.append("S: " + line.decode(errors="replace")[:200])
        return line

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        self.transcript.append(f"S: <{n} bytes>")
        return data

    def expect(self, prefix: bytes):
        line = self.readline()
        if not line.startswith(prefix):
            self.fail(f"expected {prefix!r}..., got {line!r}")
        return line

    def send(self, line: str):
        self.send_raw(line.encode() + b"\r\n", show=line)

    def send_raw(self, data: bytes, show):
        self.transcript.append("C: " + show)
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.fail("s_client went away")

    def finish(self):
        """After the server's goodbye: closes stdin; returns s_client's exit code
        (it exits when the server closes the connection)."""
        self.proc.stdin.close()
        try:
            rc = self.proc.wait(timeout=CLIENT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail("s_client did not exit after the server's goodbye")
        rest = self.proc.stdout.read()
        if rest.strip():
            self.fail(f"unexpected data after the goodbye: {rest!r}")
        self._stderr.close()
        return rc

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self._stderr.closed:
            self._stderr.close()


def _imap_tagged(c, tag):
    """Reads an IMAP response up to its tagged line, following literals;
    returns (untagged lines, [literal bytes], tagged line)."""
    untagged, literals = [], []
    while True:
        line = c.readline()
        while (m := re.search(rb"\{(\d+)\}$", line)):
            literals.append(c.read_exact(int(m.group(1))))
            line = c.readline()
        if line.startswith(tag.encode() + b" "):
            return untagged, literals, line
        untagged.append(line)


def openssl_imap_fetch(way, port, sni, cafile, user, password, tmp):
    c = SClient(way, port, sni, cafile, tmp)
    try:
        if way.tls == "implicit":
            c.expect(b"* OK")
        c.send(f"a LOGIN {user} {password}")
        _, _, done = _imap_tagged(c, "a")
        if not done.startswith(b"a OK"):
            c.fail(f"LOGIN: {done!r}")
        c.send("b SELECT INBOX")
        untagged, _, done = _imap_tagged(c, "b")
        if not done.startswith(b"b OK") or b"* 1 EXISTS" not in untagged:
            c.fail(f"SELECT: {untagged!r} {done!r}")
        c.send("c UID FETCH 1 BODY.PEEK[]")
        _, literals, done = _imap_tagged(c, "c")
        if not done.startswith(b"c OK") or len(literals) != 1:
            c.fail(f"FETCH: {done!r}, {len(literals)} literals")
        c.send("d LOGOUT")
        untagged, _, done = _imap_tagged(c, "d")
        if not done.startswith(b"d OK") or not untagged[0].startswith(b"* BYE"):
            c.fail(f"LOGOUT: {untagged!r} {done!r}")
        rc = c.finish()
        assert rc == 0, f"s_client exited with {rc}: {c.stderr()[-2000:]}"
        return Fetched(literals[0], c.cn())
    finally:
        c.close()


def openssl_pop3_fetch(way, port, sni, cafile, user, password, tmp):
    c = SClient(way, port, sni, cafile, tmp)
    try:
        if way.tls == "implicit":
            c.expect(b"+OK")
        c.send(f"USER {user}")
        c.expect(b"+OK")
        c.send(f"PASS {password}")
        c.expect(b"+OK")
        c.send("STAT")
        count, size = c.expect(b"+OK ").split()[1:3]
        if count != b"1":
            c.fail(f"STAT: {count} messages")
        c.send("RETR 1")
        c.expect(b"+OK")
        lines = []
        while (line := c.readline()) != b".":
            lines.append(line[1:] if line.startswith(b".") else line)
        message = b"\r\n".join(lines) + b"\r\n"
        assert len(message) == int(size), (len(message), size)
        c.send("QUIT")
        c.expect(b"+OK")
        rc = c.finish()
        assert rc == 0, f"s_client exited with {rc}: {c.stderr()[-2000:]}"
        return Fetched(message, c.cn())
    finally:
        c.close()


FETCHERS = {
    "imap": {"imaplib": imaplib_fetch, "curl": curl_fetch, "openssl": openssl_imap_fetch},
    "pop3": {"poplib": poplib_fetch, "curl": curl_fetch, "openssl": openssl_pop3_fetch},
}


# ---- ManageSieve ------------------------------------------------------------------------

def sieve_script_text(mark):
    return (f'require ["fileinto"];\r\n# {mark}\r\nif header :contains "subject" "{mark}" {{\r\n'
            f'  fileinto "INBOX";\r\n}}\r\n')


def sieve_script_on_disk(dv, user, name) -> bytes:
    """The script's bytes as Dovecot stored them (no newline translation)."""
    return (dv.sieve_dir / user / f"{name}.sieve").read_bytes()


def assert_cleartext_sieve_caps(caps):
    """sallyport's own capabilities before TLS: STARTTLS, no SASL mechanism."""
    assert "STARTTLS" in caps, caps
    assert not (caps.get("SASL") or "").split(), f"SASL mechanisms before TLS: {caps}"
    assert caps.get("IMPLEMENTATION") == "sallyport", caps


def assert_tls_sieve_caps(caps):
    """Capabilities re-issued after TLS by Dovecot (through sallyport or not)."""
    assert "PLAIN" in (caps.get("SASL") or "").upper().split(), caps
    assert "Pigeonhole" in (caps.get("IMPLEMENTATION") or ""), caps
    assert "VERSION" in caps, caps


def sieve_client_session(way, port, sni, cafile, user, password, script_name, script, tmp=None):
    """SieveClient: cleartext capabilities, STARTTLS, capabilities again,
    AUTHENTICATE PLAIN, PUTSCRIPT, LISTSCRIPTS, LOGOUT. Returns a Fetched whose
    extra holds the capabilities and the script list."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
    c = SieveClient(sock)
    try:
        before = dict(c.caps)
        assert_cleartext_sieve_caps(before)
        after = dict(c.starttls(client_context(cafile), sni))
        assert_tls_sieve_caps(after)
        cn, names = peer_cn(c.sock), peer_dns_names(c.sock)
        # Exactly one capability list after TLS: a second one would be read as
        # the data of the next response.
        r = c.noop()
        assert r.lines == [], f"data before the NOOP reply (a second greeting?): {r.lines!r}"
        c.authenticate(user, password)
        c.putscript(script_name, script)
        listed = c.listscripts()
        c.logout()
        return Fetched(b"", cn, names, {"before": before, "after": after, "listed": listed})
    finally:
        c.close()


def sieve_authenticate_fails(port, sni, cafile, user, password):
    sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
    with SieveClient(sock) as c:
        c.starttls(client_context(cafile), sni)
        try:
            c.authenticate(user, password)
        except Exception as e:    # SieveError: NO
            assert getattr(e, "status", None) == "NO", e
            return True
        return False


def _sieve_caps_lines(lines):
    caps = {}
    for line in lines:
        m = re.match(rb'"([^"]*)"(?: "([^"]*)")?$', line)
        assert m, f"not a capability line: {line!r}"
        caps[m.group(1).decode().upper()] = m.group(2).decode() if m.group(2) is not None \
            else None
    return caps


def openssl_sieve_session(way, port, sni, cafile, user, password, script_name, script,
                          tmp=None):
    """s_client -starttls sieve: the capabilities the server re-issues after TLS,
    AUTHENTICATE PLAIN, PUTSCRIPT, LISTSCRIPTS, LOGOUT."""
    c = SClient(way, port, sni, cafile, tmp)
    try:
        lines = []
        while not (line := c.readline()).startswith(b"OK"):
            lines.append(line)
        after = _sieve_caps_lines(lines)
        assert_tls_sieve_caps(after)
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        c.send(f'AUTHENTICATE "PLAIN" "{token}"')
        c.expect(b"OK")
        data = script.encode()
        c.send_raw(f'PUTSCRIPT "{script_name}" {{{len(data)}+}}\r\n'.encode() + data + b"\r\n",
                   show=f'PUTSCRIPT "{script_name}" {{{len(data)}+}} <script>')
        c.expect(b"OK")
        c.send("LISTSCRIPTS")
        listed = []
        while not (line := c.readline()).startswith(b"OK"):
            m = re.match(rb'"([^"]*)"( ACTIVE)?$', line)
            if not m:
                c.fail(f"LISTSCRIPTS: {line!r}")
            listed.append((m.group(1).decode(), bool(m.group(2))))
        c.send("LOGOUT")
        c.expect(b"OK")
        rc = c.finish()
        assert rc == 0, f"s_client exited with {rc}: {c.stderr()[-2000:]}"
        return Fetched(b"", c.cn(), None, {"after": after, "listed": listed})
    finally:
        c.close()


SIEVE_CLIENTS = {"SieveClient": sieve_client_session, "openssl": openssl_sieve_session}


# ---- raw sessions ----------------------------------------------------------------------

class RawSession:
    """A line-oriented client on a plain socket that can switch to TLS."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
        self.buf = b""
        self.lines = []    # everything read, for failure messages

    def readline(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed; read so far: {self.lines!r}, "
                                     f"pending {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        self.lines.append(line)
        return line

    def send(self, line):
        self.sock.sendall(line.encode() + b"\r\n")

    def starttls(self, cafile, sni):
        assert self.buf == b"", f"bytes after the STARTTLS go-ahead: {self.buf!r}"
        self.sock = client_context(cafile).wrap_socket(self.sock, server_hostname=sni)

    def wrap_implicit(self, cafile, sni):
        self.starttls(cafile, sni)

    def read_to_eof(self):
        """Everything until the server closes (bounded by the socket timeout)."""
        data = self.buf
        self.buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ssl.SSLEOFError:   # closed without close_notify
                return data
            if not chunk:
                return data
            data += chunk

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
