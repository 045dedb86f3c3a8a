"""Shared fixtures for the integration tests.

Everything runs on loopback with ephemeral ports and certificates generated
per test session. Every process started here is killed at teardown.
"""
import os
import shlex
import socket
import subprocess
import time
from pathlib import Path

import pytest

SALLYPORT = os.environ.get(
    "SALLYPORT", str(Path(__file__).resolve().parents[2] / "sallyport"))
# A command the daemon runs under (make valgrind: valgrind with
# --error-exitcode), so a memory error shows as an unexpected exit code.
WRAPPER = shlex.split(os.environ.get("SALLYPORT_WRAPPER", ""))
READY_TIMEOUT = 60.0 if WRAPPER else 20.0
# SALLYPORT_TEST_WORKERS=N runs every daemon of the suite with `workers = N`
# (tests that set workers themselves keep theirs).
TEST_WORKERS = os.environ.get("SALLYPORT_TEST_WORKERS")
# Lines a sanitizer build prints; any of them in a log fails the test.
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "WARNING: AddressSanitizer", "WARNING: ThreadSanitizer")


def _port_range():
    """Test ports come from below the kernel's ephemeral range: a port that
    bind(0) hands out can meanwhile become the source port of an outgoing
    connection, and bind(0) may hand out the same port twice in a row."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    first = 12000
    if low - first < 2000:
        first = 1025
    return first, low


def _worker_slice(first, end):
    """Under pytest-xdist (make check runs the suite on every core), each
    worker process hands out ports from a slice of the range of its own, so
    that two workers never hand out the same port."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count < 2:
        return first, end
    index = int(worker[2:]) % count
    span = (end - first) // count
    return first + index * span, first + (index + 1) * span


_PORTS_FIRST, _PORTS_END = _worker_slice(*_port_range())
# Where this process starts looking (apart from other test processes), and
# every port it handed out: none is handed out twice.
_ports_next = _PORTS_FIRST + (os.getpid() * 7919) % (_PORTS_END - _PORTS_FIRST)
_ports_given = set()


def free_port():
    """A TCP port on 127.0.0.1, below the ephemeral range, that was free a
    moment ago and that this test run has not handed out before."""
    global _ports_next
    for _ in range(_PORTS_END - _PORTS_FIRST):
        port = _ports_next
        _ports_next = port + 1 if port + 1 < _PORTS_END else _PORTS_FIRST
        if port in _ports_given:
            continue
        with socket.socket() as s:
            # As the daemon binds: TIME_WAIT leftovers do not count, a
            # listener does.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _ports_given.add(port)
        return port
    raise RuntimeError("no free TCP port below the ephemeral range")


def refused(port):
    """True when a connection to 127.0.0.1:port is refused (nothing listens)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return False
    except ConnectionRefusedError:
        return True


def wait_for(predicate, timeout=READY_TIMEOUT, what="condition"):
    """Polls predicate until it returns a true value; fails the test after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class CertAuthority:
    """A throw-away CA that issues leaf certificates for given DNS names."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert = self.dir / "ca.pem"
        self.key = self.dir / "ca.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "30", "-subj", "/CN=sallyport test CA",
             "-keyout", str(self.key), "-out", str(self.cert)],
            check=True, capture_output=True)

    def issue(self, name, sans=None):
        """Issues a certificate for `sans` (default [name]); returns (cert, key) paths."""
        sans = sans or [name]
        safe = name.replace("*", "wildcard")
        key = self.dir / f"{safe}.key"
        csr = self.dir / f"{safe}.csr"
        cert = self.dir / f"{safe}.pem"
        ext = self.dir / f"{safe}.ext"
        alt = ",".join(("IP:" if s.replace(".", "").isdigit() or ":" in s else "DNS:") + s
                       for s in sans)
        ext.write_text(f"subjectAltName={alt}\nbasicConstraints=CA:FALSE\n"
                       "keyUsage=digitalSignature,keyEncipherment\n"
                       "extendedKeyUsage=serverAuth\n")
        subprocess.run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-subj", f"/CN={sans[0]}", "-keyout", str(key),
                        "-out", str(csr)], check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.cert),
                        "-CAkey", str(self.key), "-CAcreateserial", "-days", "30",
                        "-extfile", str(ext), "-out", str(cert)],
                       check=True, capture_output=True)
        return cert, key


@pytest.fixture(scope="session")
def ca(tmp_path_factory):
    return CertAuthority(tmp_path_factory.mktemp("ca"))


def with_test_workers(config_text):
    """The config with `workers = TEST_WORKERS` in [global], unless it sets workers."""
    if not TEST_WORKERS or "\nworkers =" in "\n" + config_text:
        return config_text
    line = f"workers = {TEST_WORKERS}\n"
    if "[global]\n" in config_text:
        return config_text.replace("[global]\n", "[global]\n" + line, 1)
    return "[global]\n" + line + config_text


class Sallyport:
    """One running sallyport process with a given config."""

    def __init__(self, directory: Path, config_text: str, name="sallyport", hosts=None,
                 nofile=None):
        """hosts: the text of an /etc/hosts that this sallyport alone sees
        (bind-mounted in a mount namespace of its own), e.g. to give a backend
        name several addresses. nofile: its RLIMIT_NOFILE (prlimit(1))."""
        config_text = with_test_workers(config_text)
        self.dir = directory
        self.expected_exit = False  # set by tests that make sallyport exit on purpose
        self.config = directory / f"{name}.conf"
        self.config.write_text(config_text)
        self.log_path = directory / f"{name}.log"
        self._log = open(self.log_path, "wb")
        prefix = []
        if hosts is not None:
            hosts_file = directory / f"{name}.hosts"
            hosts_file.write_text(hosts)
            prefix = ["unshare", "--mount", "sh", "-c",
                      'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts_file)]
        if nofile is not None:
            prefix = prefix + ["prlimit", f"--nofile={nofile}:{nofile}", "--"]
        self.proc = subprocess.Popen(prefix + WRAPPER + [SALLYPORT, "-c", str(self.config)],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        try:
            wait_for(self._ready, what=f"sallyport ready (log: {self.log_path})")
        except AssertionError:
            self.stop()
            raise AssertionError(f"sallyport did not start:\n{self.log()}")

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(
                f"sallyport exited with {self.proc.returncode}:\n{self.log()}")
        return "sallyport ready" in self.log()

    def log(self):
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text, timeout=READY_TIMEOUT):
        """Waits until `text` appears in the log; returns the whole log."""
        wait_for(lambda: text in self.log(), timeout, what=f"log line {text!r}")
        return self.log()

    def stop(self):
        """SIGTERM (a graceful stop: sessions may finish), and if sessions a
        test left open hold it up, SIGTERM again (stop at once)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def sallyport(tmp_path):
    """Factory: sallyport(config_text, name=...) starts a process and waits until ready."""
    started = []

    def start(config_text, name="sallyport", hosts=None, nofile=None):
        sp = Sallyport(tmp_path, config_text, name, hosts, nofile)
        started.append(sp)
        return sp

    yield start
    reports = []
    for sp in started:
        code = sp.stop()
        log = sp.log()
        if any(marker in log for marker in SANITIZER_MARKERS):
            reports.append(f"{sp.log_path}:\n{log}")
        elif code not in (0, -15) and sp.proc.returncode is not None and not sp.expected_exit:
            reports.append(f"{sp.log_path}: exited with {code}:\n{log[-4000:]}")
    assert not reports, "sallyport reported a problem:\n" + "\n".join(reports)


def run_check(config_text, directory: Path):
    """Runs `sallyport -t -c FILE`; returns (exit code, combined output)."""
    conf = directory / "check.conf"
    conf.write_text(config_text)
    r = subprocess.run([SALLYPORT, "-t", "-c", str(conf)], capture_output=True, text=True,
                       timeout=30)
    return r.returncode, r.stdout + r.stderr
