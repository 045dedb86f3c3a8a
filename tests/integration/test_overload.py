"""Overload, the way Postfix's stress-adaptive mode works: when descriptors
(RLIMIT_NOFILE, lowered here with prlimit) or connections (max_connections)
run out, the clients that have done least (connected, said nothing, no TLS
yet) are closed, oldest first, so that a real client still gets a whole
session through; a relaying session is never closed for it. The log says
when the state begins and ends, and the metrics show it."""
import signal
import socket

import pytest

from conftest import free_port, wait_for
from fakebackend import read_reply
from smtp_helpers import (
    LoopbackSMTP, client_context, issue, maildir_messages, session_lines, wait_maildir)

DOMAIN = "overload.test"
MAIL = f"mail.{DOMAIN}"
TIMEOUT = 20
IDLE = 120  # idle clients opened, well past the descriptor limit below
NOFILE = 64


def config(gw, max_connections=1024, overload="adapt"):
    p = gw["ports"]
    cert, key = gw["cert"]
    return (f"[global]\nlog_level = info\nworkers = 1\noverload = {overload}\n"
            f"max_connections = {max_connections}\nmax_client_connections = 0\n"
            "client_connection_rate = 0\n\n"
            f"[metrics]\naddress = 127.0.0.1:{p['metrics']}\n\n"
            f"[certificate gw]\ncert = {cert}\nkey = {key}\n\n"
            f"[listener smtp]\nservice = submission\naddress = 127.0.0.1:{p['smtp']}\n"
            "hostname = gw.test\n\n"
            f"[listener smtps]\nservice = submissions\naddress = 127.0.0.1:{p['smtps']}\n"
            "hostname = gw.test\n\n"
            f"[mailbox box]\naddress = 127.0.0.1:{p['box']}\nmaildir = {gw['dir'] / 'box'}\n\n"
            "[route main]\nsni = *\nbackend = box\n")


@pytest.fixture
def gw(ca, tmp_path):
    return {"dir": tmp_path, "ca": ca, "cert": issue(ca, f"*.{DOMAIN}"),
            "ports": {n: free_port() for n in ("smtp", "smtps", "box", "metrics")}}


def metric(gw, line_start):
    """The value of the sample whose line starts with `line_start`."""
    with socket.create_connection(("127.0.0.1", gw["ports"]["metrics"]), timeout=TIMEOUT) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    for line in data.decode().splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_start}")


def starttls_session(gw, mark):
    """EHLO, STARTTLS, a message: the whole session a real client needs."""
    with LoopbackSMTP(MAIL, gw["ports"]["smtp"], timeout=TIMEOUT) as s:
        s.starttls(context=client_context(gw["ca"].cert))
        s.sendmail("a@client.test", ["b@overload.test"], f"Subject: {mark}\r\n\r\n{mark}\r\n")


def open_idle(port, count):
    """Connections that say nothing. Some the kernel queues while sallyport
    cannot accept; all are made."""
    return [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(count)]


def relaying_session(gw):
    """A session past STARTTLS and EHLO: relaying to the mailbox."""
    s = LoopbackSMTP(MAIL, gw["ports"]["smtp"], timeout=TIMEOUT)
    s.starttls(context=client_context(gw["ca"].cert))
    s.ehlo("held.test")
    return s


def test_idle_clients_at_the_descriptor_limit_do_not_keep_a_client_out(sallyport, gw):
    sp = sallyport(config(gw), nofile=NOFILE)
    held = relaying_session(gw)
    idle = []
    try:
        # Silent clients on both ports, far more than the descriptors allow.
        idle += open_idle(gw["ports"]["smtp"], IDLE // 2)
        idle += open_idle(gw["ports"]["smtps"], IDLE // 2)
        sp.wait_log("overload: no descriptor left")
        # A real client still gets its whole session through, and more than one.
        for i in range(3):
            starttls_session(gw, f"through-{i}")
        wait_maildir(gw["dir"] / "box", 3)
        # The relaying session was never closed for it.
        held.sendmail("a@client.test", ["b@overload.test"], b"Subject: held\r\n\r\nheld\r\n")
        held.quit()
        wait_maildir(gw["dir"] / "box", 4)
        evicted = [line for line in session_lines(sp.log()) if "close=\"evicted:" in line]
        assert evicted, sp.log()[-3000:]
        assert all(" route=- " in line for line in evicted), evicted[:3]
        assert metric(gw, 'sallyport_connections_total{listener="smtp",service="submission",'
                          'outcome="evicted"}') + \
            metric(gw, 'sallyport_connections_total{listener="smtps",service="submissions",'
                       'outcome="evicted"}') == len(evicted)
        assert metric(gw, "sallyport_overload_entered_total") >= 1
    finally:
        for s in idle:
            s.close()
    # Calm again: the state ends, and says so.
    sp.wait_log("overload: over", timeout=60)
    assert metric(gw, "sallyport_overload") == 0
    assert len(maildir_messages(gw["dir"] / "box")) == 4


def test_idle_clients_at_max_connections_do_not_keep_a_client_out(sallyport, gw):
    sp = sallyport(config(gw, max_connections=20))
    held = relaying_session(gw)
    idle = []
    try:
        idle = open_idle(gw["ports"]["smtp"], 19)
        for s in idle:
            assert read_reply(s).startswith(b"220 ")
        wait_for(lambda: metric(gw, "sallyport_client_sessions") == 20, TIMEOUT,
                 what="20 sessions open")
        assert metric(gw, "sallyport_overload") == 1
        starttls_session(gw, "at-limit")
        wait_maildir(gw["dir"] / "box", 1)
        # The oldest silent client made room, with the protocol's "try later".
        first = idle[0]
        first.settimeout(TIMEOUT)
        assert read_reply(first).startswith(b"421 ")
        held.sendmail("a@client.test", ["b@overload.test"], b"Subject: held\r\n\r\nheld\r\n")
        held.quit()
        wait_maildir(gw["dir"] / "box", 2)
        sp.wait_log("overload: connections nearly at max_connections")
    finally:
        for s in idle:
            s.close()
    sp.wait_log("overload: over", timeout=60)
    sp.proc.send_signal(signal.SIGTERM)


def test_overload_off_only_pauses_as_before(sallyport, gw):
    """overload = off: at max_connections, silent clients keep their places
    and a waiting client is served only when one of them leaves."""
    sp = sallyport(config(gw, max_connections=3, overload="off"))
    held = open_idle(gw["ports"]["smtp"], 3)
    waiting = None
    try:
        for s in held:
            assert read_reply(s).startswith(b"220 ")
        waiting = socket.create_connection(("127.0.0.1", gw["ports"]["smtp"]), timeout=TIMEOUT)
        sp.wait_log("the max_connections limit; pausing accept")
        assert metric(gw, "sallyport_overload_entered_total") == 0
        assert metric(gw, "sallyport_overload") == 0
        held.pop(0).close()
        assert read_reply(waiting).startswith(b"220 ")
        assert "evicted" not in sp.log()
    finally:
        for s in held + ([waiting] if waiting else []):
            s.close()
