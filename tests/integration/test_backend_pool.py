"""Several backends per route: `backend = mx1 mx2` tries them in order (or
`balance = roundrobin`), and a backend host name with several addresses
tries each. A connect that is refused or times out, a refusing or missing
greeting, or a refused STARTTLS, before any client byte was forwarded,
moves the session on to the next; that address is marked down for the
backend's `down_time` (passive health) and skipped while another is left.
While any backend of a route is up, no client sees an error. The session's
log line names the backend that served and the ones that failed.

Tested with scripted backends for each kind of failure, and with two real
Postfix and two real Dovecot servers behind one route, one of them stopped in
the middle of a bounded client loop and started again."""
import socket
import ssl
import time

import pytest

from access_helpers import LoopbackIMAP4_SSL
from conftest import free_port, wait_for
from dovecot import dovecot_module_factory  # noqa: F401  (a fixture)
from fakebackend import FakeBackend, read_reply, recv_line, send, smtp_server
from postfix import postfix_module_factory  # noqa: F401  (a fixture)
from smtp_helpers import (SENDER, LoopbackSMTP_SSL, certificate_section, issue, log_fields,
                          make_message, marker,
                          session_lines, standard_body)

SNI = "mail.pool.test"


def pool_config(ca, port, backends, *, service="submissions", flavour="plain", balance=None,
                extra_global="", down_time=None, sni=SNI, extra_backend=""):
    """One terminating listener; backends: [(name, "HOST:PORT")] behind one route."""
    text = f"[global]\nlog_level = info\n{extra_global}\n"
    text += certificate_section("gw", *issue(ca, sni))
    text += f"[listener {service}]\naddress = 127.0.0.1:{port}\nhostname = gw.test\n\n"
    for name, where in backends:
        text += f"[backend {name}]\n{service} = {where} {flavour}\n"
        if down_time:
            text += f"down_time = {down_time}\n"
        text += extra_backend + "\n"
    text += f"[route r]\nsni = *\nbackend = {' '.join(n for n, _ in backends)}\n"
    if balance:
        text += f"balance = {balance}\n"
    return text


def tls_client(ca, port):
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    raw = socket.create_connection(("127.0.0.1", port), 30)
    return ctx.wrap_socket(raw, server_hostname=SNI)


def smtp_session(ca, port):
    """Greeting, NOOP, QUIT over implicit TLS; returns the greeting."""
    with tls_client(ca, port) as s:
        greeting = read_reply(s)
        s.sendall(b"NOOP\r\n")
        assert read_reply(s).startswith(b"250 ")
        s.sendall(b"QUIT\r\n")
        assert read_reply(s).startswith(b"221 ")
    return greeting


def session_fields(sp, count):
    return wait_for(lambda: (lambda f: f if len(f) >= count else None)(
        [log_fields(l) for l in session_lines(sp.log())]), what=f"{count} session line(s)")


GOOD = [smtp_server(name=b"good.test", greet=True)]

# Failures before any client byte reaches the backend, each as a script (or
# None: nothing listens at all).
FAILURES = {
    "refused": None,
    "greeting-421": [send(b"421 4.3.2 busy\r\n")],
    "silent": [recv_line()],                       # never greets: the connect timeout
    "starttls-refused": [send(b"220 bad ESMTP\r\n"), recv_line(b"EHLO"),
                         send(b"250-bad\r\n250 PIPELINING\r\n")],
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failing_first_backend_is_passed_over(sallyport, ca, failure):
    """The first backend fails in one way; the client is served by the
    second without seeing an error, and the log says which failed."""
    port = free_port()
    flavour = "starttls" if failure == "starttls-refused" else "plain"
    good_script = ([send(b"220 good.test ESMTP\r\n"), recv_line(b"EHLO"),
                    send(b"250-good.test\r\n250 STARTTLS\r\n"), recv_line(b"STARTTLS"),
                    send(b"220 go\r\n")] if flavour == "starttls" else GOOD)
    if flavour == "starttls":
        from fakebackend import server_context, tls
        good_script = good_script + [tls(server_context(*issue(ca, "good.test"))),
                                     smtp_server(name=b"good.test")]
    with FakeBackend(good_script) as good:
        bad = FakeBackend(FAILURES[failure]) if FAILURES[failure] is not None else None
        bad_where = bad.address if bad else f"127.0.0.1:{free_port()}"
        try:
            text = pool_config(ca, port, [("bad", bad_where), ("good", good.address)],
                               flavour=flavour, extra_global="connect_timeout = 2\n")
            if flavour == "starttls":
                text = text.replace("[backend good]\n",
                                    f"[backend good]\nca = {ca.cert}\ntls_name = good.test\n")
            sp = sallyport(text)
            greeting = smtp_session(ca, port)
            assert b"bad" not in greeting
            (f,) = session_fields(sp, 1)
            assert f["backend"] == "good" and f["failed"] == "bad", f
            assert "backend bad (" in sp.log() and "marked down for 30s" in sp.log()
            if bad:
                conn = bad.wait_connection()
                conn.wait_closed()
                assert b"NOOP" not in conn.received and b"QUIT" not in conn.received
        finally:
            if bad:
                bad.close()


def test_a_backend_marked_down_is_skipped_then_tried_again(sallyport, ca):
    """After a failure the backend is skipped (the next sessions go straight
    to the second one); after down_time it is tried again."""
    port = free_port()
    dead = free_port()
    with FakeBackend(GOOD) as good:
        sp = sallyport(pool_config(ca, port, [("first", f"127.0.0.1:{dead}"),
                                              ("second", good.address)], down_time=5))
        for _ in range(2):   # well within down_time, even under valgrind
            smtp_session(ca, port)
        fields = session_fields(sp, 2)
        assert [f["failed"] for f in fields] == ["first", "-"], fields
        assert sp.log().count("backend first (") == 1   # marked down once
        # Once down_time is over, the first backend is tried first again.
        def tried_again():   # a session every 0.2 s: about 25 within down_time
            time.sleep(0.2)
            smtp_session(ca, port)
            return [f for f in session_fields(sp, 1)[2:] if f["failed"] == "first"]
        wait_for(tried_again, what="the first backend tried again after down_time")


def test_every_backend_down_gives_the_client_the_protocols_error(sallyport, ca):
    port = free_port()
    sp = sallyport(pool_config(ca, port, [("a", f"127.0.0.1:{free_port()}"),
                                          ("b", f"127.0.0.1:{free_port()}")]))
    with tls_client(ca, port) as s:
        assert read_reply(s).startswith(b"421 4.3.0 ")
    (f,) = session_fields(sp, 1)
    assert f["failed"] == "a,b", f
    assert f["close"].startswith("backend connect failed: Connection refused"), f


def test_roundrobin_spreads_sessions(sallyport, ca):
    port = free_port()
    with FakeBackend(GOOD) as b1, FakeBackend(GOOD) as b2:
        sp = sallyport(pool_config(ca, port, [("b1", b1.address), ("b2", b2.address)],
                                   balance="roundrobin"))
        for _ in range(4):
            smtp_session(ca, port)
        fields = session_fields(sp, 4)
        served = [f["backend"] for f in fields]
        assert sorted(served) == ["b1", "b1", "b2", "b2"], served
        assert b1.count == 2 and b2.count == 2


@pytest.mark.parametrize("live", ["127.0.0.1", "127.0.0.3"])
def test_every_address_of_a_host_name_is_tried(sallyport, ca, live):
    """A backend name with two addresses (an /etc/hosts of sallyport's own
    says so), the backend listening on one of them only. Whichever the
    resolver lists first, the session gets through: one of the two cases
    has to try the second address."""
    port, backend_port = free_port(), free_port()
    hosts = "127.0.0.1 localhost\n127.0.0.1 two.pool.test\n127.0.0.3 two.pool.test\n"
    with FakeBackend(GOOD, host=live, port=backend_port) as fb:
        sp = sallyport(pool_config(ca, port, [("two", f"two.pool.test:{backend_port}")]),
                       hosts=hosts)
        assert smtp_session(ca, port).startswith(b"220 good.test")
        (f,) = session_fields(sp, 1)
        assert f["backend"] == "two" and f["backend_addr"] == f"{live}:{backend_port}", f
        assert fb.count == 1


# ---- active checks (check_interval) ---------------------------------------------------

V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n" + b"\x20\x00\x00\x00"


@pytest.mark.parametrize("kind", ["plain", "implicit", "proxy-v2", "proxy-v1"])
def test_checks_mark_a_backend_down_and_up_without_any_client(sallyport, ca, kind):
    """check_interval = 1: sallyport connects on its own and reads the
    greeting. Nothing listening: marked down; a server that greets on that
    port: up again. No client is involved, and a check sends no command
    (only the PROXY header a backend that wants one expects: LOCAL or
    UNKNOWN)."""
    from fakebackend import recv_proxy_header, server_context, tls
    port, backend_port = free_port(), free_port()
    flavour = "implicit" if kind == "implicit" else "plain"
    text = pool_config(ca, port, [("b1", f"127.0.0.1:{backend_port}")], flavour=flavour)
    extra = "check_interval = 1\n"
    if kind == "implicit":
        extra += f"ca = {ca.cert}\ntls_name = b1.test\n"
    if kind.startswith("proxy"):
        extra += f"proxy_protocol = {kind[-2:]}\n"
    sp = sallyport(text.replace("[backend b1]\n", "[backend b1]\n" + extra))
    wait_for(lambda: "backend b1 (127.0.0.1:" in sp.log() and "marked down for 30s: check: "
             "connect failed: Connection refused" in sp.log(), what="the check marking b1 down")
    script = [send(b"220 b1.test ESMTP\r\n"), recv_line()]
    if kind == "implicit":
        script = [tls(server_context(*issue(ca, "b1.test")))] + script
    if kind.startswith("proxy"):
        script = [recv_proxy_header()] + script
    with FakeBackend(script, port=backend_port) as fb:
        wait_for(lambda: "backend b1 (127.0.0.1:" in sp.log() and "is up again" in sp.log(),
                 what="the check marking b1 up again")
        conn = fb.wait_connection()
        conn.wait_closed()
        assert conn.received == b"", conn.received      # no command, ever
        if kind == "proxy-v2":
            assert conn.proxy_header == V2_LOCAL
        elif kind == "proxy-v1":
            assert conn.proxy_header == b"PROXY UNKNOWN\r\n"
    assert session_lines(sp.log()) == []


def test_a_check_does_not_undo_what_a_session_saw(sallyport, ca):
    """A STARTTLS backend that greets well but refuses STARTTLS: sessions
    mark it down; the checks, which only read the greeting, see it greet
    and must not mark it up again within its down_time (no flapping)."""
    from fakebackend import server_context, tls
    port = free_port()
    refusing = [send(b"220 bad.test ESMTP\r\n"), recv_line(b"EHLO"),
                send(b"250-bad.test\r\n250 PIPELINING\r\n")]
    good_script = [send(b"220 good.test ESMTP\r\n"), recv_line(b"EHLO"),
                   send(b"250-good.test\r\n250 STARTTLS\r\n"), recv_line(b"STARTTLS"),
                   send(b"220 go\r\n"), tls(server_context(*issue(ca, "good.test"))),
                   smtp_server(name=b"good.test")]
    with FakeBackend(refusing) as bad, FakeBackend(good_script) as good:
        text = pool_config(ca, port, [("bad", bad.address), ("good", good.address)],
                           flavour="starttls", extra_backend="check_interval = 1\n")
        text = text.replace("[backend good]\n",
                            f"[backend good]\nca = {ca.cert}\ntls_name = good.test\n")
        sp = sallyport(text)
        smtp_session(ca, port)
        (f,) = session_fields(sp, 1)
        assert f["backend"] == "good" and f["failed"] == "bad", f
        checks_before = bad.count
        wait_for(lambda: bad.count >= checks_before + 2, what="two more checks of bad")
        assert "backend bad (" in sp.log() and "is up again" not in sp.log()
        smtp_session(ca, port)
        fields = session_fields(sp, 2)
        assert fields[1]["backend"] == "good" and fields[1]["failed"] == "-", fields


# ---- real servers: two Postfix, two Dovecot ----------------------------------------

@pytest.fixture(scope="module")
def two_postfix(ca, postfix_module_factory):
    cert, key = issue(ca, SNI)
    return [postfix_module_factory(["pool.test"], cert=cert, key=key) for _ in range(2)]


def send_one(ca, port, rcpt):
    mark = marker()
    ctx = ssl.create_default_context(cafile=str(ca.cert))

    with LoopbackSMTP_SSL(SNI, port, local_hostname="client.test", context=ctx, timeout=30) as s:
        assert not s.sendmail(SENDER, [rcpt], make_message(mark, standard_body(mark), rcpt))


def test_two_postfix_one_stopped_mid_loop(sallyport, ca, two_postfix):
    """A bounded loop of messages through one route with two Postfix; the
    first is stopped after a third of the loop and started again after two
    thirds: every message is accepted and delivered by one of them, and the
    first one receives mail again once it is back."""
    pf1, pf2 = two_postfix
    port = free_port()
    sp = sallyport(pool_config(ca, port, [("pf1", f"127.0.0.1:{pf1.plain_port}"),
                                          ("pf2", f"127.0.0.1:{pf2.plain_port}")], down_time=1,
                               extra_backend="check_interval = 1\n"))
    sent = []

    def delivered_once(rcpt):
        wait_for(lambda: len(pf1.messages(rcpt)) + len(pf2.messages(rcpt)) == 1,
                 what=f"{rcpt} delivered once")

    for i in range(15):
        if i == 5:
            for rcpt in sent:          # what pf1 accepted reaches its Maildir first:
                delivered_once(rcpt)   # the stop below is sallyport's test, not Postfix's
            pf1.stop()
        if i == 10:
            pf1.restart()
            # The active check sees it back before any session tries it.
            wait_for(lambda: f"backend pf1 (127.0.0.1:{pf1.plain_port}, submissions) is up "
                     "again" in sp.log(), what="pf1's check seeing it back")
        rcpt = pf1.new_address("pool.test")
        send_one(ca, port, rcpt)       # raises on any failure a client would see
        sent.append(rcpt)
    for rcpt in sent:
        delivered_once(rcpt)
    assert all(pf2.messages(r) for r in sent[5:10])   # pf1 was down
    assert all(pf1.messages(r) for r in sent[:5])     # in order: the first serves

    def pf1_serves_again():
        rcpt = pf1.new_address("pool.test")
        send_one(ca, port, rcpt)
        return wait_for(lambda: pf1.messages(rcpt) or pf2.messages(rcpt),
                        what="delivery") and pf1.messages(rcpt)
    wait_for(pf1_serves_again, what="pf1 serving again after it came back")


@pytest.fixture(scope="module")
def two_dovecot(dovecot_module_factory):
    return [dovecot_module_factory("imap.pool.test") for _ in range(2)]


def test_two_dovecot_one_stopped_mid_loop(sallyport, ca, two_dovecot):
    """IMAP logins through one route with two Dovecot; the first is stopped
    and started again in the middle: no login fails, and the first serves
    again once it is back."""
    dv1, dv2 = two_dovecot
    port = free_port()
    text = pool_config(ca, port, [("dv1", f"127.0.0.1:{dv1.imap_plain_port}"),
                                  ("dv2", f"127.0.0.1:{dv2.imap_plain_port}")],
                       service="imaps", down_time=1, sni="imap.pool.test")
    sallyport(text)
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    user, password = next(iter(dv1.users.items()))

    def login():
        m = LoopbackIMAP4_SSL("imap.pool.test", port, ssl_context=ctx, timeout=30)
        m.login(user, password)
        assert m.select("INBOX")[0] == "OK"
        m.logout()

    for i in range(15):
        if i == 5:
            dv1.stop()
        if i == 10:
            dv1.restart()
        login()                         # raises on any failure a client would see
    before = len(dv1.logins())

    def dv1_serves_again():
        login()
        return len(dv1.logins()) > before
    wait_for(dv1_serves_again, what="dv1 serving again after it came back")
