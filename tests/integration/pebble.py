"""A private, throw-away ACME CA for the integration tests: Debian's `pebble`
(2.4.0) with `pebble-challtestsrv` as its DNS server.

pebble-challtestsrv runs as a DNS server only (no challenge servers of its
own): every A query gets 127.0.0.1, AAAA queries get no answer. pebble uses
it (-dnsserver), so whatever name is ordered, its http-01 and tls-alpn-01
validations go to 127.0.0.1:http_port and 127.0.0.1:tls_port, where the
thing under test (sallyport's ACME client) must answer. Validation is real:
PEBBLE_VA_ALWAYS_VALID is never set (passing it in env is an error).

pebble runs with PEBBLE_VA_NOSLEEP=1 (no random 0-15 s sleep before a
validation), PEBBLE_WFE_NONCEREJECT=0 (no random badNonce rejections) and
PEBBLE_AUTHZREUSE=0 (every order needs fresh challenges; pebble's default
reuses valid authorizations 50% of the time); `env` adds or overrides
variables (e.g. {"PEBBLE_WFE_NONCEREJECT": "100"} to test badNonce retries).

Its ACME endpoint is HTTPS at `directory_url` (https://127.0.0.1:PORT/dir)
with a certificate from the test CA (conftest's CertAuthority) for
IP:127.0.0.1 and DNS:localhost; `ca_file` is the PEM that verifies it. The
root that signs the certificates pebble issues is not the test CA: pebble
makes a new root and intermediate at every start; `root_pem()` /
`root_file()` and `intermediate_pem()` fetch them from the management
interface (https://127.0.0.1:MGMT/roots/0, /intermediates/0).

    from pebble import pebble_factory

    def test_x(pebble_factory):
        pb = pebble_factory(http_port=p1, tls_port=p2, validity=120)
        ... ACME client with directory pb.directory_url, trusting pb.ca_file ...
        assert issued chain verifies against pb.root_file()
        pb.stop()            # the CA is down (connections refused)
        pb.start()           # up again on the same ports -- with NO state:
                             # accounts, orders, certificates and the root
                             # of the previous run are gone

`pebble_factory` (function scope) and `pebble_module_factory` (module scope)
take factory(http_port=5002, tls_port=5001, *, validity=None, env=None).
Fixture teardown closes every instance (kills both processes), also when the
test failed; interpreter exit closes any the teardown never reached.

Without fixtures: Pebble(directory, ca, http_port=..., tls_port=...,
validity=None, env=None, start=True); also a context manager; close() when
done.
"""
import atexit
import json
import os
import random
import socket
import ssl
import struct
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port
from daemons import close_at_exit, close_every, reaper_argv, stop_supervised

PEBBLE = "/usr/bin/pebble"
CHALLTESTSRV = "/usr/bin/pebble-challtestsrv"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
HOST = "127.0.0.1"

_open = set()


class PebbleError(Exception):
    pass


def dns_query_a(port, name, host=HOST, timeout=2.0):
    """Asks the DNS server at host:port (UDP) for name's A records; returns the
    addresses as strings (empty list: no answer records). Raises OSError
    (e.g. socket.timeout) when nothing answers."""
    qid = random.randrange(1 << 16)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query, (host, port))
        while True:
            data = s.recv(4096)
            if len(data) >= 12 and struct.unpack("!H", data[:2])[0] == qid:
                break
    _, flags, qd, an, _, _ = struct.unpack("!HHHHHH", data[:12])
    if flags & 0x000f:
        raise PebbleError(f"DNS answer for {name}: rcode {flags & 0x000f}")
    pos = 12
    for _ in range(qd):                     # skip the question(s)
        pos = _skip_name(data, pos) + 4
    addresses = []
    for _ in range(an):
        pos = _skip_name(data, pos)
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", data[pos:pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            addresses.append(socket.inet_ntoa(data[pos:pos + 4]))
        pos += rdlen
    return addresses


def _skip_name(data, pos):
    while True:
        n = data[pos]
        if n == 0:
            return pos + 1
        if n & 0xc0 == 0xc0:                # compression pointer ends the name
            return pos + 2
        pos += 1 + n


class Pebble:
    """pebble + pebble-challtestsrv (DNS only) on 127.0.0.1.

    Attributes: directory_url, ca_file (verifies pebble's HTTPS: the test CA),
    port (ACME), management_port, dns_port, dns_management_port (challtestsrv's
    HTTP management API), http_port / tls_port (where validations go), validity,
    config_path, log_path / dns_log_path, dir."""

    def __init__(self, directory: Path, ca, http_port=5002, tls_port=5001, *,
                 validity=None, env=None, start=True):
        """ca: conftest's CertAuthority; it issues pebble's HTTPS certificate.
        validity: certificateValidityPeriod in seconds (None: pebble's default,
        157766400 s = 5 years); pebble sets notAfter = notBefore + validity - 1 s
        (pebble logs "Using certificate validity period of N seconds").
        env: extra environment for pebble."""
        env = dict(env or {})
        if "PEBBLE_VA_ALWAYS_VALID" in env:
            raise ValueError("PEBBLE_VA_ALWAYS_VALID: the tests validate challenges for real")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.http_port = http_port
        self.tls_port = tls_port
        self.validity = validity
        self.extra_env = env
        self.ca_file = Path(ca.cert)
        self.cert, self.key = ca.issue("pebble.localhost", ["localhost", HOST])
        self.config_path = self.dir / "pebble-config.json"
        self.log_path = self.dir / "pebble.log"
        self.dns_log_path = self.dir / "challtestsrv.log"
        self.port = self.management_port = self.dns_port = self.dns_management_port = None
        self.proc = self.dns_proc = None
        self._pids = {}             # "pebble"/"dns" -> pid of the program under the reaper
        self.generation = 0         # how many times pebble was started
        self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        _open.add(self)
        if start:
            try:
                self._first_start()
            except BaseException:
                self.close()
                raise

    # -- life cycle -------------------------------------------------------------------

    @property
    def directory_url(self):
        return f"https://{HOST}:{self.port}/dir"

    @property
    def management_url(self):
        return f"https://{HOST}:{self.management_port}"

    def _first_start(self):
        """Picks ports and starts both programs; new ports (up to 3 tries) when a
        program exits at once or a port does not answer (taken meanwhile)."""
        error = None
        for _ in range(3):
            self.port, self.management_port = free_port(), free_port()
            self.dns_port, self.dns_management_port = free_port(), free_port()
            try:
                self._start_dns()
                self.start()
                return self
            except PebbleError as e:
                error = e
                self.stop()
                self._stop_dns()
        raise error

    def _spawn(self, which, argv, env, log_path):
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(reaper_argv(False, argv), cwd=str(self.dir), env=env,
                                    stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self._pids.pop(which, None)
        return proc

    def _program_pid(self, proc, which):
        """The pid of the program the reaper `proc` runs (its child, in a session
        and process group of its own, so pid == pgid)."""
        if which not in self._pids and proc is not None:
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry}/stat", "rb") as f:
                        fields = f.read().rsplit(b")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                if int(fields[1]) == proc.pid:
                    self._pids[which] = int(entry)
                    break
        return self._pids.get(which)

    def _start_dns(self, timeout=START_TIMEOUT):
        argv = [CHALLTESTSRV, "-dns01", f"{HOST}:{self.dns_port}",
                "-defaultIPv4", HOST, "-defaultIPv6", "",
                "-http01", "", "-https01", "", "-tlsalpn01", "",
                "-management", f"{HOST}:{self.dns_management_port}"]
        self.dns_proc = self._spawn("dns", argv, None, self.dns_log_path)
        deadline = time.monotonic() + timeout
        while True:
            if self.dns_proc.poll() is not None:
                raise PebbleError(f"pebble-challtestsrv exited with {self.dns_proc.returncode}"
                                  f"{self._diagnostics()}")
            try:
                # Its management API answers, and the DNS server itself.
                self.dns_post("/set-default-ipv4", {"ip": HOST})
                if dns_query_a(self.dns_port, "ready.pebble.test", timeout=0.2) == [HOST]:
                    break
            except (OSError, PebbleError):
                pass
            if time.monotonic() > deadline:
                raise PebbleError(f"pebble-challtestsrv not ready within {timeout} s"
                                  f"{self._diagnostics()}")
            time.sleep(0.02)
        self._program_pid(self.dns_proc, "dns")

    def _write_config(self):
        conf = {
            "listenAddress": f"{HOST}:{self.port}",
            "managementListenAddress": f"{HOST}:{self.management_port}",
            "certificate": str(self.cert),
            "privateKey": str(self.key),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if self.validity is not None:
            conf["certificateValidityPeriod"] = int(self.validity)
        self.config_path.write_text(json.dumps({"pebble": conf}, indent=2) + "\n")

    def _env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
        env.update(PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        env.update(self.extra_env)
        return env

    def start(self, timeout=START_TIMEOUT):
        """Starts pebble (again) on its ports and waits until GET /dir answers.
        A restarted pebble has none of the previous run's state: no accounts,
        orders, authorizations or certificates, and a NEW root and
        intermediate (fetch root_pem() again). Returns self."""
        if self not in _open:
            raise PebbleError("this Pebble instance is closed")
        if self.running():
            return self
        if self.dns_proc is None or self.dns_proc.poll() is not None:
            self._start_dns(timeout)
        self._write_config()
        self.generation += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.generation} ---\n".encode())
        self.proc = self._spawn("pebble", [PEBBLE, "-config", str(self.config_path),
                                           "-dnsserver", f"{HOST}:{self.dns_port}"],
                                self._env(), self.log_path)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise PebbleError(f"pebble exited with {self.proc.returncode}"
                                  f"{self._diagnostics()}")
            try:
                d = self.directory()
                if "newNonce" in d:
                    self.get(self.management_url + "/roots/0")
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise PebbleError(f"pebble: {self.directory_url} not served within {timeout} s"
                                  f"{self._diagnostics()}")
            time.sleep(0.02)
        self._program_pid(self.proc, "pebble")
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """Stops pebble (the CA is down: its ports refuse connections); the DNS
        server keeps running. Safe to call repeatedly."""
        proc, self.proc = self.proc, None
        if proc is not None:
            pid = self._program_pid(proc, "pebble")    # before the reaper is gone
            self._pids.pop("pebble", None)
            stop_supervised(proc, lambda: pid, STOP_TIMEOUT, PebbleError, "pebble")

    def _stop_dns(self):
        proc, self.dns_proc = self.dns_proc, None
        if proc is not None:
            pid = self._program_pid(proc, "dns")
            self._pids.pop("dns", None)
            stop_supervised(proc, lambda: pid, STOP_TIMEOUT, PebbleError,
                            "pebble-challtestsrv")

    def close(self):
        """Stops both programs (SIGTERM, SIGKILL for leftovers). Safe to call
        repeatedly; start() does not work afterwards."""
        _open.discard(self)
        try:
            self.stop()
        finally:
            self._stop_dns()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"<Pebble {self.directory_url} mgmt={self.management_port} "
                f"dns={self.dns_port} http={self.http_port} tls={self.tls_port} "
                f"{'running' if self.running() else 'stopped'}>")

    # -- HTTP -------------------------------------------------------------------------

    def get(self, url, timeout=5.0):
        """GET url (pebble's ACME or management HTTPS, verified with ca_file);
        returns the body as bytes. Raises OSError (urllib.error.*) on failure."""
        with urllib.request.urlopen(url, context=self._ssl, timeout=timeout) as r:
            return r.read()

    def directory(self):
        """The ACME directory (GET directory_url) as a dict."""
        return json.loads(self.get(self.directory_url))

    def root_pem(self):
        """The root that signs this run's issued certificates (PEM text)."""
        return self.get(self.management_url + "/roots/0").decode()

    def intermediate_pem(self):
        """The intermediate that signs this run's leaf certificates (PEM text)."""
        return self.get(self.management_url + "/intermediates/0").decode()

    def root_file(self):
        """root_pem() written to a file (one per pebble run); returns its path."""
        path = self.dir / f"root-{self.generation}.pem"
        path.write_text(self.root_pem())
        return path

    def intermediate_file(self):
        """intermediate_pem() written to a file (one per pebble run); returns its path."""
        path = self.dir / f"intermediate-{self.generation}.pem"
        path.write_text(self.intermediate_pem())
        return path

    def cert_status(self, serial_hex):
        """pebble's record of an issued certificate (management
        /cert-status-by-serial/SERIAL): a dict with Certificate (PEM), Serial,
        Status ("Valid"/"Revoked"), Reason, RevokedAt. serial_hex without 0x."""
        return json.loads(self.get(f"{self.management_url}/cert-status-by-serial/"
                                   f"{serial_hex.lower().lstrip('0') or '0'}"))

    def dns_post(self, path, payload, timeout=2.0):
        """POSTs JSON to pebble-challtestsrv's management API (plain HTTP), e.g.
        dns_post("/set-servfail", {"host": "x.test."}) or
        dns_post("/add-a", {"host": "x.test.", "addresses": ["127.0.0.2"]})."""
        req = urllib.request.Request(
            f"http://{HOST}:{self.dns_management_port}{path}",
            data=json.dumps(payload).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()

    def resolve(self, name):
        """A records for name from the DNS server pebble uses."""
        return dns_query_a(self.dns_port, name)

    # -- inspection -------------------------------------------------------------------

    def log(self):
        """pebble's output (all runs, each after a '--- start N ---' line)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def dns_log(self):
        try:
            return self.dns_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _diagnostics(self):
        return (f"\n--- pebble log {self.log_path} ---\n{self.log()[-4000:]}"
                f"\n--- challtestsrv log {self.dns_log_path} ---\n{self.dns_log()[-2000:]}")


atexit.register(close_at_exit, _open)


# -- fixtures -------------------------------------------------------------------------

def _make_factory(ca, directory_for):
    started = []

    def factory(http_port=5002, tls_port=5001, *, validity=None, env=None):
        for program in (PEBBLE, CHALLTESTSRV):
            if not os.path.exists(program):
                pytest.skip(f"{program} is not installed")
        pb = Pebble(directory_for(len(started)), ca, http_port, tls_port,
                    validity=validity, env=env, start=False)
        started.append(pb)
        pb._first_start()
        return pb

    def close_all():
        close_every(started, PebbleError)

    return factory, close_all


@pytest.fixture
def pebble_factory(ca, tmp_path):
    """Function-scoped: pebble_factory(http_port, tls_port, validity=..., env=...)."""
    factory, close_all = _make_factory(ca, lambda i: tmp_path / f"pebble{i}")
    yield factory
    close_all()


@pytest.fixture(scope="module")
def pebble_module_factory(ca, tmp_path_factory):
    """Module-scoped: instances live until the end of the test module."""
    base = tmp_path_factory.mktemp("pebble")
    factory, close_all = _make_factory(ca, lambda i: base / f"pebble{i}")
    yield factory
    close_all()
