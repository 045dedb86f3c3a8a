"""A private, throw-away Dovecot 2.3 on loopback: the real IMAP, POP3 and
ManageSieve backend for the integration tests.

Each `Dovecot` instance has its own config file, base_dir, state_dir, log
file, passwd-file, Maildirs and Sieve directories, listens only on 127.0.0.1
on ephemeral ports and runs `dovecot -F -c CONFIG` (foreground). The system
Dovecot (/etc/dovecot, /run/dovecot, /var/lib/dovecot, syslog) is neither used
nor touched; it may be stopped. Only the installed programs and the `dovecot`,
`dovenull` and `nobody` users are shared.

Ports, all on `dv.host` (127.0.0.1); every one greets with the instance's
token (`dv.token`) in its greeting:

    dv.imap_port         IMAP, STARTTLS offered, LOGIN only after STARTTLS
    dv.imaps_port        IMAP, implicit TLS
    dv.pop3_port         POP3, STLS offered, USER/PASS only after STLS
    dv.pop3s_port        POP3, implicit TLS
    dv.sieve_port        ManageSieve, STARTTLS offered, AUTHENTICATE only after it
    dv.imap_plain_port   IMAP, cleartext LOGIN allowed (also offers STARTTLS)
    dv.pop3_plain_port   POP3, cleartext USER/PASS allowed (also offers STLS)
    dv.sieve_plain_port  ManageSieve, cleartext AUTHENTICATE allowed (offers STARTTLS)

The three *_plain_port listeners exist unless plain_ports=False (then None).
With proxy_ports=True there are two more, imap_proxy_port (like
imap_plain_port) and imaps_proxy_port (implicit TLS), that take a PROXY
header first (haproxy = yes) and log the client it names (rip=, rport=).
Authentication mechanisms: PLAIN and LOGIN (IMAP LOGIN, POP3 USER/PASS,
AUTHENTICATE PLAIN). TLS: the certificate given (default: issued by the test
CA for the hostname plus localhost and 127.0.0.1), TLS 1.2 or newer.

Fixtures (import the ones a test module uses; each needs only the session
`ca` fixture of conftest.py):

    from dovecot import dovecot, dovecot_factory, dovecot_module_factory

    def test_a(dovecot):                 # module-scoped, imap.route1.test, alice/secret
        dovecot.deliver("alice", b"Subject: x\\r\\n\\r\\nhi\\r\\n")
        with imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port,
                               ssl_context=dovecot.client_context()) as m:
            m.login("alice", "secret")
            ...

    def test_b(dovecot_factory):         # function-scoped: fresh instances
        dv = dovecot_factory(hostname="imap.route2.test", users={"bob": "pw"})

`dovecot_factory` (function scope) and `dovecot_module_factory` (module scope)
take factory(hostname="imap.route1.test", *, users={"alice": "secret"},
sans=[hostname, "localhost", "127.0.0.1"], cert=None, key=None,
plain_ports=True, password_scheme="PLAIN" (or "SHA512-CRYPT"),
extra_conf="" (appended to dovecot.conf), debug=False (auth_debug and
mail_debug into the log)). Fixture teardown closes the instances; so does
interpreter exit for any the teardown never reached.

Without fixtures: `Dovecot(directory, cert, key, users=..., hostname=...,
ca_cert=..., start=True)`, also a context manager; call close() when done
(stop() alone leaves its directory in /tmp).

Mail: `maildir(user)` is the user's Maildir (mail/USER/Maildir, with cur/ new/
tmp/ already created, owned by the mail user `nobody`). `deliver(user, data)`
drops a message into new/ the way an MDA would (owned by the mail user);
Dovecot serves it byte for byte when it has CRLF line endings (LF-only files
are served with CRLF). Another process, e.g. sallyport's embedded SMTP
mailbox with `maildir = dv.maildir("alice")`, may write there too; see the
ownership gotcha below.

Other helpers: log(), wait_log(text), logins() (the successful-login log
lines, which say "TLS" or "secured" = cleartext on loopback), messages(user),
set_user(user, password) (takes effect at once), check() (doveconf -n),
client_context(verify=True) (trusts the test CA).

Sieve: scripts live in sieve/USER/NAME.sieve (the active one is linked from
sieve/USER/.dovecot.sieve); `sieve_scripts(user)` lists the names uploaded
with ManageSieve, `sieve_script(user, name)` returns one's text. A small
ManageSieve client is in sieve_client.py.

How it works: the constructor creates /tmp/sallyport-dovecot-XXXX (`dv.dir`,
with a symlink to it at `directory`, because pytest's temp dirs are 0700 and
Dovecot's unprivileged processes need to traverse the path) holding
dovecot.conf and private copies of cert and key (etc/), the passwd-file and
the per-port "deny" files (auth/, readable by the `dovecot` user the auth
process runs as), base_dir (run/), state_dir (state/), mail/, sieve/,
dovecot.log (log_path, info_log_path and debug_log_path) and master.out
(whatever the master prints before its log is up). start() picks ports with
conftest.free_port(), writes the config and runs `dovecot -F -c CONFIG`
under a small Python "reaper" parent (see daemons.REAPER: a child subreaper with
PR_SET_PDEATHSIG, so Dovecot stops even when the test process is SIGKILLed),
then polls until every port greets with this instance's token. If the master
exits (a port taken meanwhile: Dovecot does not share ports, bind() fails) or
another listener answers, it retries with new ports. stop() sends SIGTERM to
the master and its process group and returns once every process of the
instance is gone (~0.1 s); it is idempotent, and start() may be called again
(new ports, same mail). Start-up takes ~0.1-0.2 s.

Gotchas:
- Needs root (dovecot's master runs as root; the fixtures skip otherwise).
- Mail processes run as `nobody`/`nogroup` (mail_uid/mail_gid). Dovecot
  refuses to access mail as root: "userdb returned 0 as uid" from a userdb,
  "Mail access not allowed for root" for mail_uid = root, whatever
  first_valid_uid says. So Dovecot cannot read a message file that another
  process wrote as root with mode 0600 (sallyport's mailbox creates files
  0600 and missing directories 0700): SELECT sees it, but FETCH/RETR fail
  with an internal error ("open(...) failed: Permission denied ... missing
  +r perm" in log()) and the session is dropped. Either make the writer
  write as the mail user (sallyport's global `user = nobody`: it drops
  privileges after binding, and the Maildir directories already exist owned
  by nobody), or call `dv.adopt(user)` after the delivery, which chowns the
  user's mail to nobody:nogroup. A root-owned file with mode 0644 is readable
  too (Dovecot only needs write access to the directories, which it has).
- Dovecot treats every connection whose remote IP equals its local IP as
  "secured" (login-common: secured = ssl || trusted || remote_ip ==
  local_ip), and login_trusted_networks (here 127.0.0.0/8) marks clients
  trusted as well: on loopback, disable_plaintext_auth = yes and ssl =
  required never bite, and the IMAP greeting has no LOGINDISABLED. Cleartext
  LOGIN on the *_plain_port listeners works for that reason (no need for
  disable_plaintext_auth = no). To make the STARTTLS ports refuse cleartext
  authentication anyway, the first passdb is a `deny = yes` passwd-file
  whose path depends on %{local_port} and %{secured} ("TLS" only when the
  connection is TLS-encrypted): for imap_port, pop3_port and sieve_port
  without TLS it lists every user, so LOGIN/USER+PASS/AUTHENTICATE fail with
  the ordinary "authentication failed" reply ([AUTHENTICATIONFAILED] in
  IMAP, -ERR [AUTH] in POP3, NO in ManageSieve; the log says "User found
  from deny passdb"), while the capabilities still advertise AUTH=PLAIN and
  no LOGINDISABLED. After STARTTLS, and on the plain ports, the deny file is
  empty. Successful logins are logged with "TLS" or "secured" (cleartext on
  loopback), see logins().
- The *_plain_port listeners also advertise STARTTLS/STLS: Dovecot 2.3 has
  no per-listener ssl setting other than implicit TLS.
- Failed logins answer at once: Dovecot 2.3.19 still holds failures for its
  0.5 s flush timer with auth_failure_delay = 0, so both deny passdbs (the
  per-port one, and a last one that a wrong password falls through to) return
  the `nodelay` field; the anvil-auth-penalty socket is disabled (mode = 0),
  else every login from 127.0.0.1 after a failure waits 2-15 s. Only unknown
  users still take 0.5 s. The per-port deny passdb logs "unknown user" (with
  auth_verbose) for every login it lets through; that line is harmless.
- mail_max_userip_connections is 1000 (default 10 per user and IP).
- Stopping signals the master and its whole process group at once (the
  master alone waits ~1 s before stopping its services); the log then shows
  "Killed with signal 15" warnings.
- A SIGKILLed test run leaves /tmp/sallyport-dovecot-XXXX behind.
- The reaper dies with the *thread* that started it (PDEATHSIG semantics):
  start instances from the main thread.
"""
import atexit
import os
import pwd
import grp
import secrets
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

DOVECOT = "/usr/sbin/dovecot"
DOVECONF = "/usr/bin/doveconf"
SBIN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
DEFAULT_HOSTNAME = "imap.route1.test"
DEFAULT_USERS = {"alice": "secret"}
MAIL_USER = "nobody"
MAIL_GROUP = "nogroup"

# listener attribute -> (service, listener name, implicit TLS, cleartext auth allowed)
_LISTENERS = {
    "imap_port": ("imap-login", "imap", False, False),
    "imaps_port": ("imap-login", "imaps", True, False),
    "pop3_port": ("pop3-login", "pop3", False, False),
    "pop3s_port": ("pop3-login", "pop3s", True, False),
    "sieve_port": ("managesieve-login", "sieve", False, False),
    "imap_plain_port": ("imap-login", "imap_plain", False, True),
    "pop3_plain_port": ("pop3-login", "pop3_plain", False, True),
    "sieve_plain_port": ("managesieve-login", "sieve_plain", False, True),
}
PLAIN_PORTS = ("imap_plain_port", "pop3_plain_port", "sieve_plain_port")
# With proxy_ports=True: IMAP listeners that take a PROXY header first
# (haproxy = yes, from haproxy_trusted_networks = 127.0.0.0/8) and log the
# client it names as rip/rport. Cleartext LOGIN is allowed on the plain one
# (it also offers STARTTLS), as on imap_plain_port.
_PROXY_LISTENERS = {
    "imap_proxy_port": ("imap-login", "imap_proxy", False, True),
    "imaps_proxy_port": ("imap-login", "imaps_proxy", True, False),
}
# What the readiness check sends a PROXY port first.
READINESS_PROXY_HEADER = b"PROXY TCP4 127.0.0.1 127.0.0.1 1 1\r\n"

_open = set()   # instances not closed yet: closed at exit if their fixture never tore down



class DovecotError(AssertionError):
    """Dovecot failed to start or stop; the message carries its log."""


class _PortTaken(DovecotError):
    """A port was taken since free_port() saw it free, or another listener answered."""


# -- small helpers ----------------------------------------------------------------

def _searchable_temp_root() -> Path:
    return searchable_temp_root(DovecotError)


def _write_file(path: Path, data, uid=0, gid=0, mode=0o644):
    """Writes a file atomically (rename), with owner and mode set before it appears."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    os.chown(tmp, uid, gid)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _check_user_name(user):
    if not user or any(c in user for c in ":/\n\r\t \\%") or user.startswith("."):
        raise ValueError(f"unsupported user name {user!r}")


def _password_hash(password, scheme):
    scheme = scheme.upper()
    if any(c in password for c in ":\n\r"):
        raise ValueError("passwords for the passwd-file may not contain ':' or newlines")
    if scheme == "PLAIN":
        return "{PLAIN}" + password
    if scheme == "SHA512-CRYPT":
        r = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password,
                           capture_output=True, text=True, check=True, timeout=30)
        return "{SHA512-CRYPT}" + r.stdout.strip()
    raise ValueError(f"unsupported password scheme {scheme!r} (PLAIN or SHA512-CRYPT)")


def _read_greeting(host, port, tls_context=None, sieve=False, timeout=2.0, proxy=False):
    """The greeting of host:port (inside TLS if tls_context, after a PROXY
    header if proxy) as text, or None if nothing answers yet. For
    ManageSieve, everything up to the OK line."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            if proxy:
                raw.sendall(READINESS_PROXY_HEADER)
            sock = tls_context.wrap_socket(raw) if tls_context else raw
            data = b""
            while len(data) < 65536:
                if sieve:
                    lines = data.split(b"\r\n")
                    if any(l.startswith((b"OK", b"NO", b"BYE")) for l in lines[:-1]):
                        break
                elif b"\n" in data:
                    break
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            try:
                sock.sendall(b"LOGOUT\r\n" if sieve else b"QUIT\r\n"
                             if data.startswith(b"+OK") else b"z LOGOUT\r\n")
            except OSError:
                pass
            return data.decode("latin-1") if data else None
    except (OSError, ssl.SSLError):
        return None


# -- the instance --------------------------------------------------------------------

class Dovecot:
    """One private Dovecot instance; see the module docstring.

    Attributes: host ("127.0.0.1"), imap_port, imaps_port, pop3_port,
    pop3s_port, sieve_port, imap_plain_port, pop3_plain_port,
    sieve_plain_port (None without plain_ports), hostname, users (name ->
    password), dir, config_path, base_dir, state_dir, auth_dir, mail_dir,
    sieve_dir, log_path, cert and key (private copies), ca_cert, token (in
    every greeting), mail_uid/mail_gid (of `nobody`/`nogroup`), proc (the
    reaper parent of the master while running), master_pid (also the process
    group of every Dovecot process)."""

    host = "127.0.0.1"

    etc_dir = property(lambda self: self.dir / "etc")
    config_path = property(lambda self: self.dir / "etc" / "dovecot.conf")
    cert = property(lambda self: self.dir / "etc" / "cert.pem")
    key = property(lambda self: self.dir / "etc" / "key.pem")
    auth_dir = property(lambda self: self.dir / "auth")
    passwd_path = property(lambda self: self.dir / "auth" / "passwd")
    base_dir = property(lambda self: self.dir / "run")
    state_dir = property(lambda self: self.dir / "state")
    mail_dir = property(lambda self: self.dir / "mail")
    sieve_dir = property(lambda self: self.dir / "sieve")
    log_path = property(lambda self: self.dir / "dovecot.log")
    master_out_path = property(lambda self: self.dir / "master.out")

    def __init__(self, directory, cert, key, *, users=None, hostname=DEFAULT_HOSTNAME,
                 ca_cert=None, plain_ports=True, password_scheme="PLAIN", extra_conf="",
                 debug=False, proxy_ports=False, start=True):
        if os.geteuid() != 0:
            raise DovecotError("the Dovecot fixture must run as root")
        if not os.path.exists(DOVECOT):
            raise DovecotError(f"{DOVECOT} not found: apt-get install dovecot-imapd "
                               "dovecot-pop3d dovecot-managesieved")
        self.path = Path(directory).absolute()   # where the caller wants it
        self.dir = None                            # where it is while open
        self.hostname = hostname
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.extra_local_ports = set()   # see allow_local_port()
        for user in self.users:
            _check_user_name(user)
        self.password_scheme = password_scheme
        self.ca_cert = Path(ca_cert).resolve() if ca_cert else None
        self.plain_ports = plain_ports
        self.proxy_ports = proxy_ports
        self.extra_conf = extra_conf
        self.debug = debug
        self.token = secrets.token_hex(6)
        for name in {**_LISTENERS, **_PROXY_LISTENERS}:
            setattr(self, name, None)
        self.proc = None
        self.master_pid = None
        self._counter = 0
        mail_pw = pwd.getpwnam(MAIL_USER)
        self.mail_uid, self.mail_gid = mail_pw.pw_uid, grp.getgrnam(MAIL_GROUP).gr_gid
        self._auth_gid = grp.getgrnam("dovecot").gr_gid    # the auth process's group
        self._prepare(Path(cert), Path(key))
        if start:
            try:
                self.start()
            except BaseException:
                self.close()
                raise

    # -- set-up -------------------------------------------------------------------

    def _mkdir(self, path: Path, uid=0, gid=0, mode=0o755):
        path.mkdir(exist_ok=True)
        os.chown(path, uid, gid)
        os.chmod(path, mode)

    def _prepare(self, cert: Path, key: Path):
        if self.path.exists() or self.path.is_symlink():
            raise DovecotError(f"{self.path} already exists")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="sallyport-dovecot-",
                                         dir=_searchable_temp_root()))
        os.chmod(self.dir, 0o755)
        self.path.symlink_to(self.dir)
        _open.add(self)
        self._mkdir(self.etc_dir)
        self._mkdir(self.auth_dir, 0, self._auth_gid, 0o750)
        self._mkdir(self.auth_dir / "deny", 0, self._auth_gid, 0o750)
        self._mkdir(self.base_dir)
        self._mkdir(self.state_dir)
        self._mkdir(self.mail_dir, self.mail_uid, self.mail_gid, 0o700)
        self._mkdir(self.sieve_dir, self.mail_uid, self.mail_gid, 0o700)
        # Private copies: CertAuthority.issue overwrites files by name.
        _write_file(self.cert, cert.read_bytes())
        _write_file(self.key, key.read_bytes(), mode=0o600)
        for user in self.users:
            self._make_user_dirs(user)
        self._write_passwd()

    def _make_user_dirs(self, user):
        home = self.mail_dir / user
        for d in (home, home / "Maildir", *(home / "Maildir" / s for s in ("cur", "new", "tmp")),
                  self.sieve_dir / user):
            self._mkdir(d, self.mail_uid, self.mail_gid, 0o700)

    def _write_passwd(self):
        lines = "".join(f"{u}:{_password_hash(p, self.password_scheme)}::::::\n"
                        for u, p in self.users.items())
        _write_file(self.passwd_path, lines, 0, self._auth_gid, 0o640)
        self._write_deny_files()

    def _write_deny_files(self):
        """The deny passdb's files, one per port and %{secured} value ("" for
        cleartext, "secured" for cleartext on loopback, "TLS"): on the STARTTLS
        ports every user is denied unless the connection is TLS."""
        everyone = "".join(f"{u}:::::::nodelay\n" for u in self.users)
        _write_file(self.auth_dir / "deny-all", everyone, 0, self._auth_gid, 0o640)
        wanted = set()
        for name, (_, _, implicit, cleartext_ok) in self._listeners().items():
            port = getattr(self, name)
            if port is None:
                continue
            for secured in ("", "secured", "TLS"):
                deny = not cleartext_ok and not implicit and secured != "TLS"
                wanted.add(f"{port}-{secured}")
                _write_file(self.auth_dir / "deny" / f"{port}-{secured}",
                            everyone if deny else "", 0, self._auth_gid, 0o640)
        for port in self.extra_local_ports:
            for secured in ("", "secured", "TLS"):
                wanted.add(f"{port}-{secured}")
                _write_file(self.auth_dir / "deny" / f"{port}-{secured}", "", 0,
                            self._auth_gid, 0o640)
        for f in (self.auth_dir / "deny").iterdir():
            if f.name not in wanted:     # ports of an earlier start()
                f.unlink()

    def allow_local_port(self, port):
        """Lets logins through whose local port is `port`: a trusted proxy
        (login_trusted_networks) that names the address its client reached
        (IMAP ID x-connected-port) moves the login to that port, and the
        deny passdb needs a file for it (empty: nothing denied)."""
        self.extra_local_ports.add(port)
        self._write_deny_files()

    def set_user(self, user, password):
        """Adds a user or changes a password; takes effect at once (Dovecot
        re-reads the passwd-file when it changes)."""
        _check_user_name(user)
        self.users[user] = password
        self._make_user_dirs(user)
        self._write_passwd()

    def config_text(self):
        """dovecot.conf of this instance (for the current ports)."""
        d = self.dir
        listeners = {}
        for name, (service, listener, implicit, _) in self._listeners().items():
            port = getattr(self, name)
            if port is None:
                continue
            listeners.setdefault(service, []).append(
                f"  inet_listener {listener} {{\n"
                f"    address = {self.host}\n"
                f"    port = {port}\n"
                f"    ssl = {'yes' if implicit else 'no'}\n"
                + (f"    haproxy = yes\n" if name in _PROXY_LISTENERS else "")
                + f"  }}\n")
        services = "".join(f"service {s} {{\n{''.join(ls)}}}\n" for s, ls in listeners.items())
        debug = "yes" if self.debug else "no"
        return f"""\
# sallyport test instance {self.token} (generated by tests/integration/dovecot.py)
instance_name = sallyport-{self.token}
base_dir = {self.base_dir}
state_dir = {self.state_dir}
log_path = {self.log_path}
info_log_path = {self.log_path}
debug_log_path = {self.log_path}
log_timestamp = "%Y-%m-%d %H:%M:%S "
hostname = {self.hostname}
protocols = imap pop3 sieve
listen = {self.host}
shutdown_clients = yes
login_greeting = Dovecot ready (sallyport test {self.token})
login_trusted_networks = 127.0.0.0/8
{"haproxy_trusted_networks = 127.0.0.0/8" if self.proxy_ports else ""}
verbose_ssl = {debug}

ssl = yes
ssl_cert = <{self.cert}
ssl_key = <{self.key}
ssl_min_protocol = TLSv1.2

disable_plaintext_auth = yes
auth_mechanisms = plain login
auth_verbose = yes
auth_debug = {debug}
mail_debug = {debug}
auth_cache_size = 0
auth_failure_delay = 0
# Loopback connections count as secured (see dovecot.py): this passdb denies
# cleartext authentication on the STARTTLS ports.
passdb {{
  driver = passwd-file
  args = username_format=%u {d}/auth/deny/%{{local_port}}-%{{secured}}
  deny = yes
}}
passdb {{
  driver = passwd-file
  args = username_format=%u {self.passwd_path}
}}
# A wrong password falls through to here: fail at once ("nodelay") instead of
# after Dovecot 2.3's 0.5 s failure-flush timer (auth_failure_delay = 0 is not
# enough in 2.3.19).
passdb {{
  driver = passwd-file
  args = username_format=%u {d}/auth/deny-all
  deny = yes
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.passwd_path}
  default_fields = home={self.mail_dir}/%u
}}

mail_uid = {MAIL_USER}
mail_gid = {MAIL_GROUP}
mail_location = maildir:{self.mail_dir}/%u/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}
protocol imap {{
  mail_max_userip_connections = 1000
}}
protocol pop3 {{
  mail_max_userip_connections = 1000
}}
protocol sieve {{
  mail_max_userip_connections = 1000
}}
plugin {{
  sieve = file:{self.sieve_dir}/%u;active={self.sieve_dir}/%u/.dovecot.sieve
}}

{services}
# no auth penalty (up to 15 s delays for an IP after failed logins)
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}

{self.extra_conf}
"""

    def _env(self):
        return {"PATH": SBIN_PATH, "LANG": "C"}

    def check(self):
        """`doveconf -n -c CONFIG`: returns (exit status, output)."""
        r = subprocess.run([DOVECONF, "-n", "-c", str(self.config_path)], capture_output=True,
                           text=True, timeout=30, env=self._env())
        return r.returncode, r.stdout + r.stderr

    # -- life cycle -------------------------------------------------------------------

    def _listeners(self):
        return {**_LISTENERS, **(_PROXY_LISTENERS if self.proxy_ports else {})}

    def _names(self):
        return [n for n in self._listeners() if self.plain_ports or n not in PLAIN_PORTS]

    def start(self, timeout=START_TIMEOUT):
        """Starts `dovecot -F` under the reaper, then waits until every port greets
        with this instance's token. Picks new ports (up to 3 tries) if the master
        dies on a valid configuration or another listener answers. Returns self."""
        if self.running():
            return self
        if self not in _open:
            raise DovecotError("this Dovecot instance is closed")
        error = None
        for _ in range(3):
            ports = set()
            while len(ports) < len(self._names()):
                ports.add(free_port())
            for name, port in zip(self._names(), sorted(ports)):
                setattr(self, name, port)
            _write_file(self.config_path, self.config_text())
            self._write_deny_files()
            try:
                self._start_master(timeout)
                return self
            except DovecotError as e:
                exited = self.proc is not None and self.proc.poll() is not None
                self.stop()
                rc, out = self.check()
                error = f"{e}\n--- doveconf -n -c {self.config_path} ---\n{out}"
                if rc != 0 or not (exited or isinstance(e, _PortTaken)):
                    break
        raise DovecotError(error)

    def _start_master(self, timeout):
        (self.base_dir / "master.pid").unlink(missing_ok=True)
        with open(self.master_out_path, "ab") as out:
            self.proc = subprocess.Popen(
                reaper_argv(True, [
                 DOVECOT, "-F", "-c", str(self.config_path)]),
                cwd=str(self.dir), env=self._env(), stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.master_pid = None
        tls = self.client_context(verify=False)
        pending = {n: getattr(self, n) for n in self._names()}
        deadline = time.monotonic() + timeout
        while pending:
            if self.proc.poll() is not None:
                raise DovecotError(f"dovecot exited with status {self.proc.returncode}"
                                   f"{self._diagnostics()}")
            for name, port in list(pending.items()):
                greeting = _read_greeting(self.host, port,
                                          tls if self._listeners()[name][2] else None,
                                          sieve=name.startswith("sieve"),
                                          proxy=name in _PROXY_LISTENERS)
                if greeting is None:
                    continue
                if self.token not in greeting:
                    raise _PortTaken(f"{name} {port} answered {greeting!r}, not our Dovecot "
                                     f"(token {self.token}){self._diagnostics()}")
                del pending[name]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise DovecotError(f"ports {pending} did not greet within {timeout} s"
                                   f"{self._diagnostics()}")
            time.sleep(0.02)
        self.master_pid = int((self.base_dir / "master.pid").read_text().split()[0])

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def restart(self, timeout=START_TIMEOUT):
        """Starts a stopped instance again on the ports it had: a backend that
        comes back where its clients expect it. Returns self."""
        if not self.running():
            self._start_master(timeout)
        return self

    def stop(self):
        """Stops every process of this Dovecot (SIGTERM to the master, which stops
        its services and exits) and waits until they are gone; SIGKILLs leftovers
        after 2 s. Safe to call repeatedly."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        stop_supervised(proc, self._master_pgid, STOP_TIMEOUT, DovecotError, "dovecot")

    def _master_pgid(self):
        if self.master_pid is not None:
            return self.master_pid
        try:
            return int((self.base_dir / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def close(self):
        """stop(), then move the instance from /tmp to `path` (replacing the
        symlink), where it stays for inspection with the test's other temp
        files. log(), maildir() etc. keep working; start() does not. Safe to
        call repeatedly."""
        self.stop()
        if self not in _open:
            return
        _open.discard(self)
        self.dir = keep_for_inspection(self.dir, self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        ports = " ".join(f"{n[:-5]}={getattr(self, n)}" for n in self._names())
        return f"<Dovecot {self.hostname} {self.dir} {ports} " \
               f"{'running' if self.running() else 'stopped'}>"

    # -- inspection -------------------------------------------------------------------

    def log(self):
        """Dovecot's log (log_path), after anything the master printed to stdout/stderr."""
        text = ""
        for p in (self.master_out_path, self.log_path):
            try:
                text += p.read_text(errors="replace")
            except FileNotFoundError:
                pass
        return text

    def wait_log(self, text, timeout=10.0):
        """Waits until `text` appears in log(); returns the whole log."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()):
            if time.monotonic() > deadline:
                raise DovecotError(f"{text!r} not in the log within {timeout} s"
                                   f"{self._diagnostics()}")
            time.sleep(0.02)
        return log

    def logins(self):
        """The log's successful login lines, e.g. "imap-login: Info: Login:
        user=<alice>, method=PLAIN, rip=127.0.0.1, lip=127.0.0.1, mpid=..., TLS, ..."
        ("TLS" for a TLS connection, "secured" for cleartext on loopback)."""
        return [line for line in self.log().splitlines() if "-login: Info: Login: " in line]

    def _diagnostics(self):
        return f"\n--- dovecot log {self.log_path} ---\n{self.log()}"

    def client_context(self, verify=True):
        """A client SSLContext trusting ca_cert (verify=True), or verifying nothing."""
        if verify:
            if self.ca_cert is None:
                raise ValueError("no ca_cert given to this Dovecot")
            return ssl.create_default_context(cafile=str(self.ca_cert))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    # -- mail and sieve ---------------------------------------------------------------

    def _user(self, user):
        if user not in self.users:
            raise ValueError(f"{user}: not a user of this Dovecot ({sorted(self.users)})")
        return user

    def maildir(self, user) -> Path:
        """The user's Maildir (cur/ new/ tmp/ exist, owned by the mail user)."""
        return self.mail_dir / self._user(user) / "Maildir"

    def deliver(self, user, data: bytes, name=None) -> Path:
        """Drops a message into the user's Maildir/new/ as an MDA would (written in
        tmp/, owned by the mail user, mode 0600, renamed into new/). Returns its
        path. Use CRLF line endings to get the same bytes back over IMAP/POP3."""
        md = self.maildir(user)
        self._counter += 1
        now = time.time_ns()
        name = name or (f"{now // 10**9}.M{now % 10**9 // 1000}P{os.getpid()}"
                        f"Q{self._counter}.{self.hostname}")
        tmp = md / "tmp" / name
        with open(tmp, "xb") as f:
            f.write(data)
        os.chown(tmp, self.mail_uid, self.mail_gid)
        os.chmod(tmp, 0o600)
        os.rename(tmp, md / "new" / name)
        return md / "new" / name

    def adopt(self, user=None):
        """Makes mail that another process wrote into the Maildir (e.g. sallyport
        running as root: files 0600, new directories 0700) accessible to
        Dovecot: chowns the user's (default: every user's) mail to the mail
        user. Returns the number of entries changed."""
        changed = 0
        for u in ([self._user(user)] if user else list(self.users)):
            for root, dirs, files in os.walk(self.mail_dir / u):
                for n in [root, *(os.path.join(root, x) for x in dirs + files)]:
                    st = os.lstat(n)
                    if (st.st_uid, st.st_gid) != (self.mail_uid, self.mail_gid):
                        os.lchown(n, self.mail_uid, self.mail_gid)
                        changed += 1
        return changed

    def messages(self, user):
        """Raw bytes of the user's messages in new/ and cur/, oldest first."""
        md = self.maildir(user)
        files = [f for sub in ("new", "cur") for f in (md / sub).iterdir()
                 if not f.name.startswith(".")]
        files.sort(key=lambda f: (f.stat().st_mtime_ns, f.name))
        return [f.read_bytes() for f in files]

    def sieve_scripts(self, user):
        """Names of the user's Sieve scripts (uploaded with ManageSieve), sorted."""
        d = self.sieve_dir / self._user(user)
        return sorted(f.name[:-len(".sieve")] for f in d.glob("*.sieve")
                      if not f.name.startswith(".") and f.is_file())

    def sieve_script(self, user, name):
        """The text of one of the user's Sieve scripts."""
        with open(self.sieve_dir / self._user(user) / f"{name}.sieve", newline="") as f:
            return f.read()

    def active_sieve_script(self, user):
        """Name of the user's active script, or None."""
        link = self.sieve_dir / self._user(user) / ".dovecot.sieve"
        if not link.is_symlink():
            return None
        return Path(os.readlink(link)).name.removesuffix(".sieve")


atexit.register(close_at_exit, _open)


# -- fixtures -------------------------------------------------------------------------

def _make_factory(ca, directory_for):
    started = []

    def factory(hostname=DEFAULT_HOSTNAME, *, users=None, sans=None, cert=None, key=None,
                plain_ports=True, password_scheme="PLAIN", extra_conf="", debug=False,
                proxy_ports=False):
        if os.geteuid() != 0:
            pytest.skip("a private Dovecot needs root")
        if not os.path.exists(DOVECOT):
            pytest.skip(f"{DOVECOT} is not installed")
        if cert is None:
            cert, key = ca.issue(hostname, sans or [hostname, "localhost", "127.0.0.1"])
        dv = Dovecot(directory_for(len(started)), cert, key, users=users, hostname=hostname,
                     ca_cert=ca.cert, plain_ports=plain_ports,
                     password_scheme=password_scheme, extra_conf=extra_conf, debug=debug,
                     proxy_ports=proxy_ports, start=False)
        started.append(dv)
        dv.start()
        return dv

    def close_all():
        close_every(started, DovecotError)

    return factory, close_all


@pytest.fixture
def dovecot_factory(ca, tmp_path):
    """Function-scoped: dovecot_factory(hostname, users=..., ...) starts a fresh Dovecot."""
    factory, close_all = _make_factory(ca, lambda i: tmp_path / f"dovecot{i}")
    yield factory
    close_all()


@pytest.fixture(scope="module")
def dovecot_module_factory(ca, tmp_path_factory):
    """Module-scoped: instances live until the end of the test module."""
    base = tmp_path_factory.mktemp("dovecot")
    factory, close_all = _make_factory(ca, lambda i: base / f"dovecot{i}")
    yield factory
    close_all()


@pytest.fixture(scope="module")
def dovecot(ca, tmp_path_factory):
    """A module-scoped Dovecot for imap.route1.test with user alice/secret."""
    base = tmp_path_factory.mktemp("dovecot")
    factory, close_all = _make_factory(ca, lambda i: base / f"dovecot{i}")
    yield factory(DEFAULT_HOSTNAME)
    close_all()
