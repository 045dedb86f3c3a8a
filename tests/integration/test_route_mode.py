"""Terminate or passthrough per route: `mode` on a [route] overrides the
listener's, so one address passes mail.a.test's TLS through to its own
server and terminates mail.b.test's. sallyport reads every ClientHello
first, routes by its SNI, and then either relays it or hands the bytes it
read to OpenSSL. Tested with both kinds of route on one listener, for SMTP
(465, and 587 after STARTTLS) against Postfix and for IMAP (993, and 143
after STARTTLS) against Dovecot: the client sees the backend's certificate
on the passthrough route and sallyport's on the terminated one, and the
mail or the login goes through. The config check refuses pairs that cannot
work, saying why."""
import ssl

import pytest

from access_helpers import LoopbackIMAP4, LoopbackIMAP4_SSL
from conftest import free_port, run_check, wait_for
from dovecot import dovecot_module_factory  # noqa: F401  (a fixture)
from postfix import postfix_module_factory  # noqa: F401  (a fixture)
from smtp_helpers import (SENDER, LoopbackSMTP, LoopbackSMTP_SSL, certificate_section, issue,
                          log_fields, make_message, marker,
                          session_lines, standard_body)

PASSED = "mail.a.test"      # passed through: the backend's own certificate
TERMINATED = "mail.b.test"  # terminated: sallyport's certificate
IMAP_PASSED = "imap.a.test"
IMAP_TERMINATED = "imap.b.test"


def san_names(sock):
    return [v for k, v in sock.getpeercert().get("subjectAltName", ()) if k == "DNS"]


def two_routes(ca, service, port, passed, terminated, passed_endpoint, terminated_endpoint,
               listener_mode="terminate"):
    """A listener whose default is `listener_mode`, a passthrough route for
    `passed` and a terminating one for `terminated`."""
    return (f"[global]\nlog_level = info\n\n"
            + certificate_section("gw", *issue(ca, terminated))
            + f"[listener {service}]\naddress = 127.0.0.1:{port}\nmode = {listener_mode}\n"
              f"hostname = gw.test\n\n"
            + f"[backend pass]\n{service} = {passed_endpoint}\n\n"
            + f"[backend term]\n{service} = {terminated_endpoint}\nca = {ca.cert}\n\n"
            + f"[route a]\nsni = {passed}\nbackend = pass\nmode = passthrough\n\n"
            + f"[route b]\nsni = {terminated}\nbackend = term\nmode = terminate\n")


def both_modes(sp):
    """{sni: mode} of the session lines once both names have one, else None."""
    modes = {f["sni"]: f["mode"] for f in (log_fields(l) for l in session_lines(sp.log()))}
    return modes if len(modes) == 2 else None


# ---- SMTP: Postfix ------------------------------------------------------------------

@pytest.fixture(scope="module")
def pf(ca, postfix_module_factory):
    """Postfix with a certificate for mail.a.test (the passed-through name)."""
    cert, key = issue(ca, PASSED)
    return postfix_module_factory(["routemode.test"], cert=cert, key=key)


@pytest.mark.parametrize("listener_mode", ["terminate", "passthrough"])
@pytest.mark.parametrize("service", ["submissions", "submission"])
def test_smtp_both_kinds_of_route_on_one_listener(sallyport, ca, pf, service, listener_mode):
    port = free_port()
    passed_endpoint = (f"127.0.0.1:{pf.implicit_port} implicit" if service == "submissions"
                       else f"127.0.0.1:{pf.starttls_port} starttls")
    sp = sallyport(two_routes(ca, service, port, PASSED, TERMINATED, passed_endpoint,
                              f"127.0.0.1:{pf.plain_port} plain", listener_mode))
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    for name, cert_name in ((PASSED, PASSED), (TERMINATED, TERMINATED), (PASSED, PASSED)):
        rcpt = pf.new_address("routemode.test")
        mark = marker()
        if service == "submissions":
            s = LoopbackSMTP_SSL(name, port, local_hostname="client.test", context=ctx, timeout=30)
        else:
            s = LoopbackSMTP(name, port, local_hostname="client.test", timeout=30)
            s.ehlo()
            s.starttls(context=ctx)
        assert san_names(s.sock) == [cert_name]
        s.ehlo()
        assert not s.sendmail(SENDER, [rcpt], make_message(mark, standard_body(mark), rcpt))
        s.quit()
        pf.wait_for_message(rcpt)
    modes = wait_for(lambda: both_modes(sp), what="both session lines")
    assert modes == {PASSED: "passthrough", TERMINATED: "terminate"}, modes


# ---- IMAP: Dovecot ------------------------------------------------------------------

@pytest.fixture(scope="module")
def dv(dovecot_module_factory):
    """Dovecot with a certificate for imap.a.test (the passed-through name)."""
    return dovecot_module_factory(IMAP_PASSED)


@pytest.mark.parametrize("listener_mode", ["terminate", "passthrough"])
@pytest.mark.parametrize("service", ["imaps", "imap"])
def test_imap_both_kinds_of_route_on_one_listener(sallyport, ca, dv, service, listener_mode):
    port = free_port()
    passed_endpoint = (f"127.0.0.1:{dv.imaps_port} implicit" if service == "imaps"
                       else f"127.0.0.1:{dv.imap_port} starttls")
    sp = sallyport(two_routes(ca, service, port, IMAP_PASSED, IMAP_TERMINATED, passed_endpoint,
                              f"127.0.0.1:{dv.imap_plain_port} plain", listener_mode))
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    user, password = next(iter(dv.users.items()))
    for name in (IMAP_PASSED, IMAP_TERMINATED):
        if service == "imaps":
            m = LoopbackIMAP4_SSL(name, port, ssl_context=ctx, timeout=30)
        else:
            m = LoopbackIMAP4(name, port, timeout=30)
            m.starttls(ssl_context=ctx)
        assert san_names(m.sock)[0] == name
        m.login(user, password)
        assert m.select("INBOX")[0] == "OK"
        m.logout()
    modes = wait_for(lambda: both_modes(sp), what="both session lines")
    assert modes == {IMAP_PASSED: "passthrough", IMAP_TERMINATED: "terminate"}, modes


# ---- the config check ----------------------------------------------------------------

def test_check_refuses_a_passthrough_route_the_listener_cannot_serve(ca, tmp_path):
    """A STARTTLS listener (default terminate) whose passthrough route leads
    to an implicit-TLS backend: the pair cannot work, and the check says why
    and where."""
    text = (certificate_section("gw", *issue(ca, TERMINATED))
            + "[listener submission]\naddress = 127.0.0.1:2587\n"
              "[backend mx]\nsubmission = 127.0.0.1:2465 implicit\n"
              "[route a]\nsni = *\nbackend = mx\nmode = passthrough\n")
    code, out = run_check(text, tmp_path)
    assert code != 0
    assert ("backend: listener 'submission' passes TLS through for this route (mode), so "
            "backend 'mx' must speak STARTTLS for submission, but 127.0.0.1:2465 is implicit "
            "TLS (the backend would greet inside TLS)") in out, out


def test_check_refuses_a_terminating_route_without_certificate(tmp_path):
    text = ("[listener submissions]\naddress = 127.0.0.1:2465\nmode = passthrough\n"
            "[backend mx]\nhost = 127.0.0.1\n"
            "[route a]\nsni = *\nbackend = mx\nmode = terminate\n")
    code, out = run_check(text, tmp_path)
    assert code != 0
    assert ("check.conf:9: mode: route 'a' terminates TLS, but there is no [certificate] (add "
            "one, or set mode = passthrough)") in out, out


def test_a_hello_only_openssl_takes_never_reaches_a_passthrough_route(sallyport, ca):
    """A ClientHello that sallyport's parser refuses (a server name with '!')
    goes to OpenSSL on a terminating listener. If its name then leads to a
    passthrough route, the handshake is refused (alert unrecognized_name):
    TLS that sallyport terminated is never relayed as if it were the
    client's, so the backend gets no connection and no plaintext."""
    import subprocess
    from fakebackend import FakeBackend, hold
    port = free_port()
    with FakeBackend([hold()]) as fb:
        sp = sallyport(certificate_section("gw", *issue(ca, TERMINATED))
                       + f"[listener imaps]\naddress = 127.0.0.1:{port}\nhostname = gw.test\n"
                       + f"[backend pass]\nimaps = {fb.address} implicit\n"
                       + "[route a]\nsni = *\nbackend = pass\nmode = passthrough\n")
        r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                            "-servername", "x!y.test", "-CAfile", str(ca.cert)],
                           input=b"a1 LOGIN alice secret\r\n", capture_output=True, timeout=30)
        assert b"unrecognized name" in r.stdout + r.stderr, r
        line = wait_for(lambda: next(iter(session_lines(sp.log())), None), what="session line")
        assert "alert unrecognized_name" in line, line
        assert fb.count == 0
