"""The command line: -t (config check), usage, -V, and stopping on a signal.

A config check must name the file, the line and the key of every error, and
say why; these tests pin the exact file:line: key: of each one.
"""
import re
import signal
import subprocess

import pytest

from conftest import SALLYPORT, free_port, run_check, wait_for
from fakebackend import GREETING, connect, read_line, recv_until_closed

ERROR_LINE = re.compile(r"^(?P<file>[^\n:]+):(?P<line>\d+): (?P<key>[^:\s]+): (?P<message>.+)$",
                        re.MULTILINE)


@pytest.fixture(scope="module")
def certs(ca):
    """The gateway's certificate and the mailbox's (distinct paths: tests edit lines by text)."""
    return ca.issue("cli-gw", ["gw.test", "mail.example.test"]), ca.issue("cli-box", ["box.test"])


@pytest.fixture(scope="module")
def other_key(tmp_path_factory):
    """A key that belongs to no certificate."""
    path = tmp_path_factory.mktemp("other-key") / "other.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-out", str(path)],
                   check=True, capture_output=True, timeout=30)
    return path


def good_config(certs, tmp_path):
    cert, box_cert = certs
    return f"""\
[global]
log_level = info
plaintext_timeout = 30s
handshake_timeout = 30
connect_timeout = 10
idle_timeout = 5m
max_errors = 10

[certificate gw]
cert = {cert[0]}
key = {cert[1]}

[listener submissions]
address = 127.0.0.1:{free_port()}
mode = terminate
hostname = gw.test

[listener submission]
address = 127.0.0.1:{free_port()}
mode = passthrough
hostname = gw.test

[backend mx]
submissions = 127.0.0.1:2465 implicit
submission = 127.0.0.1:2587 starttls
verify = no

[mailbox box]
address = 127.0.0.1:{free_port()}
tls = starttls
cert = {box_cert[0]}
key = {box_cert[1]}
maildir = {tmp_path}/Maildir

[route default]
sni = *
backend = mx

[route example]
sni = mail.example.test
backend = box
"""


def replace_line(text, old, new):
    """Replaces the one line `old` (exactly) by `new`; returns (text, 1-based line number)."""
    lines = text.split("\n")
    assert lines.count(old) == 1, old
    number = lines.index(old) + 1
    lines[number - 1] = new
    return "\n".join(lines), number


def line_of(text, line):
    lines = text.split("\n")
    assert lines.count(line) == 1, line
    return lines.index(line) + 1


def errors_of(output):
    return [m.groupdict() for m in ERROR_LINE.finditer(output)]


def test_check_good_config(tmp_path, certs):
    rc, out = run_check(good_config(certs, tmp_path), tmp_path)
    assert rc == 0, out
    assert "configuration ok" in out
    assert errors_of(out) == []


def bad_configs(certs, other_key, tmp_path):
    """(name, config text, expected lines, expected keys, words the message must contain)."""
    cert = certs[0]
    good = good_config(certs, tmp_path)
    cases = []

    text, n = replace_line(good, "max_errors = 10", "colour = blue")
    cases.append(("unknown-key", text, [n], ["colour"], ["unknown key"]))

    text, n = replace_line(good, "mode = terminate", "mode = sideways")
    cases.append(("bad-mode", text, [n], ["mode"], ["sideways", "passthrough"]))

    text, _ = replace_line(good, "submission = 127.0.0.1:2587 starttls",
                           "submission = 127.0.0.1:2587 plain")
    # The pair is wrong where the route joins the passthrough listener to the backend.
    n = line_of(text, "backend = mx")
    cases.append(("passthrough-plain", text, [n], ["backend"],
                  ["submission", "plain", "TLS"]))

    text, n_key = replace_line(good, f"key = {cert[1]}", f"key = {other_key}")
    n_cert = line_of(text, f"cert = {cert[0]}")
    # Either half of the pair may carry the error.
    cases.append(("key-mismatch", text, [n_cert, n_key], ["cert", "key"], ["match"]))
    return cases


CASES = ["unknown-key", "bad-mode", "passthrough-plain", "key-mismatch"]


@pytest.mark.parametrize("case", CASES)
def test_check_reports_file_line_key(tmp_path, certs, other_key, case):
    name, text, lines, keys, words = next(c for c in bad_configs(certs, other_key, tmp_path)
                                          if c[0] == case)
    rc, out = run_check(text, tmp_path)
    assert rc == 1, out
    errors = errors_of(out)
    assert len(errors) == 1, out
    (error,) = errors
    assert error["file"] == str(tmp_path / "check.conf"), out
    assert int(error["line"]) in lines, out
    assert error["key"] == keys[lines.index(int(error["line"]))], out
    for word in words:
        assert word.lower() in error["message"].lower(), out


def test_check_reports_every_error(tmp_path, certs, other_key):
    """Loading goes on after an error: one file with all four, each reported."""
    cert = certs[0]
    text = good_config(certs, tmp_path)
    text, n_unknown = replace_line(text, "max_errors = 10", "colour = blue")
    text, n_mode = replace_line(text, "mode = terminate", "mode = sideways")
    text, _ = replace_line(text, "submission = 127.0.0.1:2587 starttls",
                           "submission = 127.0.0.1:2587 plain")
    text, n_key = replace_line(text, f"key = {cert[1]}", f"key = {other_key}")
    n_cert = line_of(text, f"cert = {cert[0]}")
    n_route = line_of(text, "backend = mx")
    rc, out = run_check(text, tmp_path)
    assert rc == 1, out
    found = {(int(e["line"]), e["key"]) for e in errors_of(out)}
    conf = str(tmp_path / "check.conf")
    assert all(e["file"] == conf for e in errors_of(out)), out
    assert (n_unknown, "colour") in found, out
    assert (n_mode, "mode") in found, out
    assert (n_route, "backend") in found, out
    assert (n_cert, "cert") in found or (n_key, "key") in found, out
    assert len(found) == 4, out


def test_check_missing_file(tmp_path):
    missing = tmp_path / "nope.conf"
    r = subprocess.run([SALLYPORT, "-t", "-c", str(missing)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1, r
    assert str(missing) in r.stdout + r.stderr


def test_no_arguments_prints_usage():
    r = subprocess.run([SALLYPORT], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r
    assert "usage" in (r.stdout + r.stderr).lower()
    assert "-c" in r.stderr


def test_unknown_option_prints_usage():
    r = subprocess.run([SALLYPORT, "-Z"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r
    assert "usage" in r.stderr.lower()


def test_version():
    r = subprocess.run([SALLYPORT, "-V"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r
    assert re.fullmatch(r"sallyport \d+\.\d+(\.\d+)?\S*\n", r.stdout), r.stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_stops_cleanly(sallyport, certs, signum):
    cert = certs[0]
    port = free_port()
    sp = sallyport(f"""\
[global]
log_level = debug
[certificate gw]
cert = {cert[0]}
key = {cert[1]}
[listener submission]
address = 127.0.0.1:{port}
mode = terminate
hostname = gw.test
[backend mx]
submission = 127.0.0.1:{free_port()} starttls
[route r]
sni = *
backend = mx
""")
    # A client in the middle of its cleartext dialogue may finish for
    # shutdown_timeout; the same signal again stops at once, and the client
    # sees a clean close.
    with connect(port) as s:
        assert read_line(s) == GREETING
        sp.proc.send_signal(signum)
        wait_for(lambda: "no new connections" in sp.log(), what="the drain's log line")
        sp.proc.send_signal(signum)
        assert sp.proc.wait(timeout=10) == 0, sp.log()
        assert recv_until_closed(s) == b""
    assert "again: stopping now" in sp.log() and "sallyport stopped" in sp.log()
