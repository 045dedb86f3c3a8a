#!/usr/bin/env python3
"""Memory per session: starts sallyport (./sallyport, or $SALLYPORT) with a
STARTTLS listener and an implicit-TLS terminate listener in front of an
embedded mailbox, opens N sessions of each kind and prints the daemon's
resident memory growth per session. Loopback only; bounded in count.

    make bench            (or: python3 bench/session_memory.py [N])
"""
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SALLYPORT = os.environ.get("SALLYPORT", str(ROOT / "sallyport"))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 200


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    tmp = Path(tempfile.mkdtemp(prefix="sallyport-bench-"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=bench.test",
                    "-addext", "subjectAltName=DNS:bench.test", "-keyout", tmp / "key.pem",
                    "-out", tmp / "cert.pem"], check=True, capture_output=True)
    p587, p465, pbox = free_port(), free_port(), free_port()
    conf = tmp / "bench.conf"
    conf.write_text(f"""[global]
log_level = warn
max_connections = {4 * N}
[certificate c]
cert = {tmp / 'cert.pem'}
key = {tmp / 'key.pem'}
[listener submission]
address = 127.0.0.1:{p587}
hostname = bench.test
[listener submissions]
address = 127.0.0.1:{p465}
hostname = bench.test
[mailbox box]
address = 127.0.0.1:{pbox}
maildir = {tmp / 'mail'}
hostname = bench.test
[route r]
sni = *
backend = box
""")
    proc = subprocess.Popen([SALLYPORT, "-c", str(conf)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", p587), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    held = []
    try:
        time.sleep(0.2)
        base = rss_kib(proc.pid)
        for _ in range(N):  # cleartext phase: greeted, waiting for a command
            s = socket.create_connection(("127.0.0.1", p587), timeout=10)
            assert s.recv(100).startswith(b"220")
            held.append(s)
        cleartext = rss_kib(proc.pid)
        ctx = ssl.create_default_context(cafile=str(tmp / "cert.pem"))
        for _ in range(N):  # terminated TLS, relaying to the mailbox
            s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", p465), timeout=10),
                                server_hostname="bench.test")
            assert s.recv(100).startswith(b"220")
            held.append(s)
        relayed = rss_kib(proc.pid)
        print(f"sessions: {N} cleartext, {N} TLS-terminated relaying to the mailbox")
        print(f"rss: {base} KiB idle, {cleartext} KiB with the cleartext ones, "
              f"{relayed} KiB with all")
        print(f"per cleartext session: {(cleartext - base) * 1024 / N:.0f} bytes")
        print(f"per TLS relay session (with its mailbox session): "
              f"{(relayed - cleartext) * 1024 / N:.0f} bytes")
    finally:
        for s in held:
            s.close()
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
