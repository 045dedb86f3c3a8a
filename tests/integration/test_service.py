"""Running as a service: `make install` lays out the tree (PREFIX,
DESTDIR), systemd-analyze accepts the unit it installs, and the daemon
tells a notify socket (sd_notify's protocol, $NOTIFY_SOCKET) READY=1 once
it accepts, RELOADING=1 then READY=1 around a reload (also a refused one),
and STOPPING=1 when a graceful stop begins."""
import os
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import SALLYPORT, WRAPPER, free_port
from fakebackend import connect, read_reply
from smtp_helpers import issue

REPO = Path(__file__).resolve().parents[2]
NOTIFY_TIMEOUT = 60 if WRAPPER else 20


def make_install(*args):
    """`make install` of the binary under test (never rebuilt here)."""
    binary = str(Path(SALLYPORT).resolve())
    # Not the outer make's flags (make check's jobserver, an asan BUILD=...).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "-s", "-C", str(REPO), "-o", binary, f"BIN={binary}",
                           "install", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_make_install_lays_out_the_tree(tmp_path):
    dest = tmp_path / "dest"
    r = make_install(f"DESTDIR={dest}", "PREFIX=/usr")
    assert r.returncode == 0, r.stdout + r.stderr
    expected = {
        "usr/sbin/sallyport": 0o755,
        "usr/share/man/man8/sallyport.8": 0o644,
        "usr/share/man/man5/sallyport.conf.5": 0o644,
        "usr/share/doc/sallyport/examples/sallyport.conf": 0o644,
        "usr/share/doc/sallyport/OPERATIONS.md": 0o644,
        "usr/lib/systemd/system/sallyport.service": 0o644,
        "usr/lib/sysusers.d/sallyport.conf": 0o644,
    }
    found = {str(p.relative_to(dest)): stat.S_IMODE(p.stat().st_mode)
             for p in dest.rglob("*") if p.is_file()}
    assert found == expected
    unit = (dest / "usr/lib/systemd/system/sallyport.service").read_text()
    assert "ExecStart=/usr/sbin/sallyport -c /etc/sallyport/sallyport.conf\n" in unit
    assert "Type=notify\n" in unit and "ExecReload=kill -HUP $MAINPID\n" in unit
    assert "@" not in unit.replace("@system-service", "")
    installed = subprocess.run([str(dest / "usr/sbin/sallyport"), "-V"], capture_output=True,
                               text=True, timeout=30)
    assert installed.stdout.startswith("sallyport ")


def test_the_example_config_passes_the_check(ca, tmp_path):
    """The installed example, its certificate and CA paths pointed at test files."""
    cert, key = issue(ca, "mail.b.example")
    text = (REPO / "dist/sallyport.conf").read_text()
    text = text.replace("/etc/sallyport/tls/mail.b.example/fullchain.pem", str(cert))
    text = text.replace("/etc/sallyport/tls/mail.b.example/privkey.pem", str(key))
    text = text.replace("/etc/sallyport/internal-ca.pem", str(ca.cert))
    conf = tmp_path / "example.conf"
    conf.write_text(text)
    r = subprocess.run([SALLYPORT, "-t", "-c", str(conf)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_systemd_analyze_accepts_the_unit(tmp_path):
    prefix = tmp_path / "prefix"
    r = make_install(f"PREFIX={prefix}")
    assert r.returncode == 0, r.stdout + r.stderr
    unit = prefix / "lib/systemd/system/sallyport.service"
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", "--recursive-errors=no",
                        str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    # The check has teeth: a misspelt setting fails it.
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notifyy"))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", "--recursive-errors=no",
                        str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(NOTIFY_TIMEOUT)

    def next(self):
        """The next message, as {key: value}."""
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n") if line)

    def close(self):
        self.sock.close()


@pytest.fixture
def notified(ca, tmp_path):
    """sallyport started with NOTIFY_SOCKET; yields (process, notify socket, config path)."""
    cert, key = issue(ca, "mail.notify.test")
    port, box_port = free_port(), free_port()
    conf = tmp_path / "notify.conf"
    conf.write_text(f"[global]\nlog_level = info\n[certificate c]\ncert = {cert}\nkey = {key}\n"
                    f"[listener submission]\naddress = 127.0.0.1:{port}\nhostname = gw.test\n"
                    f"[mailbox box]\naddress = 127.0.0.1:{box_port}\n"
                    f"maildir = {tmp_path / 'mail'}\n[route r]\nsni = *\nbackend = box\n")
    ns = NotifySocket(tmp_path / "notify.sock")
    log = open(tmp_path / "notify.log", "wb")
    env = dict(os.environ, NOTIFY_SOCKET=str(ns.path))
    proc = subprocess.Popen(WRAPPER + [SALLYPORT, "-c", str(conf)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield proc, ns, conf, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        ns.close()
        log.close()
        text = (tmp_path / "notify.log").read_text(errors="replace")
        assert "Sanitizer" not in text and "runtime error" not in text, text


def test_notify_ready_reloading_stopping(notified):
    proc, ns, conf, port = notified
    ready = ns.next()
    assert ready["READY"] == "1" and ready["STATUS"].startswith("ready (1 listener, 1 mailbox")
    with connect(port) as s:  # READY came when it was accepting already
        assert read_reply(s).startswith(b"220 gw.test")

    proc.send_signal(signal.SIGHUP)
    reloading = ns.next()
    assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
    assert ns.next() == {"READY": "1", "STATUS": "reloaded; serving generation 2"}

    conf.write_text(conf.read_text() + "[route r]\n")  # a duplicate section: refused
    proc.send_signal(signal.SIGHUP)
    assert ns.next()["RELOADING"] == "1"
    assert ns.next() == {"READY": "1", "STATUS": "reload refused; serving generation 2"}

    proc.send_signal(signal.SIGTERM)
    assert ns.next() == {"STOPPING": "1"}
    assert proc.wait(timeout=30) == 0
