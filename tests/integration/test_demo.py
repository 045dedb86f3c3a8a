"""The README's promise: scripts/demo.sh (what `make demo` runs after the
build) starts sallyport in front of the embedded mailbox, and the README's
copy-paste curl command delivers a message into ./demo/mail, over implicit
TLS and over STARTTLS.

The demo runs in a scratch copy of the tree (scripts/demo.sh and the binary)
on free ports; the curl command is taken from README.md itself, so the test
fails when the README and the demo drift apart."""
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import SALLYPORT, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
BODY = b"Hello through sallyport."


def readme_curl_command():
    """The README's one-line `printf ... | curl ...` command."""
    text = (ROOT / "README.md").read_text()
    (line,) = [l for l in text.splitlines() if l.startswith("printf ") and "| curl " in l]
    return line


@pytest.fixture
def demo(tmp_path):
    """Runs the demo in tmp_path; yields (ports, tree); stops it afterwards."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "demo.sh", tmp_path / "scripts" / "demo.sh")
    os.symlink(SALLYPORT, tmp_path / "sallyport")
    ports = {"smtps": free_port(), "smtp": free_port(), "mailbox": free_port()}
    env = dict(os.environ, DEMO_SUBMISSIONS_PORT=str(ports["smtps"]),
               DEMO_SUBMISSION_PORT=str(ports["smtp"]), DEMO_MAILBOX_PORT=str(ports["mailbox"]))
    log_path = tmp_path / "demo.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["sh", "scripts/demo.sh"], cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is None and b"sallyport ready" in log_path.read_bytes(),
                 what=f"the demo ready (log: {log_path})")
        yield ports, tmp_path, log_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def delivered(tree):
    new = tree / "demo" / "mail" / "new"
    return [p.read_bytes() for p in new.iterdir()] if new.is_dir() else []


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_readme_curl_command_delivers_into_demo_maildir(demo, tls):
    ports, tree, log_path = demo
    command = readme_curl_command()
    assert "smtps://localhost:1465" in command, command
    if tls == "implicit":
        command = command.replace(":1465", f":{ports['smtps']}")
    else:  # the README's STARTTLS variant
        command = command.replace("--url smtps://localhost:1465",
                                  f"--url smtp://localhost:{ports['smtp']} --ssl-reqd")
    run = subprocess.run(command, shell=True, cwd=tree, capture_output=True, timeout=60)
    assert run.returncode == 0, (run.stderr, log_path.read_text())
    wait_for(lambda: delivered(tree), what="a message in demo/mail/new")
    (message,) = delivered(tree)
    assert message.endswith(BODY + b"\r\n"), message
    assert b"\r\nSubject: hello\r\n" in message, message
    # The demo printed the same command, with its own port.
    printed = log_path.read_text()
    assert f"smtps://localhost:{ports['smtps']}" in printed, printed


def test_readme_mentions_the_starttls_variant():
    text = (ROOT / "README.md").read_text()
    assert re.search(r"--url smtp://localhost:1587 --ssl-reqd", text), text
