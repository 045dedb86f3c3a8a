"""A private, throw-away Postfix instance on loopback, for the integration tests.

Postfix is the real backend that the tests put behind sallyport. Each
`Postfix` instance has its own config_directory, queue_directory,
data_directory, log file and Maildirs, listens only on 127.0.0.1 on three
ephemeral ports, never uses DNS or the network, and delivers mail for its
domains with virtual(8) into Maildirs. The system Postfix (/etc/postfix/main.cf,
master.cf, /var/spool/postfix, /var/lib/postfix) is neither used nor touched;
it may be stopped and unconfigured (Debian's "No configuration"). Only the
installed programs and $meta_directory (/etc/postfix/postfix-files) are shared.

Ports, all on `pf.host` (127.0.0.1):

    pf.plain_port     smtpd, no TLS offered (no STARTTLS in EHLO)
    pf.starttls_port  smtpd offering STARTTLS (smtpd_tls_security_level = may)
    pf.implicit_port  smtpd with implicit TLS (smtpd_tls_wrappermode = yes)

With proxy_ports=True, three more ports of the same flavours expect a PROXY
header first (smtpd_upstream_proxy_protocol = haproxy) and log the client it
names: pf.proxy_plain_port, pf.proxy_starttls_port, pf.proxy_implicit_port.

Every port accepts mail for the instance's domains from anybody, and relays
for 127.0.0.0/8 (mynetworks); no AUTH. Other domains use the error(8)
transport, so smtpd rejects them at RCPT time (550 5.7.1 ... outbound mail is
disabled in tests) and nothing ever leaves the machine. SIZE is 40000000.

Fixtures (import the ones a test module uses; each stands alone and needs only
the session `ca` fixture of conftest.py):

    from postfix import postfix, postfix_factory, body_of, crlf_to_lf

    def test_a(postfix):                  # module-scoped, route1.test + route2.test
        rcpt = postfix.new_address("route1.test")      # unique per call
        with smtplib.SMTP(postfix.host, postfix.starttls_port) as s:
            s.starttls(context=postfix.client_context())   # verifies against the CA
            s.sendmail("a@route1.test", [rcpt], b"Subject: x\r\n\r\nhi\r\n")
        (msg,) = postfix.wait_for_message(rcpt)
        assert body_of(msg) == b"hi\n"

    def test_b(postfix_factory):          # function-scoped factory: fresh instances
        pf = postfix_factory(["other.test"], hostname="mx.other.test")

`postfix` is one module-scoped instance for route1.test and route2.test (note
that `from postfix import postfix` makes the name refer to the fixture, not
the module). `postfix_factory` (function scope) and `postfix_module_factory`
(module scope) start instances on demand: factory(domains=("route1.test",
"route2.test"), hostname="postfix.test" (Postfix's myhostname and the
certificate's CN), sans=[hostname, "localhost", "127.0.0.1"] (certificate
names), cert=None, key=None (use these instead of issuing from the CA),
extra_main_cf=None (dict of main.cf overrides)). Fixture teardown closes the
instances; so does interpreter exit for any the teardown never reached.

Without fixtures: `Postfix(directory, cert, key, domains, hostname=...,
ca_cert=..., extra_main_cf=..., start=True)`, also a context manager; call
close() when done with it (stop() alone leaves its directory in /tmp).

How it works: the constructor creates /tmp/sallyport-postfix-XXXX (`pf.dir`,
with a symlink to it at `directory`, see Gotchas) holding etc/ (main.cf,
master.cf, the vmailbox table and private copies of cert and key; root-owned),
spool/ (queue_directory, with the sub-directories, owners and modes that
post-install would create, so `postfix check` is clean), lib/ (data_directory,
owned by `postfix`), mail/ (Maildirs, written by `nobody`), maillog and
master.out. start() picks three ports with conftest.free_port(), writes the
config and runs `$daemon_directory/master -d -c etc/` (foreground, no
detaching) under a small Python "reaper" parent (see daemons.REAPER), then polls
until every port greets with this instance's 220 banner, ~0.1 s. If master
exits although `postfix check` finds nothing wrong, or another listener
answers, a port was taken meanwhile, and it retries with new ports. The reaper
is a child subreaper (master's children outlive it by milliseconds and would
otherwise sit as zombies until init reaps them) and has PR_SET_PDEATHSIG, so
Postfix stops even when the test process is SIGKILLed. stop() does what
`postfix stop` does, SIGTERM to master (which signals its process group),
minus its 1 s polling, and returns once every process is gone (~20 ms),
SIGKILLing leftovers after 2 s; it is idempotent, and start() may be called
again (new ports, same mail). close() stops and moves the directory from /tmp
to `directory`, where it stays for inspection with the test's temp files.

Delivered mail: each domain has one Maildir (catch-all virtual_mailbox_maps
entry "@domain domain/"). `maildir(addr)` is its Path, `messages(addr)` the
messages in its new/ whose Delivered-To is addr (all of them for "@domain"),
oldest first, as raw bytes. Postfix stores messages with LF line endings (the
CRLF of the SMTP DATA stream becomes LF, dot-stuffing is undone) and prepends
Return-Path, X-Original-To, Delivered-To and Received headers (with TLS
details for ESMTPS); `body_of()` returns what follows the header block,
`crlf_to_lf()` turns the body sent on the wire into the stored form, and
`header_values()` reads headers. Delivery is asynchronous: use
wait_for_message(addr, count=1, timeout=30).

Gotchas:
- Needs root (master(8) starts as root, daemons drop to the `postfix` user,
  virtual(8) writes the Maildirs as `nobody`); the fixtures skip otherwise.
- Unprivileged Postfix processes use absolute paths in the instance (master
  opens lib/master.lock as `postfix`, virtual(8) writes mail/ as `nobody`), so
  every ancestor must be searchable by others. pytest's temp dirs are 0700,
  and every pytest session that starts resets /tmp/pytest-of-USER to 0700
  (which would break a concurrent session's Postfix), hence the instance in
  /tmp while open. A SIGKILLed test run leaves /tmp/sallyport-postfix-XXXX.
- Postfix keeps re-reading (300 ms steps) main.cf and tables whose mtime is
  the current second, in case they are still being edited: ~1.5 s lost per
  start. Config files are therefore written with an mtime 10 s in the past;
  change parameters with `reconfigure(name=value)`, not by editing main.cf.
- master(8) binds with SO_REUSEPORT, so a port collision with another
  SO_REUSEPORT listener would not fail; the start-up check therefore demands
  this instance's token (`pf.token`) in the banner on every port. It is
  appended to an smtpd_banner given in extra_main_cf that lacks it.
- master(8) logs nothing to stdout/stderr; the log is `maillog_file`
  (`log()`, written by postlogd; lines name the listener, e.g.
  postfix-test/starttls/smtpd). Fatal configuration errors that happen before
  logging is up show only in `check()` (`postfix -c DIR check` on a pty:
  Postfix prints to stderr only when it is a terminal); start-up failures
  include its output.
- The reaper dies with the *thread* that started it (PDEATHSIG semantics):
  start instances from the main thread, not from a short-lived helper thread.
"""
import atexit
import functools
import grp
import os
import pty
import pwd
import secrets
import select
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import free_port
# _group_members: for the fixture tests.
from daemons import (close_at_exit, close_every, group_members as _group_members,  # noqa: F401
                     keep_for_inspection, reaper_argv, searchable_temp_root, stop_supervised)

SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
POSTCONF = "/usr/sbin/postconf"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
DEFAULT_DOMAINS = ("route1.test", "route2.test")

# Queue sub-directories as in $meta_directory/postfix-files (what post-install
# create-missing would make): name -> (owned by mail_owner, group setgid_group, mode).
_QUEUE_DIRS = {
    "active": (True, False, 0o700),
    "bounce": (True, False, 0o700),
    "corrupt": (True, False, 0o700),
    "defer": (True, False, 0o700),
    "deferred": (True, False, 0o700),
    "flush": (True, False, 0o700),
    "hold": (True, False, 0o700),
    "incoming": (True, False, 0o700),
    "private": (True, False, 0o700),
    "maildrop": (True, True, 0o730),
    "public": (True, True, 0o710),
    "pid": (False, False, 0o755),
    "saved": (True, False, 0o700),
    "trace": (True, False, 0o700),
}

_open = set()   # instances not closed yet: closed at exit if their fixture never tore down



class PostfixError(AssertionError):
    """Postfix failed to start, stop or deliver; the message carries its log."""


class _PortTaken(PostfixError):
    """Another listener answered on one of our ports (SO_REUSEPORT sharing)."""


# -- message helpers ------------------------------------------------------------

def body_of(message: bytes) -> bytes:
    """The body of a stored message: everything after the first empty line.

    Postfix stores Maildir messages with LF line endings, so a body sent as
    b"hi\\r\\n" comes back as b"hi\\n" (compare with crlf_to_lf(sent_body))."""
    sep = message.find(b"\n\n")
    if sep < 0:
        raise ValueError("message has no empty line between header and body")
    return message[sep + 2:]


def headers_of(message: bytes) -> bytes:
    """The header block of a stored message (LF line endings, without the empty line)."""
    sep = message.find(b"\n\n")
    return message if sep < 0 else message[:sep + 1]


def header_values(message: bytes, name: str):
    """All values of header `name` (case-insensitive, unfolded) of a stored message."""
    values = []
    matching = False
    for line in headers_of(message).split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if matching:
                values[-1] += b" " + line.strip()
            continue
        key, colon, value = line.partition(b":")
        matching = bool(colon) and key.strip().lower() == name.lower().encode()
        if matching:
            values.append(value.strip())
    return [v.decode("utf-8", "replace") for v in values]


def crlf_to_lf(data: bytes) -> bytes:
    """What Postfix stores for `data` sent in DATA: every CRLF becomes LF."""
    return data.replace(b"\r\n", b"\n")


# -- small helpers ----------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _postconf_defaults():
    """Compiled-in defaults of the parameters we need; independent of /etc/postfix/main.cf."""
    names = ["command_directory", "daemon_directory", "meta_directory", "shlib_directory",
             "mail_owner", "setgid_group", "mail_version"]
    try:
        r = subprocess.run([POSTCONF, "-d", *names], capture_output=True, text=True,
                           check=True, timeout=30, env={"PATH": SBIN_PATH, "LANG": "C"})
    except FileNotFoundError:
        raise PostfixError(f"{POSTCONF} not found: install Postfix (apt-get install postfix)")
    values = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition(" = ")
        values[key.strip()] = value.strip()
    return values


def _write_config_file(path: Path, text: str, mode=0o644):
    """Writes a root-owned config file with an mtime in the past: Postfix re-reads
    main.cf and tables modified in the current second (in case they are still
    being edited) in 300 ms steps, which costs ~1.5 s per start."""
    path.write_text(text)
    os.chown(path, 0, 0)
    os.chmod(path, mode)
    past = time.time() - 10
    os.utime(path, (past, past))


def _searchable_temp_root() -> Path:
    return searchable_temp_root(PostfixError)


# What the readiness check sends a port that expects a PROXY header first.
READINESS_PROXY_HEADER = b"PROXY TCP4 127.0.0.1 127.0.0.1 1 1\r\n"


def _read_banner(host, port, tls_context=None, timeout=2.0, proxy=False):
    """The first reply line of host:port (inside TLS if tls_context, after a
    PROXY header if proxy), or None."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            if proxy:
                raw.sendall(READINESS_PROXY_HEADER)
            sock = tls_context.wrap_socket(raw) if tls_context else raw
            data = b""
            while b"\n" not in data and len(data) < 4096:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            try:
                sock.sendall(b"QUIT\r\n")
            except OSError:
                pass
            return data.split(b"\n", 1)[0].decode("latin-1").rstrip("\r") if data else None
    except (OSError, ssl.SSLError):
        return None


def _read_pid(path: Path):
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _free_ports(n):
    ports = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


# -- the instance --------------------------------------------------------------------

class Postfix:
    """One private Postfix instance; see the module docstring.

    Attributes: host ("127.0.0.1"), plain_port, starttls_port, implicit_port,
    domains, hostname, dir, config_dir, queue_dir, data_dir, mail_dir,
    log_path, cert and key (private copies), ca_cert, token (in the banner),
    proc (the reaper parent of master while running), master_pid (also the
    process group of every Postfix process)."""

    host = "127.0.0.1"

    config_dir = property(lambda self: self.dir / "etc")
    queue_dir = property(lambda self: self.dir / "spool")
    data_dir = property(lambda self: self.dir / "lib")
    mail_dir = property(lambda self: self.dir / "mail")
    log_path = property(lambda self: self.dir / "maillog")
    master_out_path = property(lambda self: self.dir / "master.out")
    cert = property(lambda self: self.config_dir / "cert.pem")
    key = property(lambda self: self.config_dir / "key.pem")

    def __init__(self, directory, cert, key, domains=DEFAULT_DOMAINS, *,
                 hostname="postfix.test", ca_cert=None, extra_main_cf=None, proxy_ports=False,
                 start=True):
        if os.geteuid() != 0:
            raise PostfixError("the Postfix fixture must run as root")
        self.defaults = _postconf_defaults()
        self.path = Path(directory).absolute()   # where the caller wants it
        self.dir = None                            # where it is while open; see _prepare()
        self.domains = [d.lower().rstrip(".") for d in domains]
        if not self.domains:
            raise ValueError("at least one domain is needed")
        self.hostname = hostname
        self.ca_cert = Path(ca_cert).resolve() if ca_cert else None
        self.extra_main_cf = dict(extra_main_cf or {})
        self.token = secrets.token_hex(6)   # identifies our own banner
        self.plain_port = self.starttls_port = self.implicit_port = None
        # With proxy_ports, three more listeners of the same flavours that
        # expect a PROXY header first (smtpd_upstream_proxy_protocol = haproxy).
        self.proxy_ports = proxy_ports
        self.proxy_plain_port = self.proxy_starttls_port = self.proxy_implicit_port = None
        self.proc = None          # the reaper process, parent of master
        self.master_pid = None    # also master's process group id
        self._counter = 0
        self._owner = pwd.getpwnam(self.defaults["mail_owner"])
        self._setgid_group = grp.getgrnam(self.defaults["setgid_group"])
        try:
            self._vuser = pwd.getpwnam("nobody")
        except KeyError:
            self._vuser = self._owner
        self._prepare(Path(cert), Path(key))
        if start:
            try:
                self.start()
            except BaseException:
                self.close()
                raise

    # -- set-up -------------------------------------------------------------------

    def _mkdir(self, path: Path, uid, gid, mode):
        path.mkdir(exist_ok=True)
        os.chown(path, uid, gid)
        os.chmod(path, mode)

    def _prepare(self, cert: Path, key: Path):
        # Unprivileged Postfix processes (master drops to `postfix` to open
        # data_directory/master.lock, virtual(8) writes Maildirs as `nobody`, ...)
        # need every ancestor of the instance to be searchable by others.
        # pytest's temp dirs are 0700, and each pytest session that starts resets
        # /tmp/pytest-of-USER to 0700, so the instance lives in a directory of
        # its own in /tmp while open, `path` being a symlink to it; close()
        # moves it to `path`.
        if self.path.exists() or self.path.is_symlink():
            raise PostfixError(f"{self.path} already exists")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="sallyport-postfix-",
                                         dir=_searchable_temp_root()))
        os.chmod(self.dir, 0o755)
        self.path.symlink_to(self.dir)
        _open.add(self)
        own = self._owner.pw_uid
        self._mkdir(self.config_dir, 0, 0, 0o755)
        self._mkdir(self.queue_dir, 0, 0, 0o755)
        self._mkdir(self.data_dir, own, self._owner.pw_gid, 0o700)
        for name, (owned, setgid, mode) in _QUEUE_DIRS.items():
            self._mkdir(self.queue_dir / name, own if owned else 0,
                        self._setgid_group.gr_gid if setgid else 0, mode)
        self._mkdir(self.mail_dir, self._vuser.pw_uid, self._vuser.pw_gid, 0o700)
        # Private copies: a running smtpd re-reads these on every process start,
        # so they must not change under it (CertAuthority.issue overwrites by name).
        _write_config_file(self.cert, cert.read_text())
        _write_config_file(self.key, key.read_text(), mode=0o600)
        _write_config_file(self.config_dir / "vmailbox",
                           "".join(f"@{d} {d}/\n" for d in self.domains))

    def main_cf(self):
        """The main.cf parameters of this instance, as a dict."""
        d = self.defaults
        p = {
            "compatibility_level": "3.6",
            "command_directory": d["command_directory"],
            "daemon_directory": d["daemon_directory"],
            "meta_directory": d["meta_directory"],
            "shlib_directory": d["shlib_directory"],
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": self._owner.pw_name,
            "setgid_group": self._setgid_group.gr_name,
            "syslog_name": "postfix-test",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.dir),
            "myhostname": self.hostname,
            "mydomain": "postfix-test.invalid",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": self.host,
            "inet_protocols": "ipv4",
            "mynetworks_style": "host",
            "mynetworks": "127.0.0.0/8",
            "relayhost": "",
            "relay_domains": "",
            "default_transport": "error:5.7.1 outbound mail is disabled in tests",
            "relay_transport": "error:5.7.1 outbound mail is disabled in tests",
            "local_transport": "error:5.7.1 local delivery is disabled in tests",
            "alias_maps": "",
            "local_recipient_maps": "",
            "alias_database": "",
            "smtp_dns_support_level": "disabled",
            "lmtp_dns_support_level": "disabled",
            "smtpd_peername_lookup": "no",
            "smtpd_client_restrictions": "",
            "smtpd_helo_restrictions": "",
            "smtpd_sender_restrictions": "",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": "",
            "smtpd_error_sleep_time": "0",
            "smtpd_banner": f"$myhostname ESMTP Postfix (sallyport test {self.token})",
            "smtpd_tls_security_level": "none",
            "smtpd_tls_cert_file": str(self.cert),
            "smtpd_tls_key_file": str(self.key),
            "smtpd_tls_loglevel": "1",
            "smtpd_tls_received_header": "yes",
            "message_size_limit": "40000000",
            "mailbox_size_limit": "0",
            "virtual_mailbox_limit": "0",
            "virtual_mailbox_domains": " ".join(self.domains),
            "virtual_mailbox_base": str(self.mail_dir),
            "virtual_mailbox_maps": f"texthash:{self.config_dir / 'vmailbox'}",
            "virtual_alias_maps": "",
            "virtual_uid_maps": f"static:{self._vuser.pw_uid}",
            "virtual_gid_maps": f"static:{self._vuser.pw_gid}",
            "virtual_minimum_uid": str(min(100, self._vuser.pw_uid)),
            "biff": "no",
            "append_dot_mydomain": "no",
            "in_flow_delay": "0",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "5s",
            "maximal_queue_lifetime": "1h",
            "bounce_queue_lifetime": "1h",
        }
        p.update(self.extra_main_cf)
        if self.token not in p["smtpd_banner"]:   # start() looks for it on every port
            p["smtpd_banner"] += f" ({self.token})"
        return p

    def master_cf(self):
        """master.cf: the three smtpd listeners plus the services that delivery
        needs, all unchrooted. No smtp/lmtp client and no pickup: nothing leaves."""
        h = self.host
        return f"""\
# service         type  private unpriv chroot wakeup maxproc command
{h}:{self.plain_port} inet n - n - - smtpd
  -o syslog_name=postfix-test/plain
  -o smtpd_tls_security_level=none
{h}:{self.starttls_port} inet n - n - - smtpd
  -o syslog_name=postfix-test/starttls
  -o smtpd_tls_security_level=may
{h}:{self.implicit_port} inet n - n - - smtpd
  -o syslog_name=postfix-test/implicit
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
{self._proxy_master_cf()}cleanup   unix       n - n - 0 cleanup
qmgr      unix       n - n 300 1 qmgr
tlsmgr    unix       - - n 1000? 1 tlsmgr
rewrite   unix       - - n - - trivial-rewrite
bounce    unix       - - n - 0 bounce
defer     unix       - - n - 0 bounce
trace     unix       - - n - 0 bounce
verify    unix       - - n - 1 verify
flush     unix       n - n 1000? 0 flush
proxymap  unix       - - n - - proxymap
showq     unix       n - n - - showq
error     unix       - - n - - error
retry     unix       - - n - - error
discard   unix       - - n - - discard
anvil     unix       - - n - 1 anvil
scache    unix       - - n - 1 scache
virtual   unix       - n n - - virtual
postlog   unix-dgram n - n - 1 postlogd
"""

    def _proxy_master_cf(self):
        """The three listeners that take a PROXY header first, if wanted."""
        if not self.proxy_ports:
            return ""
        h = self.host
        return f"""\
{h}:{self.proxy_plain_port} inet n - n - - smtpd
  -o syslog_name=postfix-test/proxy-plain
  -o smtpd_tls_security_level=none
  -o smtpd_upstream_proxy_protocol=haproxy
{h}:{self.proxy_starttls_port} inet n - n - - smtpd
  -o syslog_name=postfix-test/proxy-starttls
  -o smtpd_tls_security_level=may
  -o smtpd_upstream_proxy_protocol=haproxy
{h}:{self.proxy_implicit_port} inet n - n - - smtpd
  -o syslog_name=postfix-test/proxy-implicit
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
  -o smtpd_upstream_proxy_protocol=haproxy
"""

    def _write_config(self):
        _write_config_file(self.config_dir / "main.cf",
                           "".join(f"{k} = {v}\n" for k, v in self.main_cf().items()))
        _write_config_file(self.config_dir / "master.cf", self.master_cf())

    def _env(self):
        return {"PATH": SBIN_PATH, "LANG": "C", "MAIL_CONFIG": str(self.config_dir)}

    # -- life cycle -------------------------------------------------------------------

    def start(self, timeout=START_TIMEOUT):
        """Starts master(8) in the foreground under the reaper, then waits until all
        three ports greet with this instance's 220 banner. Picks new ports (up to
        3 tries) if master dies on a clean configuration or another listener
        answers, i.e. a port was taken since free_port() saw it free. Returns self."""
        if self.running():
            return self
        if self not in _open:
            raise PostfixError("this Postfix instance is closed")
        error = None
        for _ in range(3):
            ports = _free_ports(6 if self.proxy_ports else 3)
            self.plain_port, self.starttls_port, self.implicit_port = ports[:3]
            if self.proxy_ports:
                (self.proxy_plain_port, self.proxy_starttls_port,
                 self.proxy_implicit_port) = ports[3:]
            self._write_config()
            try:
                self._start_master(timeout)
                return self
            except PostfixError as e:
                exited = self.proc is not None and self.proc.poll() is not None
                self.stop()
                error = f"{e}\n--- postfix -c {self.config_dir} check ---\n"
                problems = self.check()
                error += problems or "(no problems found)\n"
                # master exiting on a clean configuration: most likely a port
                # was taken after free_port() saw it free; try other ports.
                if problems or not (exited or isinstance(e, _PortTaken)):
                    break
        raise PostfixError(error)

    def restart(self, timeout=START_TIMEOUT):
        """Starts a stopped instance again on the ports it had: a backend that
        comes back where its clients expect it. Returns self."""
        if not self.running():
            self._start_master(timeout)
        return self

    def _start_master(self, timeout):
        master = os.path.join(self.defaults["daemon_directory"], "master")
        pid_file = self.queue_dir / "pid" / "master.pid"
        pid_file.unlink(missing_ok=True)
        with open(self.master_out_path, "ab") as out:
            # master -d: stay in the foreground, do not detach. It logs to
            # maillog_file; master.out only catches what the binaries print.
            self.proc = subprocess.Popen(
                reaper_argv(False, [
                 master, "-d", "-c", str(self.config_dir)]),
                cwd=str(self.queue_dir), env=self._env(), stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.master_pid = None
        tls = self.client_context(verify=False)
        pending = {self.plain_port: (None, False), self.starttls_port: (None, False),
                   self.implicit_port: (tls, False)}
        if self.proxy_ports:
            pending.update({self.proxy_plain_port: (None, True),
                            self.proxy_starttls_port: (None, True),
                            self.proxy_implicit_port: (tls, True)})
        deadline = time.monotonic() + timeout
        while pending:
            if self.proc.poll() is not None:
                raise PostfixError(f"postfix master exited with status {self.proc.returncode}"
                                   f"{self._diagnostics()}")
            for port, (ctx, proxy) in list(pending.items()):
                banner = _read_banner(self.host, port, ctx, proxy=proxy)
                if banner is None:
                    continue
                if not (banner.startswith("220 ") and self.token in banner):
                    raise _PortTaken(f"port {port} answered {banner!r}, not our Postfix "
                                     f"(token {self.token}){self._diagnostics()}")
                del pending[port]
            if not pending:
                self.master_pid = int(pid_file.read_text().split()[0])
                break
            if time.monotonic() > deadline:
                raise PostfixError(f"ports {sorted(pending)} did not greet within {timeout} s"
                                   f"{self._diagnostics()}")
            time.sleep(0.02)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """Stops every process of this Postfix and waits until they are gone: what
        `postfix stop` does (SIGTERM to master, which signals its process group),
        minus its 1 s polling. Safe to call repeatedly."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        # Normally the reaper exits only when all of Postfix is gone; make sure.
        stop_supervised(proc, lambda: self.master_pid or _read_pid(
            self.queue_dir / "pid" / "master.pid"), STOP_TIMEOUT, PostfixError, "postfix")

    def reconfigure(self, **main_cf):
        """Changes main.cf parameters of a stopped or running instance (restarts it)."""
        self.extra_main_cf.update(main_cf)
        was_running = self.running()
        self.stop()
        if was_running:
            self.start()
        else:
            self._write_config()

    def __enter__(self):
        return self

    def close(self):
        """stop(), then move the instance from its /tmp directory to `path`
        (replacing the symlink), where it stays for inspection with the test's
        other temp files. log(), messages() etc. keep working; start() does not.
        Safe to call repeatedly."""
        self.stop()
        if self not in _open:
            return
        _open.discard(self)
        self.dir = keep_for_inspection(self.dir, self.path)

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"<Postfix {self.dir} plain={self.plain_port} starttls={self.starttls_port}"
                f" implicit={self.implicit_port} {'running' if self.running() else 'stopped'}>")

    # -- inspection -------------------------------------------------------------------

    def log(self):
        """Postfix's log (maillog_file), plus anything the master binary printed."""
        text = ""
        for p in (self.master_out_path, self.log_path):
            try:
                text += p.read_text(errors="replace")
            except FileNotFoundError:
                pass
        return text

    def _diagnostics(self):
        return f"\n--- postfix log {self.log_path} ---\n{self.log()}"

    def check(self, timeout=60):
        """Runs `postfix -c DIR check` (creates missing queue directories, checks
        ownership and permissions) and returns its output; it prints fatal errors
        and warnings only to a terminal, hence the pty. Warnings also go to log()."""
        out_fd, term_fd = pty.openpty()
        try:
            p = subprocess.Popen(["/usr/sbin/postfix", "-c", str(self.config_dir), "check"],
                                 env=self._env(), stdin=subprocess.DEVNULL, stdout=term_fd,
                                 stderr=term_fd, cwd="/")
        finally:
            os.close(term_fd)
        chunks = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([out_fd], [], [], 0.1)
                if ready:
                    try:
                        data = os.read(out_fd, 65536)
                    except OSError:     # EIO: the other side is closed
                        break
                    if not data:
                        break
                    chunks.append(data)
                elif p.poll() is not None:
                    break
        finally:
            os.close(out_fd)
            try:
                rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait()
        text = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
        return text + (f"(exit status {rc})\n" if rc else "")

    def client_context(self, verify=True):
        """A client SSLContext trusting ca_cert (verify=True), or verifying nothing."""
        if verify:
            if self.ca_cert is None:
                raise ValueError("no ca_cert given to this Postfix")
            return ssl.create_default_context(cafile=str(self.ca_cert))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def new_address(self, domain=None, prefix="user"):
        """A recipient address no other caller got from this instance."""
        self._counter += 1
        return f"{prefix}{self._counter}-{secrets.token_hex(3)}@{domain or self.domains[0]}"

    def maildir(self, address) -> Path:
        """The Maildir that receives mail for `address` (one per domain; "@domain" works too)."""
        domain = address.rpartition("@")[2].lower().rstrip(".")
        if domain not in self.domains:
            raise ValueError(f"{address}: not a domain of this Postfix ({self.domains})")
        return self.mail_dir / domain

    def message_files(self, address):
        """Paths of the delivered messages for `address` in new/, oldest first; all
        of the domain's for "@domain", else those whose Delivered-To is address."""
        new = self.maildir(address) / "new"
        try:
            files = [f for f in new.iterdir() if not f.name.startswith(".")]
        except FileNotFoundError:
            return []
        files.sort(key=lambda f: (f.stat().st_mtime_ns, f.name))
        if address.startswith("@"):
            return files
        want = address.lower()
        return [f for f in files
                if want in (v.lower() for v in header_values(f.read_bytes(), "Delivered-To"))]

    def messages(self, address):
        """The delivered messages for `address` (see message_files) as raw bytes (LF endings)."""
        return [f.read_bytes() for f in self.message_files(address)]

    def wait_for_message(self, address, count=1, timeout=30):
        """Polls until at least `count` messages for `address` arrived; returns all of them."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.messages(address)
            if len(msgs) >= count:
                return msgs
            if time.monotonic() > deadline:
                raise PostfixError(f"{len(msgs)} of {count} messages for {address} arrived "
                                   f"within {timeout} s{self._diagnostics()}")
            time.sleep(0.05)


atexit.register(close_at_exit, _open)


# -- fixtures -------------------------------------------------------------------------

def _make_factory(ca, directory_for):
    started = []

    def factory(domains=DEFAULT_DOMAINS, *, hostname="postfix.test", sans=None,
                cert=None, key=None, extra_main_cf=None, proxy_ports=False):
        if os.geteuid() != 0:
            pytest.skip("a private Postfix needs root")
        if cert is None:
            cert, key = ca.issue(hostname, sans or [hostname, "localhost", "127.0.0.1"])
        pf = Postfix(directory_for(len(started)), cert, key, domains, hostname=hostname,
                     ca_cert=ca.cert, extra_main_cf=extra_main_cf, proxy_ports=proxy_ports,
                     start=False)
        started.append(pf)
        pf.start()
        return pf

    def close_all():
        close_every(started, PostfixError)

    return factory, close_all


@pytest.fixture
def postfix_factory(ca, tmp_path):
    """Function-scoped: postfix_factory(domains, ...) starts a fresh Postfix."""
    factory, close_all = _make_factory(ca, lambda i: tmp_path / f"postfix{i}")
    yield factory
    close_all()


@pytest.fixture(scope="module")
def postfix_module_factory(ca, tmp_path_factory):
    """Module-scoped: instances live until the end of the test module."""
    base = tmp_path_factory.mktemp("postfix")
    factory, close_all = _make_factory(ca, lambda i: base / f"postfix{i}")
    yield factory
    close_all()


@pytest.fixture(scope="module")
def postfix(ca, tmp_path_factory):
    """A module-scoped Postfix for route1.test and route2.test (needs no other import)."""
    base = tmp_path_factory.mktemp("postfix")
    factory, close_all = _make_factory(ca, lambda i: base / f"postfix{i}")
    yield factory(DEFAULT_DOMAINS)
    close_all()
