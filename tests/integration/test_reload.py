"""Reload (SIGHUP). The config, certificates, keys and users files are read
again and checked as -t does; a broken config is refused and the running
one keeps serving. Otherwise new connections get the new generation at
once while sessions in flight finish on the one they started with; the
listening sockets of addresses that stay are the same sockets (no refused
connection), new addresses open, removed ones close; per-client counts and
TLS session ticket keys survive.

The main test runs SMTP and IMAP clients back to back, in terminate and in
passthrough, against the embedded mailbox and a real Dovecot, across 20
reloads that swap the certificate and change a route; an IMAP IDLE session
and an SMTP session in the middle of DATA, begun before the reloads, finish
normally after them."""
import shutil
import signal
import socket
import ssl
import threading
import time

import pytest

from access_helpers import LoopbackIMAP4_SSL
from conftest import free_port, refused, wait_for
from dovecot import dovecot_factory  # noqa: F401 (fixture)
from fakebackend import connect, read_reply, recv_until_closed
from smtp_helpers import (
    LoopbackSMTP, LoopbackSMTP_SSL, client_context, issue, log_fields, maildir_messages,
    session_lines, users_file, wait_maildir)

DOMAIN = "reload.test"
# Terminated names (sallyport's certificate), and the passed-through ones
# (the backend's: the mailboxes', and Dovecot's).
SMTP_T, SMTP_P = f"smtp-t.{DOMAIN}", f"smtp-p.{DOMAIN}"
IMAP_T, IMAP_P = f"imap-t.{DOMAIN}", f"imap-p.{DOMAIN}"
RELOADS = 20
# Bounds on the client loops: sessions per loop, and seconds in all.
LOOP_MAX_SESSIONS = 2000
LOOP_MAX_SECONDS = 240
CLIENT_TIMEOUT = 20


def reload(sp, generation):
    """SIGHUP, then wait until `generation` serves."""
    sp.proc.send_signal(signal.SIGHUP)
    sp.wait_log(f"reloaded: generation {generation} ")


def refused_reload_count(sp):
    return sp.log().count("reload refused")


def der(cert_path):
    return ssl.PEM_cert_to_DER_cert(cert_path.read_text())


def served_certificate(port, sni, ca):
    with client_context(ca.cert).wrap_socket(connect(port), server_hostname=sni) as s:
        read_reply(s)
        return s.getpeercert(binary_form=True)


class Gateway:
    """Ports, files and the config text of one generation."""

    def __init__(self, tmp_path, ca, dv, workers):
        self.dir = tmp_path
        self.ca = ca
        self.dv = dv
        self.workers = workers
        self.ports = {name: free_port() for name in
                      ("smtp_t", "smtp_p", "imap_t", "imap_p", "box1", "box2")}
        self.maildirs = {name: tmp_path / name for name in ("box1", "box2")}
        # Two certificates for the same names; `live` is the path the config
        # names, overwritten in place as certbot's renewals are.
        self.certs = [ca.issue(f"reload-{tag}", [f"*.{DOMAIN}"]) for tag in ("a", "b")]
        self.live = (tmp_path / "live.pem", tmp_path / "live.key")
        self.box_cert = issue(ca, SMTP_P, "127.0.0.1")

    def install_certificate(self, index):
        cert, key = self.certs[index]
        for source, target in ((cert, self.live[0]), (key, self.live[1])):
            tmp = target.with_suffix(".new")
            shutil.copyfile(source, tmp)
            tmp.replace(target)

    def config(self, generation):
        """Both mailboxes speak implicit TLS (passthrough needs it; sallyport
        terminates and connects with TLS). Backends one and two differ in
        their mailbox; the route change: odd generations route to one, even
        ones to two."""
        p = self.ports
        text = f"[global]\nlog_level = info\nworkers = {self.workers}\n\n"
        text += f"[certificate gw]\ncert = {self.live[0]}\nkey = {self.live[1]}\n\n"
        for name, service, mode in (("smtp_t", "submissions", "terminate"),
                                    ("smtp_p", "submissions", "passthrough"),
                                    ("imap_t", "imaps", "terminate"),
                                    ("imap_p", "imaps", "passthrough")):
            text += (f"[listener {name}]\nservice = {service}\naddress = 127.0.0.1:{p[name]}\n"
                     f"mode = {mode}\nhostname = gw.test\n\n")
        for name in ("box1", "box2"):
            text += (f"[mailbox {name}]\naddress = 127.0.0.1:{p[name]}\n"
                     f"maildir = {self.maildirs[name]}\ntls = implicit\n"
                     f"cert = {self.box_cert[0]}\nkey = {self.box_cert[1]}\n"
                     f"hostname = {name}.test\n\n")
        for backend, box in (("one", "box1"), ("two", "box2")):
            text += (f"[backend {backend}]\nsubmissions = 127.0.0.1:{p[box]} implicit\n"
                     f"imaps = 127.0.0.1:{self.dv.imaps_port} implicit\nca = {self.ca.cert}\n\n")
        text += f"[route all]\nsni = *\nbackend = {'one' if generation % 2 else 'two'}\n"
        return text


class ClientLoop(threading.Thread):
    """Runs one kind of session back to back until stopped, within the
    bounds above; counts what succeeded and keeps every failure."""

    def __init__(self, name, session):
        super().__init__(name=name, daemon=True)
        self.session = session
        self.done = 0
        self.failures = []
        self.halt = threading.Event()

    def run(self):
        deadline = time.monotonic() + LOOP_MAX_SECONDS
        while (not self.halt.is_set() and time.monotonic() < deadline
               and self.done + len(self.failures) < LOOP_MAX_SESSIONS):
            try:
                self.session(self.done)
                self.done += 1
            except Exception as e:  # noqa: BLE001: every failure is the test's business
                self.failures.append(f"{self.name} session {self.done}: {e!r}")


def smtp_session(port, sni, ca, mark):
    with LoopbackSMTP_SSL(sni, port, context=client_context(ca.cert),
                          timeout=CLIENT_TIMEOUT) as s:
        s.ehlo("client.test")
        refused = s.sendmail("a@client.test", ["b@reload.test"],
                             f"Subject: {mark}\r\n\r\nloop message {mark}\r\n".encode())
        assert not refused, refused


def imap_session(port, sni, ca):
    with LoopbackIMAP4_SSL(sni, port, ssl_context=client_context(ca.cert),
                           timeout=CLIENT_TIMEOUT) as m:
        m.login("alice", "secret")
        typ, _ = m.select("INBOX")
        assert typ == "OK"
        m.logout()


def open_smtp_in_data(gw):
    """An SMTP session through the terminate listener, stopped half way
    through the message."""
    s = LoopbackSMTP_SSL(SMTP_T, gw.ports["smtp_t"], context=client_context(gw.ca.cert),
                         timeout=CLIENT_TIMEOUT)
    s.ehlo("client.test")
    assert s.mail("a@client.test")[0] == 250
    assert s.rcpt("b@reload.test")[0] == 250
    assert s.docmd("DATA")[0] == 354
    s.send(b"Subject: begun before the reloads\r\n\r\nfirst half\r\n")
    return s


def open_imap_idle(gw):
    m = LoopbackIMAP4_SSL(IMAP_T, gw.ports["imap_t"], ssl_context=client_context(gw.ca.cert),
                          timeout=CLIENT_TIMEOUT)
    m.login("idler", "pw")
    m.select("INBOX")
    m.send(b"i1 IDLE\r\n")
    assert m.readline().startswith(b"+ ")
    return m


@pytest.mark.parametrize("workers", [1, 2])
def test_twenty_reloads_under_load_lose_no_session(sallyport, ca, tmp_path, dovecot_factory,
                                                   workers):
    dv = dovecot_factory(hostname=IMAP_P, users={"alice": "secret", "idler": "pw"})
    gw = Gateway(tmp_path, ca, dv, workers)
    gw.install_certificate(0)
    sp = sallyport(gw.config(1))

    smtp_in_data = open_smtp_in_data(gw)
    idle = open_imap_idle(gw)

    p = gw.ports
    loops = [
        ClientLoop("smtp-terminate", lambda i: smtp_session(p["smtp_t"], SMTP_T, ca, f"t{i}")),
        ClientLoop("smtp-passthrough", lambda i: smtp_session(p["smtp_p"], SMTP_P, ca, f"p{i}")),
        ClientLoop("imap-terminate", lambda i: imap_session(p["imap_t"], IMAP_T, ca)),
        ClientLoop("imap-passthrough", lambda i: imap_session(p["imap_p"], IMAP_P, ca)),
    ]
    for loop in loops:
        loop.start()
    try:
        for generation in range(2, RELOADS + 2):
            # Every loop finishes a session on the running generation first.
            seen = [loop.done + len(loop.failures) for loop in loops]
            wait_for(lambda: all(l.done + len(l.failures) > n for l, n in zip(loops, seen)),
                     timeout=60, what="a session of every client loop")
            gw.install_certificate(generation % 2)
            with open(gw.dir / "sallyport.conf", "w") as f:
                f.write(gw.config(generation))
            reload(sp, generation)
    finally:
        for loop in loops:
            loop.halt.set()
        for loop in loops:
            loop.join(timeout=120)
    failures = [f for loop in loops for f in loop.failures]
    assert not failures, "\n".join(failures[:20])
    assert all(loop.done >= RELOADS for loop in loops), [(l.name, l.done) for l in loops]
    assert refused_reload_count(sp) == 0

    # The sessions begun on generation 1 finish normally.
    smtp_in_data.send(b"second half\r\n.\r\n")
    assert smtp_in_data.getreply()[0] == 250
    smtp_in_data.quit()
    dv.deliver("idler", b"Subject: pushed\r\n\r\nafter the reloads\r\n")
    for _ in range(10):  # Dovecot may say "* OK Still here" first
        line = idle.readline()
        if b"EXISTS" in line or not line.startswith(b"* OK"):
            break
    assert b"EXISTS" in line, line
    idle.send(b"DONE\r\n")
    for _ in range(10):  # untagged lines (* 1 RECENT), then the tagged reply
        line = idle.readline()
        if not line.startswith(b"* "):
            break
    assert line.startswith(b"i1 OK"), line
    idle.logout()

    # Every message is stored: the route change sent each generation's to
    # its own mailbox, and the one begun in DATA went where generation 1
    # routed it.
    sent = loops[0].done + loops[1].done + 1
    wait_maildir(gw.maildirs["box1"], 1)
    wait_for(lambda: len(maildir_messages(gw.maildirs["box1"]))
             + len(maildir_messages(gw.maildirs["box2"])) == sent,
             what="every message stored")
    assert len(maildir_messages(gw.maildirs["box2"])) > 0
    assert any(b"begun before the reloads" in m and b"second half" in m
               for m in maildir_messages(gw.maildirs["box1"]))

    # New connections get the certificate installed last (every worker
    # has switched by now, or does so within moments).
    last = gw.certs[(RELOADS + 1) % 2][0]
    wait_for(lambda: served_certificate(p["smtp_t"], SMTP_T, ca) == der(last), timeout=20,
             what="the last certificate served")

    # The log names the generation each session ran on. With one worker,
    # every generation served sessions; with two, a session may still have
    # reached a worker that had not switched yet.
    def generations_logged():
        return {int(log_fields(l)["gen"]) for l in session_lines(sp.log())}
    def idle_logged():
        return any(log_fields(l)["listener"] == "imap_t" and log_fields(l)["gen"] == "1"
                   for l in session_lines(sp.log()))
    wait_for(lambda: RELOADS + 1 in generations_logged() and idle_logged(), timeout=20,
             what="the lines of the last generation's and of the IDLE session")
    lines = [log_fields(l) for l in session_lines(sp.log())]
    generations = {int(f["gen"]) for f in lines}
    assert {1, RELOADS + 1} <= generations <= set(range(1, RELOADS + 2)), generations
    if workers == 1:
        assert generations == set(range(1, RELOADS + 2)), generations
    idle_line = [f for f in lines if f["listener"] == "imap_t" and f["gen"] == "1"]
    assert idle_line, "the IDLE session's line (generation 1)"


MAILBOX_PORTS = {}


def simple_config(ca, port, maildir, extra_global="", extra=""):
    """One listener on `port` routing to a mailbox (on a port of its own,
    the same for every generation of this test)."""
    cert, key = issue(ca, f"mail.{DOMAIN}")
    mailbox_port = MAILBOX_PORTS.setdefault(port, free_port())
    # One worker unless told otherwise: with several, a worker may still be
    # on the old generation for a moment after "reloaded" is logged.
    if "workers =" not in extra_global:
        extra_global += "workers = 1\n"
    return (f"[global]\nlog_level = info\n{extra_global}\n"
            f"[certificate gw]\ncert = {cert}\nkey = {key}\n\n"
            f"[listener submission]\naddress = 127.0.0.1:{port}\nhostname = gw.test\n\n"
            f"[mailbox box]\naddress = 127.0.0.1:{mailbox_port}\nmaildir = {maildir}\n\n"
            f"[route r]\nsni = *\nbackend = box\n\n{extra}")


def greets(port):
    with connect(port) as s:
        return read_reply(s).startswith(b"220 gw.test")


@pytest.mark.parametrize("breakage,message", [
    ("[backend x]\nsubmissions = 127.0.0.1:1 plain\nbogus = 1\n", ": bogus: "),
    ("[certificate other]\ncert = /nonexistent.pem\nkey = /nonexistent.key\n", "/nonexistent"),
])
def test_a_broken_config_is_refused_and_service_goes_on(sallyport, ca, tmp_path, breakage,
                                                        message):
    port = free_port()
    good = simple_config(ca, port, tmp_path / "box")
    sp = sallyport(good)
    with connect(port) as held:  # a session open across the refused reload
        assert read_reply(held).startswith(b"220 gw.test")
        sp.config.write_text(good + breakage)
        sp.proc.send_signal(signal.SIGHUP)
        log = sp.wait_log("reload refused")
        assert "still serving generation 1" in log
        assert f"{sp.config}:" in log and message in log, log
        assert greets(port)
        held.sendall(b"QUIT\r\n")
        assert read_reply(held).startswith(b"221 ")
    assert sp.proc.poll() is None
    # Fixed, it loads as generation 2.
    sp.config.write_text(good)
    reload(sp, 2)
    assert greets(port)


def test_a_port_that_cannot_be_bound_refuses_the_reload(sallyport, ca, tmp_path):
    """The new generation fails after the file checked out (a listener on a
    port someone else holds): nothing changes, the old sockets still serve."""
    port, taken = free_port(), free_port()
    base = simple_config(ca, port, tmp_path / "box")
    sp = sallyport(base)
    with socket.socket() as holder:
        # As free_port() checked it: a TIME_WAIT left on the port does not count.
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        sp.config.write_text(base + f"[listener second]\nservice = submission\n"
                                    f"address = 127.0.0.1:{taken}\nhostname = gw.test\n")
        sp.proc.send_signal(signal.SIGHUP)
        log = sp.wait_log("reload refused")
        assert "listener second: " in log and "still serving generation 1" in log, log
        assert greets(port)
        with connect(MAILBOX_PORTS[port]) as s:  # the mailbox, handed over and back
            assert read_reply(s).startswith(b"220 ")
    sp.config.write_text(base)
    reload(sp, 2)
    assert greets(port)


def test_reload_then_stop_closes_every_listener(sallyport, ca, tmp_path):
    """SIGHUP and SIGTERM back to back, several workers: each worker moves
    to the new generation, then closes its sockets, so new clients are
    refused (not left in a queue nobody accepts from)."""
    port = free_port()
    text = simple_config(ca, port, tmp_path / "box", "workers = 4\nshutdown_timeout = 1h\n")
    sp = sallyport(text)
    with connect(port) as held:  # keeps the daemon draining
        assert read_reply(held).startswith(b"220 gw.test")
        sp.proc.send_signal(signal.SIGHUP)
        sp.proc.send_signal(signal.SIGTERM)
        sp.wait_log("no new connections")
        wait_for(lambda: refused(port), what="the listening sockets closed")
        for _ in range(20):
            assert refused(port)


def test_listeners_added_and_removed(sallyport, ca, tmp_path):
    port, new_port = free_port(), free_port()
    base = simple_config(ca, port, tmp_path / "box")
    sp = sallyport(base)
    added = base + f"[listener second]\nservice = submission\naddress = 127.0.0.1:{new_port}\n" \
                   "hostname = gw.test\n"
    sp.config.write_text(added)
    reload(sp, 2)
    assert greets(port) and greets(new_port)
    # The first listener goes; its address is closed, the new one stays.
    sp.config.write_text(added.replace(f"[listener submission]\naddress = 127.0.0.1:{port}\n"
                                       "hostname = gw.test\n", ""))
    reload(sp, 3)
    wait_for(lambda: refused(port), what="the removed listener's address closed")
    assert greets(new_port)


def test_workers_and_user_keep_their_running_values(sallyport, ca, tmp_path):
    port = free_port()
    sp = sallyport(simple_config(ca, port, tmp_path / "box", "workers = 1\n"))
    sp.config.write_text(simple_config(ca, port, tmp_path / "box", "workers = 3\n"))
    reload(sp, 2)
    assert "workers: a reload keeps the running 1; restart to change it" in sp.log()
    assert greets(port)


def test_client_counts_carry_over(sallyport, ca, tmp_path):
    """Two sessions open from 127.0.0.1 under max_client_connections = 2:
    after a reload the third is still one too many."""
    port = free_port()
    limits = ("max_client_connections = 2\nclient_connection_rate = 0\n"
              "client_limit_exceptions = none\n")
    text = simple_config(ca, port, tmp_path / "box", limits)
    sp = sallyport(text)
    with connect(port) as a, connect(port) as b:
        assert read_reply(a).startswith(b"220 ") and read_reply(b).startswith(b"220 ")
        sp.config.write_text(text.replace("hostname = gw.test", "hostname = gw2.test"))
        reload(sp, 2)
        with connect(port) as c:
            assert recv_until_closed(c).startswith(b"421 4.7.0 gw2.test Too many connections")
    # With those closed, the address is under its limit again.
    wait_for(lambda: greets_as(port, b"220 gw2.test"), what="a new session admitted")


def greets_as(port, prefix):
    with connect(port) as s:
        return read_reply(s).startswith(prefix)


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_tls_sessions_resume_across_a_reload(sallyport, ca, tmp_path, version):
    port = free_port()
    text = simple_config(ca, port, tmp_path / "box").replace(
        "[listener submission]", "[listener submissions]")
    sp = sallyport(text)
    ctx = client_context(ca.cert)
    ctx.maximum_version = getattr(ssl.TLSVersion, version)
    sni = f"mail.{DOMAIN}"
    with ctx.wrap_socket(connect(port), server_hostname=sni) as first:
        assert read_reply(first).startswith(b"220 ")  # the ticket comes with it in TLS 1.3
        ticket = first.session
        first.sendall(b"QUIT\r\n")
        read_reply(first)
    assert ticket is not None and ticket.has_ticket
    reload(sp, 2)
    with ctx.wrap_socket(connect(port), server_hostname=sni, session=ticket) as second:
        assert read_reply(second).startswith(b"220 ")
        assert second.session_reused, "a ticket from before the reload was not accepted"
        second.sendall(b"QUIT\r\n")
        read_reply(second)


def test_users_file_is_read_again(sallyport, ca, tmp_path):
    """The mailbox's users file: a user added and a reload later, AUTH works."""
    port = free_port()
    users = tmp_path / "users"
    users.write_text("")
    text = simple_config(ca, port, tmp_path / "box").replace(
        f"maildir = {tmp_path / 'box'}\n", f"maildir = {tmp_path / 'box'}\nusers = {users}\n")
    sp = sallyport(text)
    users_file(tmp_path, "carol", "pw")
    reload(sp, 2)
    s = LoopbackSMTP("gw.test", MAILBOX_PORTS[port], timeout=CLIENT_TIMEOUT)
    try:
        s.ehlo("client.test")
        assert s.login("carol", "pw")[0] == 235
        s.quit()
    finally:
        s.close()
