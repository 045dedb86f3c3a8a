"""sallyport's SMTP listeners in every way (implicit TLS or STARTTLS, terminate
or passthrough), end to end with real clients (smtplib, curl, swaks, openssl
s_client) against real backends (the embedded mailbox and Postfix).

Every message is checked where it lands: the body's sha256 in the right
Maildir (the mailbox keeps CRLF and prepends Return-Path:/Received:; Postfix
stores LF and adds its own headers)."""
import base64
import re
import smtplib
import socket

import pytest

from conftest import CertAuthority, free_port
from postfix import postfix_module_factory  # noqa: F401  (a fixture)
from smtp_helpers import (
    CLIENTS, IMPLICIT_PASSTHROUGH, IMPLICIT_TERMINATE, PASSWORD, SENDER,
    STARTTLS_PASSTHROUGH, STARTTLS_TERMINATE, USER, WAYS, WAY_IDS, OpenSSLDialogue,
    assert_mailbox_stored, assert_postfix_stored, backend_section, certificate_section,
    dot_body, eightbit_body, global_section, issue, large_body, listener_section,
    log_fields, mailbox_section, mailbox_tls_for, maildir_messages, make_message, marker,
    route_section, send, smtplib_session, standard_body, users_file, wait_maildir,
    wait_postfix, wait_session_line)

SNI = "mail.route1.test"
RCPT = "bob@route1.test"
AUTH = (USER, PASSWORD)
CLIENT_IDS = list(CLIENTS)


# ---- fixtures and set-ups --------------------------------------------------------

@pytest.fixture(scope="module")
def pf(ca, postfix_module_factory):
    """One Postfix for the module (route1.test, route2.test), its certificate
    issued for the SNI names the clients ask for."""
    cert, key = issue(ca, "mail.route1.test", "mail.route2.test")
    return postfix_module_factory(["route1.test", "route2.test"], cert=cert, key=key)


def mailbox_gateway(sallyport, tmp_path, ca, way, auth=True):
    """sallyport with one listener of `way` whose only route (SNI) leads to an
    embedded mailbox: plain behind a terminate listener, of the listener's TLS
    flavour (certificate issued for SNI) behind a passthrough one. Returns
    (sallyport, listener port, Maildir)."""
    port, mport = free_port(), free_port()
    maildir = tmp_path / "Maildir"
    cert, key = issue(ca, SNI)
    conf = global_section()
    if not way.passthrough:
        conf += certificate_section("gw", cert, key)
    conf += listener_section(way, port)
    conf += mailbox_section("box1", mport, maildir, tls=mailbox_tls_for(way), cert=cert,
                            key=key, users=users_file(tmp_path) if auth else None)
    conf += route_section("r1", SNI, "box1")
    return sallyport(conf), port, maildir


def postfix_gateway(sallyport, ca, way, pf, flavour, tls_name=SNI, ca_file="default"):
    """sallyport with one listener of `way` whose only route leads to Postfix's
    port of TLS flavour `flavour`, verified against the CA as `tls_name`."""
    port = free_port()
    pf_port = {"plain": pf.plain_port, "implicit": pf.implicit_port,
               "starttls": pf.starttls_port}[flavour]
    conf = global_section()
    if not way.passthrough:
        cert, key = issue(ca, SNI)
        conf += certificate_section("gw", cert, key)
    conf += listener_section(way, port)
    conf += backend_section("pf", {way.service: f"127.0.0.1:{pf_port} {flavour}"},
                            ca=ca.cert if ca_file == "default" else ca_file,
                            tls_name=tls_name)
    conf += route_section("r1", SNI, "pf")
    return sallyport(conf), port


# Every valid listener/backend-flavour pair against Postfix.
POSTFIX_CASES = [(w, f) for w in WAYS
                 for f in ((w.tls,) if w.passthrough else ("plain", "implicit", "starttls"))]
POSTFIX_IDS = [f"{w.id}-to-{f}" for w, f in POSTFIX_CASES]


# ---- every way, every client: embedded mailbox, with AUTH --------------------------

@pytest.mark.parametrize("client", CLIENT_IDS)
@pytest.mark.parametrize("way", WAYS, ids=WAY_IDS)
def test_mailbox_end_to_end(sallyport, tmp_path, ca, way, client):
    sp, port, maildir = mailbox_gateway(sallyport, tmp_path, ca, way)
    mark = marker()
    msg = make_message(mark, standard_body(mark), RCPT)
    send(client, way, port, SNI, ca.cert, [RCPT], msg, auth=AUTH, tmp=tmp_path)
    (stored,) = wait_maildir(maildir)
    assert_mailbox_stored(stored, msg)
    # The mailbox saw TLS only in passthrough (it is plain behind terminate), and AUTH.
    protocol = "ESMTP" + ("S" if way.passthrough else "") + "A"
    assert re.search(rb"\r\nReceived: from client\.test [^\r]* with " + protocol.encode()
                     + rb";", stored), stored[:400]
    line = wait_session_line(sp, f"sni={SNI}")
    f = log_fields(line)
    assert (f["route"], f["backend"], f["mode"]) == ("r1", "box1", way.mode), line


@pytest.mark.parametrize("way", WAYS, ids=WAY_IDS)
def test_mailbox_auth_is_required(sallyport, tmp_path, ca, way):
    """With a users file, the mailbox behind sallyport refuses mail without
    AUTH and a wrong password, and takes it after a good login."""
    sp, port, maildir = mailbox_gateway(sallyport, tmp_path, ca, way)
    mark = marker()
    msg = make_message(mark, standard_body(mark), RCPT)
    with smtplib_session(way.tls, port, SNI, ca.cert) as s:
        assert s.has_extn("auth"), s.esmtp_features
        code, text = s.mail(SENDER)
        assert 500 <= code < 600, (code, text)
    with smtplib_session(way.tls, port, SNI, ca.cert) as s:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login(USER, "wrong password")
    assert maildir_messages(maildir) == []
    with smtplib_session(way.tls, port, SNI, ca.cert, auth=AUTH) as s:
        assert not s.sendmail(SENDER, [RCPT], msg)
    (stored,) = wait_maildir(maildir)
    assert_mailbox_stored(stored, msg)


@pytest.mark.parametrize("way", WAYS, ids=WAY_IDS)
def test_mailbox_two_messages_one_session(sallyport, tmp_path, ca, way):
    """The relay carries a whole session, not one transaction: two messages
    (with RSET between) in one connection both arrive, in order."""
    sp, port, maildir = mailbox_gateway(sallyport, tmp_path, ca, way)
    msgs = []
    with smtplib_session(way.tls, port, SNI, ca.cert, auth=AUTH) as s:
        for i in range(2):
            mark = marker()
            msgs.append(make_message(mark, standard_body(mark), RCPT))
            assert not s.sendmail(SENDER, [RCPT], msgs[-1])
            assert s.rset()[0] == 250
    stored = wait_maildir(maildir, 2)
    assert len(stored) == 2
    for got, want in zip(sorted(stored, key=lambda m: m.endswith(msgs[1])), msgs):
        assert_mailbox_stored(got, want)


# ---- every valid pair, every client: Postfix ----------------------------------------

@pytest.mark.parametrize("client", CLIENT_IDS)
@pytest.mark.parametrize("way,flavour", POSTFIX_CASES, ids=POSTFIX_IDS)
def test_postfix_end_to_end(sallyport, tmp_path, ca, pf, way, flavour, client):
    sp, port = postfix_gateway(sallyport, ca, way, pf, flavour)
    rcpt = pf.new_address("route1.test")
    mark = marker()
    msg = make_message(mark, standard_body(mark), rcpt)
    send(client, way, port, SNI, ca.cert, [rcpt], msg, tmp=tmp_path)
    stored = wait_postfix(pf, rcpt, mark)      # in route1.test's Maildir
    assert_postfix_stored(stored, msg)
    # Postfix's Received: says whether its side of the connection was TLS.
    m = re.search(rb"\n\tby postfix\.test \(Postfix\) with (ESMTPS?) id ", stored)
    assert m, stored[:800]
    assert m.group(1) == (b"ESMTP" if flavour == "plain" else b"ESMTPS"), stored[:800]
    f = log_fields(wait_session_line(sp, f"sni={SNI}"))
    assert (f["route"], f["backend"], f["mode"]) == ("r1", "pf", way.mode), f


@pytest.mark.parametrize("flavour", ["implicit", "starttls"])
@pytest.mark.parametrize("bad", ["wrong-tls-name", "ca-not-trusted"])
def test_postfix_certificate_is_verified(sallyport, tmp_path, ca, pf, flavour, bad):
    """Terminate mode checks the backend's certificate: with a name it was not
    issued for, or without the CA that issued it, no session gets through."""
    if bad == "wrong-tls-name":
        sp, port = postfix_gateway(sallyport, ca, IMPLICIT_TERMINATE, pf, flavour,
                                   tls_name="other.route1.test")
    else:
        other_ca = CertAuthority(tmp_path / "other-ca")
        sp, port = postfix_gateway(sallyport, ca, IMPLICIT_TERMINATE, pf, flavour,
                                   ca_file=other_ca.cert)
    with pytest.raises(smtplib.SMTPConnectError) as e:   # instead of the greeting
        with smtplib_session("implicit", port, SNI, ca.cert):
            pass
    assert e.value.smtp_code == 421, e.value
    f = log_fields(wait_session_line(sp, f"sni={SNI}"))
    assert (f["route"], f["backend"]) == ("r1", "pf"), f
    assert "certificate" in f["close"], f"close reason does not say why: {f}"


# ---- content: 8-bit, dot-stuffing, size ----------------------------------------------

def _gateway(sallyport, tmp_path, ca, request, backend, way):
    """(sallyport, port, rcpt, check(msg, mark)) for a mailbox or a Postfix
    backend; a terminate listener reaches Postfix's port of the other TLS
    flavour."""
    if backend == "mailbox":
        sp, port, maildir = mailbox_gateway(sallyport, tmp_path, ca, way, auth=False)

        def check(msg, mark):
            (stored,) = wait_maildir(maildir)
            assert_mailbox_stored(stored, msg)
        return sp, port, RCPT, check
    pf = request.getfixturevalue("pf")
    flavour = way.tls if way.passthrough else \
        {"implicit": "starttls", "starttls": "implicit"}[way.tls]
    sp, port = postfix_gateway(sallyport, ca, way, pf, flavour)
    rcpt = pf.new_address("route1.test")

    def check(msg, mark):
        assert_postfix_stored(wait_postfix(pf, rcpt, mark), msg)
    return sp, port, rcpt, check


EIGHTBIT_CASES = ([("mailbox", w, "smtplib") for w in WAYS]
                  + [("postfix", w, "smtplib") for w in WAYS]
                  + [("mailbox", IMPLICIT_TERMINATE, "openssl"),
                     ("mailbox", STARTTLS_PASSTHROUGH, "openssl"),
                     ("postfix", STARTTLS_TERMINATE, "openssl")])


@pytest.mark.parametrize("backend,way,client", EIGHTBIT_CASES,
                         ids=[f"{b}-{w.id}-{c}" for b, w, c in EIGHTBIT_CASES])
def test_8bit_content_intact(sallyport, tmp_path, ca, request, backend, way, client):
    sp, port, rcpt, check = _gateway(sallyport, tmp_path, ca, request, backend, way)
    mark = marker()
    msg = make_message(mark, eightbit_body(mark), rcpt,
                       extra_headers=["MIME-Version: 1.0",
                                      "Content-Type: text/plain; charset=utf-8",
                                      "Content-Transfer-Encoding: 8bit"])
    assert set(range(0x80, 0x100)) <= set(msg)
    send(client, way, port, SNI, ca.cert, [rcpt], msg, mail_options=["BODY=8BITMIME"],
         tmp=tmp_path)
    check(msg, mark)


DOT_CASES = [("mailbox", IMPLICIT_TERMINATE), ("mailbox", STARTTLS_PASSTHROUGH),
             ("postfix", IMPLICIT_PASSTHROUGH)]


@pytest.mark.parametrize("client", CLIENT_IDS)
@pytest.mark.parametrize("backend,way", DOT_CASES,
                         ids=[f"{b}-{w.id}" for b, w in DOT_CASES])
def test_dot_stuffing_round_trip(sallyport, tmp_path, ca, request, backend, way, client):
    sp, port, rcpt, check = _gateway(sallyport, tmp_path, ca, request, backend, way)
    mark = marker()
    msg = make_message(mark, dot_body(mark), rcpt)
    send(client, way, port, SNI, ca.cert, [rcpt], msg, tmp=tmp_path)
    check(msg, mark)


LARGE_CASES = [("mailbox", IMPLICIT_TERMINATE), ("mailbox", STARTTLS_PASSTHROUGH),
               ("mailbox", STARTTLS_TERMINATE), ("postfix", IMPLICIT_PASSTHROUGH)]


@pytest.fixture(scope="module")
def large_body_20mb():
    return large_body()


@pytest.mark.parametrize("backend,way", LARGE_CASES,
                         ids=[f"{b}-{w.id}" for b, w in LARGE_CASES])
def test_20mb_message_intact(sallyport, tmp_path, ca, request, large_body_20mb, backend, way):
    sp, port, rcpt, check = _gateway(sallyport, tmp_path, ca, request, backend, way)
    mark = marker()
    msg = make_message(mark, large_body_20mb, rcpt)
    assert len(msg) > 20 * 1024 * 1024
    send("smtplib", way, port, SNI, ca.cert, [rcpt], msg, tmp=tmp_path)
    check(msg, mark)
    f = log_fields(wait_session_line(sp, f"sni={SNI}"))
    assert int(f["bytes_in"]) > 20 * 1024 * 1024, f


# ---- no SNI: the default route and the default certificate ------------------------------

def _default_route_gateway(sallyport, tmp_path, ca):
    """implicit+terminate; route r1 (mail.route1.test) -> box1 with its own
    certificate; route dflt (*) -> box0; certificate dflt (default.test) is the
    default one although listed last."""
    port = free_port()
    c1, k1 = issue(ca, SNI)
    c0, k0 = issue(ca, "default.test")
    md1, md0 = tmp_path / "Maildir1", tmp_path / "Maildir0"
    conf = (global_section() + certificate_section("r1", c1, k1)
            + certificate_section("dflt", c0, k0, default=True)
            + listener_section(IMPLICIT_TERMINATE, port)
            + mailbox_section("box1", free_port(), md1)
            + mailbox_section("box0", free_port(), md0)
            + route_section("dflt", "*", "box0")
            + route_section("r1", SNI, "box1"))
    return sallyport(conf), port, md1, md0


def test_no_sni_python_lands_on_default_route(sallyport, tmp_path, ca):
    sp, port, md1, md0 = _default_route_gateway(sallyport, tmp_path, ca)
    mark = marker()
    msg = make_message(mark, standard_body(mark), RCPT)
    with smtplib_session("implicit", port, None, ca.cert, no_sni=True) as s:
        cert = s.sock.getpeercert()
        assert dict(cert["subjectAltName"]) == {"DNS": "default.test"}, cert
        client_port = s.sock.getsockname()[1]
        assert not s.sendmail(SENDER, [RCPT], msg)
    (stored,) = wait_maildir(md0)
    assert_mailbox_stored(stored, msg)
    assert maildir_messages(md1) == []
    f = log_fields(wait_session_line(sp, f"client=127.0.0.1:{client_port} "))
    assert (f["sni"], f["route"], f["backend"]) == ("-", "dflt", "box0"), f


def test_no_sni_openssl_lands_on_default_route(sallyport, tmp_path, ca):
    sp, port, md1, md0 = _default_route_gateway(sallyport, tmp_path, ca)
    mark = marker()
    msg = make_message(mark, standard_body(mark), RCPT)
    send("openssl", IMPLICIT_TERMINATE, port, None, ca.cert, [RCPT], msg, tmp=tmp_path)
    (stored,) = wait_maildir(md0)
    assert_mailbox_stored(stored, msg)
    assert maildir_messages(md1) == []
    f = log_fields(wait_session_line(sp, "route="))
    assert (f["sni"], f["route"], f["backend"]) == ("-", "dflt", "box0"), f


def test_no_sni_openssl_gets_default_certificate(sallyport, tmp_path, ca):
    """s_client without SNI, verifying the chain only, sees default.test."""
    sp, port, md1, md0 = _default_route_gateway(sallyport, tmp_path, ca)
    d = OpenSSLDialogue("implicit", port, None, ca.cert, tmp_path, no_sni=True)
    try:
        d.reply(220)
        d.command("QUIT", 221)
        assert d.finish() == 0
        err = d.stderr()
    finally:
        d.close()
    assert "depth=0 CN = default.test" in err, err
    assert "mail.route1.test" not in err, err


# ---- STARTTLS injection, end to end: nothing injected is ever stored -----------------

def injected_transaction(rcpt=RCPT):
    auth = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    return (b"EHLO injected.test\r\nAUTH PLAIN " + auth + b"\r\nMAIL FROM:<" + SENDER.encode()
            + b">\r\nRCPT TO:<" + rcpt.encode() + b">\r\nDATA\r\nSubject: injected\r\n\r\n"
            b"injected\r\n.\r\nQUIT\r\n")


@pytest.mark.parametrize("split", [False, True], ids=["same-write", "after-go-ahead"])
@pytest.mark.parametrize("way", [STARTTLS_TERMINATE, STARTTLS_PASSTHROUGH], ids=str)
def test_injected_transaction_is_never_stored(sallyport, tmp_path, ca, way, split):
    """AUTH, MAIL, RCPT and DATA sent in cleartext behind STARTTLS (in the same
    write, or after the go-ahead instead of a ClientHello) would deliver a
    message if they were read as if they came inside TLS. None is stored; a
    real session afterwards is."""
    sp, port, maildir = mailbox_gateway(sallyport, tmp_path, ca, way)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        s.sendall(b"EHLO client.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        if split:
            s.sendall(b"STARTTLS\r\n")
            assert f.readline().startswith(b"220 2.0.0")
            s.sendall(injected_transaction())
        else:
            s.sendall(b"STARTTLS\r\n" + injected_transaction())
        try:
            rest = f.read()
        except ConnectionResetError:  # closed with the injected bytes unread
            rest = b""
        assert rest == b"", rest  # closed, nothing answered
    sp.wait_log("command injection")
    mark = marker()
    msg = make_message(mark, standard_body(mark), RCPT)
    send("smtplib", way, port, SNI, ca.cert, [RCPT], msg, auth=AUTH, tmp=tmp_path)
    (stored,) = wait_maildir(maildir)
    assert b"injected" not in stored
    assert_mailbox_stored(stored, msg)
