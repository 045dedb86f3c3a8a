"""Sessions that are meant to last. A relayed session may be silent for its
listener's idle timeout: by default what the protocol's RFC lets a client
expect (IMAP 31 minutes, so that IDLE re-issued every 29 minutes survives;
SMTP, POP3 and ManageSieve 10), else [global] idle_timeout, else the
listener's own. TCP keepalive is on for the client's and the backend's
socket, so a peer that vanished is noticed long before that."""
import socket

import pytest

from conftest import free_port, wait_for
from fakebackend import FakeBackend, connect, hold, read_reply, send
from smtp_helpers import certificate_section, issue, log_fields, session_lines
from test_nodelay import daemon_sockets

SNI = "mail.idle.test"


def config(ca, listeners, extra_global=""):
    """listeners: [(service, port, extra lines)], all to one plain backend."""
    text = f"[global]\nlog_level = info\n{extra_global}\n"
    text += certificate_section("gw", *issue(ca, SNI))
    for service, port, extra in listeners:
        text += f"[listener {service}]\naddress = 127.0.0.1:{port}\nhostname = gw.test\n{extra}\n"
    return text


def startup_idle(sp, service):
    line = next(l for l in sp.log().splitlines() if f"listener {service}: accepting on" in l)
    return line.rsplit("idle timeout ", 1)[1].rstrip(")")


def test_defaults_follow_each_protocol(sallyport, ca):
    ports = [free_port() for _ in range(4)]
    services = ["imaps", "imap", "submissions", "pop3s"]
    text = config(ca, [(s, p, "") for s, p in zip(services, ports)])
    text += "[backend b]\nhost = 127.0.0.1\n[route r]\nsni = *\nbackend = b\n"
    sp = sallyport(text)
    assert [startup_idle(sp, s) for s in services] == ["1860s", "1860s", "600s", "600s"]


def test_global_and_listener_values(sallyport, ca):
    ports = [free_port() for _ in range(2)]
    text = config(ca, [("imaps", ports[0], ""), ("submissions", ports[1], "idle_timeout = 90\n")],
                  extra_global="idle_timeout = 45m\n")
    text += "[backend b]\nhost = 127.0.0.1\n[route r]\nsni = *\nbackend = b\n"
    sp = sallyport(text)
    assert startup_idle(sp, "imaps") == "2700s"
    assert startup_idle(sp, "submissions") == "90s"


@pytest.mark.parametrize("where", ["listener", "global"])
def test_a_silent_relay_ends_at_the_configured_timeout(sallyport, ca, where):
    """A short configured value: the relayed session that passes no bytes is
    closed with "idle timeout", the client sees the close."""
    import ssl
    port = free_port()
    with FakeBackend([send(b"* OK idle.test ready\r\n"), hold()]) as fb:
        listener_extra = "idle_timeout = 1\n" if where == "listener" else ""
        global_extra = "idle_timeout = 1\n" if where == "global" else ""
        text = config(ca, [("imaps", port, listener_extra)], extra_global=global_extra)
        text += f"[backend b]\nimaps = {fb.address} plain\n[route r]\nsni = *\nbackend = b\n"
        sp = sallyport(text)
        ctx = ssl.create_default_context(cafile=str(ca.cert))
        with ctx.wrap_socket(connect(port), server_hostname=SNI) as s:
            assert read_reply(s).startswith(b"* OK idle.test")
            assert s.recv(4096) == b""   # silence both ways: sallyport ends it
        (f,) = wait_for(lambda: [log_fields(l) for l in session_lines(sp.log())],
                        what="the session line")
        assert f["close"] == "idle timeout", f


def keepalive(s):
    return (s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT))


def test_keepalive_on_client_and_backend_sockets(sallyport, ca):
    import ssl
    port = free_port()
    with FakeBackend([send(b"* OK idle.test ready\r\n"), hold()]) as fb:
        text = config(ca, [("imaps", port, "")])
        text += f"[backend b]\nimaps = {fb.address} plain\n[route r]\nsni = *\nbackend = b\n"
        sp = sallyport(text)
        ctx = ssl.create_default_context(cafile=str(ca.cert))
        with ctx.wrap_socket(connect(port), server_hostname=SNI) as s:
            assert read_reply(s).startswith(b"* OK")
            client_port = s.getsockname()[1]
            sockets = daemon_sockets(sp.proc.pid, read=keepalive)
    accepted = [v for k, v in sockets.items() if k == (port, client_port)]
    to_backend = [v for k, v in sockets.items() if k[1] == fb.port]
    assert accepted == [(1, 120, 30, 4)], sockets
    assert to_backend == [(1, 120, 30, 4)], sockets
