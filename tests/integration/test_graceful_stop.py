"""Graceful stop. The first SIGTERM (or SIGINT) closes every listening
socket, so new clients are refused, and lets open sessions finish for up to
shutdown_timeout; then the ones still open end, with the protocol's own
goodbye where sallyport speaks the protocol to the client (a 421 in the
cleartext dialogue). A second signal stops at once. The embedded mailbox
never leaves part of a message in new/."""
import signal
import ssl

import pytest

from conftest import free_port, refused, wait_for
from fakebackend import FakeBackend, connect, hold, read_reply, recv_until_closed, send, smtp_server
from smtp_helpers import certificate_section, issue, log_fields, session_lines

SNI = "mail.stop.test"
DRAINING = "no new connections"


def config(ca, port, backend_endpoint, service="submissions", extra_global="", workers=None):
    text = f"[global]\nlog_level = info\n{extra_global}"
    if workers:
        text += f"workers = {workers}\n"
    text += "\n" + certificate_section("gw", *issue(ca, SNI))
    text += f"[listener {service}]\naddress = 127.0.0.1:{port}\nhostname = gw.test\n\n"
    text += f"[backend b]\n{service} = {backend_endpoint}\n[route r]\nsni = *\nbackend = b\n"
    return text


def tls_client(ca, port):
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    return ctx.wrap_socket(connect(port), server_hostname=SNI)


@pytest.mark.parametrize("workers", [1, 2])
def test_open_session_finishes_new_ones_are_refused(sallyport, ca, workers):
    port = free_port()
    with FakeBackend([smtp_server(greet=True)]) as fb:
        sp = sallyport(config(ca, port, f"{fb.address} plain", workers=workers))
        with tls_client(ca, port) as s:
            assert read_reply(s).startswith(b"220 ")
            sp.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: DRAINING in sp.log(), what="the drain's log line")
            # Every worker closes its listening socket as it gets the word.
            wait_for(lambda: refused(port), what="new connections refused")
            # The session in flight goes on as if nothing happened.
            s.sendall(b"NOOP\r\n")
            assert read_reply(s).startswith(b"250 ")
            s.sendall(b"QUIT\r\n")
            assert read_reply(s).startswith(b"221 ")
        assert sp.proc.wait(timeout=20) == 0, sp.log()
    (f,) = [log_fields(l) for l in session_lines(sp.log())]
    assert f["close"] != "shutting down", f
    assert "sallyport stopped" in sp.log()


def test_after_shutdown_timeout_the_client_gets_a_goodbye(sallyport, ca):
    """A STARTTLS client idling in the cleartext dialogue is told 421 when
    shutdown_timeout is over; a relayed session is closed."""
    port, relay_port = free_port(), free_port()
    with FakeBackend([send(b"* OK relayed\r\n"), hold()]) as fb:
        text = ("[global]\nlog_level = info\nshutdown_timeout = 1\n"
                + certificate_section("gw", *issue(ca, SNI))
                + f"[listener submission]\naddress = 127.0.0.1:{port}\nhostname = gw.test\n"
                + f"[listener imaps]\naddress = 127.0.0.1:{relay_port}\nhostname = gw.test\n"
                + f"[backend b]\nsubmission = 127.0.0.1:1 plain\nimaps = {fb.address} plain\n"
                + "[route r]\nsni = *\nbackend = b\n")
        sp = sallyport(text)
        with connect(port) as clear, tls_client(ca, relay_port) as relayed:
            assert read_reply(clear).startswith(b"220 gw.test")
            assert relayed.recv(100).startswith(b"* OK relayed")
            sp.proc.send_signal(signal.SIGTERM)
            goodbye = recv_until_closed(clear)
            assert goodbye.startswith(b"421 4.3.0 gw.test "), goodbye
            assert relayed.recv(100) == b""
        assert sp.proc.wait(timeout=30) == 0, sp.log()
    closes = sorted(log_fields(l)["close"] for l in session_lines(sp.log()))
    assert closes == ["shutting down", "shutting down"], closes
    assert "shutdown_timeout reached" in sp.log()


def test_a_second_signal_stops_at_once(sallyport, ca):
    port = free_port()
    with FakeBackend([smtp_server(greet=True)]) as fb:
        sp = sallyport(config(ca, port, f"{fb.address} plain",
                              extra_global="shutdown_timeout = 1h\n"))
        with tls_client(ca, port) as s:
            assert read_reply(s).startswith(b"220 ")
            sp.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: DRAINING in sp.log(), what="the drain's log line")
            sp.proc.send_signal(signal.SIGINT)
            assert sp.proc.wait(timeout=20) == 0, sp.log()   # not an hour
            assert recv_until_closed(s) == b""
    assert "again: stopping now" in sp.log()


def test_the_mailbox_leaves_no_partial_message(sallyport, ca, tmp_path):
    """A stop in the middle of DATA: nothing in new/, nothing left in tmp/."""
    port, mport = free_port(), free_port()
    maildir = tmp_path / "box"
    text = config(ca, port, "127.0.0.1:1 plain", extra_global="shutdown_timeout = 1\n")
    text = text.replace("[backend b]\nsubmissions = 127.0.0.1:1 plain\n", "")
    text = text.replace("backend = b\n", "backend = box\n")
    text += (f"[mailbox box]\naddress = 127.0.0.1:{mport}\nmaildir = {maildir}\n"
             f"hostname = box.test\n")
    sp = sallyport(text)
    with tls_client(ca, port) as s:
        assert read_reply(s).startswith(b"220 box.test")
        for line, code in ((b"EHLO client.test", b"250"), (b"MAIL FROM:<a@stop.test>", b"250"),
                           (b"RCPT TO:<b@stop.test>", b"250"), (b"DATA", b"354")):
            s.sendall(line + b"\r\n")
            assert read_reply(s).startswith(code)
        s.sendall(b"Subject: cut short\r\n\r\nthe first half")
        wait_for(lambda: any((maildir / "tmp").iterdir()), what="the message in tmp/")
        sp.proc.send_signal(signal.SIGTERM)
        assert recv_until_closed(s) == b""      # ended at shutdown_timeout
        assert sp.proc.wait(timeout=30) == 0, sp.log()
    assert list((maildir / "new").iterdir()) == []
    assert list((maildir / "tmp").iterdir()) == []


def test_mailboxes_serve_and_say_goodbye_while_draining(sallyport, ca, tmp_path):
    """With two workers, every worker's mailbox socket keeps accepting while
    sallyport drains (its own sessions may still need it); at
    shutdown_timeout a mailbox client waiting for a reply gets 421."""
    port, mport = free_port(), free_port()
    text = config(ca, port, "127.0.0.1:1 plain", service="submission", workers=2,
                  extra_global="shutdown_timeout = 2\n")
    text += (f"[mailbox box]\naddress = 127.0.0.1:{mport}\nmaildir = {tmp_path / 'box'}\n"
             f"hostname = box.test\n")
    sp = sallyport(text)
    with connect(port) as held, connect(mport) as waiting:
        assert read_reply(held).startswith(b"220 gw.test")
        assert read_reply(waiting).startswith(b"220 box.test")
        sp.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: DRAINING in sp.log(), what="the drain's log line")
        for _ in range(8):   # the kernel spreads these over both workers' sockets
            with connect(mport) as s:
                assert read_reply(s).startswith(b"220 box.test")
                s.sendall(b"QUIT\r\n")
                assert read_reply(s).startswith(b"221 ")
        assert recv_until_closed(waiting) == b"421 4.3.0 Shutting down\r\n"
        assert recv_until_closed(held).startswith(b"421 4.3.0 gw.test ")
    assert sp.proc.wait(timeout=30) == 0, sp.log()
