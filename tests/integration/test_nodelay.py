"""Every socket that carries a dialogue has Nagle's algorithm off
(TCP_NODELAY): the client's accepted socket, the socket sallyport opens to
its backend, and the embedded mailbox's accepted socket. Without it, a small
reply that follows another small write waits for the peer's delayed ACK (up
to 40 ms a step: a STARTTLS session set-up took 48 ms instead of 4).

The test looks at the sockets themselves, in the running daemon: it copies
each of the daemon's descriptors with pidfd_getfd(2) and reads the option.
It never measures time."""
import ctypes
import os
import socket

import pytest

from conftest import free_port
from smtp_helpers import (
    WAYS, WAY_IDS, certificate_section,
    global_section, issue, listener_section, mailbox_section, mailbox_tls_for, route_section,
    smtplib_session)

SNI = "mail.nodelay.test"
SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture

libc = ctypes.CDLL(None, use_errno=True)


def nodelay(s):
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def daemon_sockets(pid, read=nodelay):
    """Connected TCP sockets of process `pid` as {(local port, peer port):
    read(socket)}: TCP_NODELAY unless `read` says otherwise."""
    pidfd = os.pidfd_open(pid)
    found = {}
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{name}") if name.isdigit() else ""
            if not target.startswith("socket:"):
                continue
            fd = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if fd < 0:
                err = ctypes.get_errno()
                pytest.skip(f"pidfd_getfd: {os.strerror(err)}")
            with socket.socket(fileno=fd) as s:
                if s.type != socket.SOCK_STREAM:
                    continue
                try:
                    local, peer = s.getsockname()[1], s.getpeername()[1]
                except OSError:
                    continue  # a listening socket
                found[(local, peer)] = read(s)
    finally:
        os.close(pidfd)
    return found


@pytest.mark.parametrize("way", WAYS, ids=WAY_IDS)
def test_dialogue_sockets_have_nodelay(sallyport, tmp_path, ca, way):
    port, mport = free_port(), free_port()
    cert, key = issue(ca, SNI)
    conf = global_section()
    if not way.passthrough:
        conf += certificate_section("gw", cert, key)
    conf += listener_section(way, port)
    conf += mailbox_section("box", mport, tmp_path / "Maildir", tls=mailbox_tls_for(way),
                            cert=cert, key=key)
    conf += route_section("r", SNI, "box")
    sp = sallyport(conf)
    with smtplib_session(way.tls, port, SNI, ca.cert) as s:
        s.noop()  # the session is relaying: client, backend and mailbox sockets exist
        client_port = s.sock.getsockname()[1]
        sockets = daemon_sockets(sp.proc.pid)
    accepted = {k: v for k, v in sockets.items() if k == (port, client_port)}
    to_backend = {k: v for k, v in sockets.items() if k[1] == mport}
    in_mailbox = {k: v for k, v in sockets.items() if k[0] == mport}
    assert accepted and to_backend and in_mailbox, sockets
    assert all(accepted.values()), f"client socket without TCP_NODELAY: {accepted}"
    assert all(to_backend.values()), f"backend socket without TCP_NODELAY: {to_backend}"
    assert all(in_mailbox.values()), f"mailbox socket without TCP_NODELAY: {in_mailbox}"
