"""Buffers and splice pipes come from per-worker pools and are held only while
bytes are in flight, so many sessions share a few of them in turn. These tests
drive many sessions at once through every SMTP way (implicit TLS or STARTTLS,
terminate or passthrough) into the embedded mailbox, and check what users see:
every message lands in the Maildir whole, byte for byte, and no session's
bytes end up in another's message."""
import os
import resource
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import free_port, wait_for
from smtp_helpers import (
    SENDER, WAYS, WAY_IDS, Way, assert_mailbox_stored, backend_section, body_part,
    certificate_section,
    global_section, issue, large_body, listener_section, mailbox_section, mailbox_tls_for,
    make_message, marker, route_section, sha256, smtplib_session, wait_maildir)

SNI = "mail.pool.test"
RCPT = "bob@pool.test"
SESSIONS = 40            # concurrent sessions per way
BODY_SIZE = 192 * 1024   # bytes per message: many TLS records and splice chunks


def pool_gateway(sallyport, tmp_path, ca, way, workers=None):
    """sallyport with one listener of `way` in front of an embedded mailbox
    (plain behind terminate, of the listener's flavour behind passthrough)."""
    port, mport = free_port(), free_port()
    maildir = tmp_path / "Maildir"
    cert, key = issue(ca, SNI)
    conf = global_section(log_level="info")
    if workers:
        conf = conf.replace("[global]\n", f"[global]\nworkers = {workers}\n")
    if not way.passthrough:
        conf += certificate_section("gw", cert, key)
    conf += listener_section(way, port)
    conf += mailbox_section("box", mport, maildir, tls=mailbox_tls_for(way), cert=cert, key=key)
    conf += route_section("r", SNI, "box")
    return sallyport(conf), port, maildir


def send_all_at_once(way, port, cafile, messages):
    """Opens one session per message, waits until every one is set up (TLS
    done, EHLO answered) so that all relays are live together, then sends
    them all concurrently. Returns the number of sessions that failed."""
    ready = threading.Barrier(len(messages), timeout=120)

    def one(message):
        with smtplib_session(way.tls, port, SNI, cafile) as s:
            ready.wait()
            refused = s.sendmail(SENDER, [RCPT], message)
            assert not refused, refused

    with ThreadPoolExecutor(max_workers=len(messages)) as pool:
        futures = [pool.submit(one, m) for m in messages]
        errors = [f.exception(timeout=300) for f in futures]
    return [e for e in errors if e is not None]


def assert_each_stored_once(maildir, sent):
    """Every sent message is in the Maildir exactly once, body intact."""
    stored = wait_maildir(maildir, count=len(sent), timeout=120)
    assert len(stored) == len(sent), f"{len(stored)} messages stored, {len(sent)} sent"
    by_body = {}
    for message in stored:
        by_body.setdefault(sha256(body_part(message)), []).append(message)
    for message in sent:
        found = by_body.get(sha256(body_part(message)), [])
        assert len(found) == 1, (
            f"a {len(message)}-byte message was stored {len(found)} times (mixed or lost bytes)")
        assert_mailbox_stored(found[0], message)


def distinct_messages(count, size=BODY_SIZE):
    """`count` messages whose bodies differ from the first line on."""
    out = []
    for i in range(count):
        mark = marker()
        out.append(make_message(mark, large_body(size, seed=mark.encode()),
                                RCPT))
    return out


@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
@pytest.mark.parametrize("way", WAYS, ids=WAY_IDS)
def test_concurrent_sessions_keep_their_bytes(sallyport, tmp_path, ca, way, workers):
    """With two workers, the mailbox runs in both as well: every delivery
    still gets a Maildir name of its own."""
    _, port, maildir = pool_gateway(sallyport, tmp_path, ca, way, workers)
    sent = distinct_messages(SESSIONS)
    failures = send_all_at_once(way, port, ca.cert, sent)
    assert not failures, f"{len(failures)} sessions failed, first: {failures[0]!r}"
    assert_each_stored_once(maildir, sent)


@pytest.mark.parametrize("way", [w for w in WAYS if w.passthrough], ids=lambda w: w.id)
def test_splice_relay_without_pipes_copies_through_buffers(sallyport, tmp_path, ca, way):
    """Out of descriptors for a splice pipe, a passthrough relay copies
    through a pooled buffer instead: the message still arrives whole. The
    gateway's descriptor limit is lowered (prlimit) to what it holds now plus
    the two sockets of one session, so accept and the backend connect fit
    and no pipe does. The mailbox runs in a process of its own."""
    port, mport = free_port(), free_port()
    cert, key = issue(ca, SNI)
    maildir = tmp_path / "Maildir"
    sallyport(global_section(log_level="info") +
              mailbox_section("box", mport, maildir, tls=mailbox_tls_for(way), cert=cert,
                              key=key), name="mailbox")
    gw = sallyport(global_section(log_level="info") + listener_section(way, port) +
                   backend_section("box", {way.service: f"127.0.0.1:{mport} {way.tls}"}) +
                   route_section("r", SNI, "box"), name="gateway")
    held = len(os.listdir(f"/proc/{gw.proc.pid}/fd"))
    resource.prlimit(gw.proc.pid, resource.RLIMIT_NOFILE, (held + 2, held + 2))
    sent = distinct_messages(1)
    failures = send_all_at_once(way, port, ca.cert, sent)
    assert not failures, f"the session failed: {failures[0]!r}"
    assert_each_stored_once(maildir, sent)


def cpu_seconds(pid):
    """User + system CPU time the process has used so far."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("mode", ["terminate", "passthrough"])
def test_relay_blocked_on_a_slow_client_does_not_spin(sallyport, ca, mode):
    """A backend floods a client that reads nothing: once the buffers and
    the pipe are full, the relay waits for the client instead of polling a
    readable backend over and over. What is measured is the CPU time the
    daemon uses while it waits (a busy loop uses all of it), not how long
    anything takes."""
    from fakebackend import FakeBackend, recv_line, send, server_context, tls
    cert, key = issue(ca, SNI)
    script = [tls(server_context(cert, key))] if mode == "passthrough" else []
    script += [send(b"220 flood.test ESMTP\r\n"), recv_line(b"FLOOD"),
               send(b"x" * (32 << 20))]
    with FakeBackend(script, timeout=60) as fb:
        port = free_port()
        conf = global_section(log_level="info")
        if mode == "terminate":
            conf += certificate_section("gw", cert, key)
        flavour = "implicit" if mode == "passthrough" else "plain"
        conf += listener_section(Way("implicit", mode), port)
        conf += backend_section("b", {"submissions": f"{fb.address} {flavour}"}, ca=ca.cert,
                                tls_name=SNI)
        conf += route_section("r", SNI, "b")
        sp = sallyport(conf)
        ctx = ssl.create_default_context(cafile=str(ca.cert))
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with ctx.wrap_socket(raw, server_hostname=SNI) as s:
            greeting = b""
            while not greeting.endswith(b"\r\n"):
                greeting += s.recv(1)
            assert greeting.startswith(b"220 ")
            s.sendall(b"FLOOD\r\n")
            # Wait until the flood has filled what can be filled: the bytes
            # the backend managed to send stop growing.
            wait_for(lambda: fb.count == 1, what="the backend connection")
            time.sleep(0.5)
            before = cpu_seconds(sp.proc.pid)
            time.sleep(1.0)
            used = cpu_seconds(sp.proc.pid) - before
    assert used < 0.25, f"the daemon used {used:.2f} s of CPU in 1 s while the relay waited"
