"""Several workers (`workers = N`): one event loop per thread, each accepting
on its own SO_REUSEPORT socket for every listener, sharing one config, one
set of TLS contexts and one set of limits.

What a user sees: new connections spread across the workers, and each
session's log line names its worker; max_connections and the per-client
limits count the connections of all workers together; a TLS session resumes
whichever worker the returning client reaches (one ticket key set); and
`workers = auto` starts one worker per CPU."""
import collections
import os
import re
import select
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import free_port, wait_for
from test_limits import TIMEOUT, connect, first_bytes as greeting
from smtp_helpers import (
    IMPLICIT_TERMINATE, certificate_section, issue, listener_section, mailbox_section,
    route_section)

HOSTNAME = "gw.test"
SNI = "mail.workers.test"
SPREAD_CONNECTIONS = 400


def cleartext_config(ca, port, workers, **global_opts):
    """A STARTTLS submission listener (passthrough: the clients here stop in
    the cleartext phase, before any backend is needed)."""
    text = f"[global]\nlog_level = info\nworkers = {workers}\n"
    text += "".join(f"{k} = {v}\n" for k, v in global_opts.items())
    text += (f"[listener submission]\naddress = 127.0.0.1:{port}\nmode = passthrough\n"
             f"hostname = {HOSTNAME}\n"
             f"[backend b]\nhost = 127.0.0.1\n[route r]\nsni = *\nbackend = b\n")
    return text


def session_workers(log):
    return [int(w) for w in re.findall(r" session listener=\S+ client=\S+ worker=(\d+) ", log)]


def test_connections_spread_across_workers(sallyport, ca):
    port = free_port()
    sp = sallyport(cleartext_config(ca, port, workers=2))
    assert "2 workers)" in sp.log()

    def one(_):
        with connect(port) as s:
            assert greeting(s).startswith(b"220 ")
            s.sendall(b"QUIT\r\n")
            assert greeting(s).startswith(b"221 ")

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, range(SPREAD_CONNECTIONS)))
    workers = wait_for(lambda: (lambda w: w if len(w) >= SPREAD_CONNECTIONS else None)(
        session_workers(sp.log())), what="a log line per session")
    counts = collections.Counter(workers)
    assert set(counts) == {0, 1}, counts
    assert max(counts.values()) <= 0.6 * SPREAD_CONNECTIONS, counts


def test_max_connections_counts_all_workers(sallyport, ca):
    port = free_port()
    sp = sallyport(cleartext_config(ca, port, workers=2, max_connections=4))
    held = [connect(port) for _ in range(4)]
    extra = []
    try:
        for s in held:
            assert greeting(s).startswith(b"220 ")
            # Said something: never closed to make room (test_overload.py).
            s.sendall(b"NOOP\r\n")
            assert greeting(s).startswith(b"250")
        # However the kernel spreads them, no worker may accept these now.
        extra = [connect(port) for _ in range(6)]
        sp.wait_log("the max_connections limit; pausing accept")
        readable, _, _ = select.select(extra, [], [], 1.0)
        assert readable == [], "a connection beyond max_connections was served"
        held.pop().close()
        held.pop().close()
        greeted = []
        deadline_rounds = 200
        while len(greeted) < 2 and deadline_rounds:
            deadline_rounds -= 1
            readable, _, _ = select.select([s for s in extra if s not in greeted], [], [], 0.1)
            for s in readable:
                assert greeting(s).startswith(b"220 ")
                greeted.append(s)
        assert len(greeted) == 2, f"{len(greeted)} waiting connections served after 2 closed"
    finally:
        for s in held + extra:
            s.close()


def test_client_limit_counts_all_workers(sallyport, ca):
    port = free_port()
    sallyport(cleartext_config(ca, port, workers=2, max_client_connections=4,
                               client_connection_rate=0, client_limit_exceptions="none"))
    held = [connect(port) for _ in range(4)]
    try:
        for s in held:
            assert greeting(s).startswith(b"220 ")
        for _ in range(6):
            with connect(port) as extra:
                assert greeting(extra).startswith(
                    b"421 4.7.0 gw.test Too many connections from your address")
        held.pop().close()

        def served_again():  # back under the limit, whichever worker it reaches
            with connect(port) as again:
                return greeting(again).startswith(b"220 ")
        wait_for(served_again, what="a greeting once back under the limit")
    finally:
        for s in held:
            s.close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2],
                         ids=["tls1.3", "tls1.2"])
def test_tls_session_resumes_on_any_worker(sallyport, tmp_path, ca, version):
    port, mport = free_port(), free_port()
    cert, key = issue(ca, SNI)
    conf = f"[global]\nlog_level = info\nworkers = 2\n\n"
    conf += certificate_section("gw", cert, key)
    conf += listener_section(IMPLICIT_TERMINATE, port)
    conf += mailbox_section("box", mport, tmp_path / "Maildir")
    conf += route_section("r", SNI, "box")
    sp = sallyport(conf)
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    ctx.minimum_version = ctx.maximum_version = version

    def session(resume=None):
        raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        with ctx.wrap_socket(raw, server_hostname=SNI, session=resume) as s:
            assert greeting(s).startswith(b"220 ")  # TLS 1.3 tickets come with it
            s.sendall(b"QUIT\r\n")
            assert greeting(s).startswith(b"221 ")
            return s.session, s.session_reused

    first, reused = session()
    assert not reused and first is not None
    reuses = [session(first)[1] for _ in range(24)]
    assert all(reuses), f"{reuses.count(False)} of 24 sessions did not resume"
    workers = wait_for(lambda: (lambda w: w if len(w) >= 25 else None)(
        session_workers(sp.log())), what="a log line per session")
    assert set(workers) == {0, 1}, f"all sessions on one worker: {workers}"


def test_workers_auto_is_one_per_cpu(sallyport, ca):
    port = free_port()
    sp = sallyport(cleartext_config(ca, port, workers="auto"))
    cpus = len(os.sched_getaffinity(0))
    assert f"{cpus} worker{'s' if cpus > 1 else ''})" in sp.log()
    with connect(port) as s:
        assert greeting(s).startswith(b"220 ")
