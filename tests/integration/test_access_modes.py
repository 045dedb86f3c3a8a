"""sallyport's IMAP, POP3 and ManageSieve listeners in every way (implicit TLS
or STARTTLS, terminate or passthrough), end to end with real clients
(imaplib, poplib, curl, openssl s_client, the SieveClient) against a real
Dovecot; terminate listeners against each of Dovecot's plain, implicit-TLS
and STARTTLS ports.

Every message is delivered through the same sallyport's SMTP path (its
submissions listener -> an embedded mailbox writing into the Dovecot user's
Maildir), fetched back through the access listener and compared byte for
byte. Each test has a Dovecot user of its own, so its message is UID 1 and
POP3 message 1. In terminate mode the client must see sallyport's certificate,
in passthrough Dovecot's; Dovecot's login log says whether its side was TLS.

The greeting tests read the raw stream: a STARTTLS client is greeted once, by
sallyport, before TLS (the backend's greeting never reaches it); an implicit-TLS
client is greeted once, and not with capabilities from before a STARTTLS."""
import re

import pytest

from access_helpers import (
    FETCHERS, FIXTURE_FLAVOURS, IMAP_WAYS, POP3_WAYS, SIEVE_CLIENTS, SIEVE_WAYS, AccessWay,
    RawSession, Target, assert_certificate, assert_same_message, assert_session_fields,
    backend_cases, case_ids, deliver, dovecot_port, marker, UserPool, sieve_script_on_disk,
    sieve_script_text, start_gateway, wait_access_line, wait_dovecot_login)
from dovecot import dovecot  # noqa: F401  (a module-scoped fixture)

IMAP_CASES = backend_cases(IMAP_WAYS)
POP3_CASES = backend_cases(POP3_WAYS)
SIEVE_CASES = backend_cases(SIEVE_WAYS)


@pytest.fixture(scope="module")
def users(dovecot):
    return UserPool(dovecot, 80)


@pytest.fixture
def one_target(dovecot, users):
    """one_target(flavour): route r1 for Dovecot's own name (its certificate
    fits passthrough) to its port of `flavour`, for a user of the test's own."""
    def make(flavour):
        user, password = users.take()
        return Target("r1", dovecot.hostname, dovecot, user, password, flavour)
    return make


def check_session_line(gw, way, target, flavour):
    (f,) = wait_access_line(gw.sp, way.service, target.sni)
    assert_session_fields(f, way, target, dovecot_port(target.dv, way.proto, flavour))


# ---- IMAP and POP3: every way, every backend flavour, every client ----------------------

def fetch_end_to_end(sallyport, tmp_path, ca, one_target, way, flavour, client):
    t = one_target(flavour)
    gw = start_gateway(sallyport, ca, way, [t])
    sent, stored = deliver(gw, t, ca.cert)
    got = FETCHERS[way.proto][client](way, gw.port, t.sni, ca.cert, t.user, t.password,
                                      tmp_path)
    assert_same_message(got.message, stored, sent)
    assert_certificate(got.cn, way, t)
    wait_dovecot_login(t, tls=flavour != "plain")
    check_session_line(gw, way, t, flavour)


@pytest.mark.parametrize("client", list(FETCHERS["imap"]))
@pytest.mark.parametrize("way,flavour", IMAP_CASES, ids=case_ids(IMAP_CASES))
def test_imap_fetch(sallyport, tmp_path, ca, one_target, way, flavour, client):
    fetch_end_to_end(sallyport, tmp_path, ca, one_target, way, flavour, client)


@pytest.mark.parametrize("client", list(FETCHERS["pop3"]))
@pytest.mark.parametrize("way,flavour", POP3_CASES, ids=case_ids(POP3_CASES))
def test_pop3_retr(sallyport, tmp_path, ca, one_target, way, flavour, client):
    fetch_end_to_end(sallyport, tmp_path, ca, one_target, way, flavour, client)


# ---- ManageSieve ---------------------------------------------------------------------

@pytest.mark.parametrize("client", list(SIEVE_CLIENTS))
@pytest.mark.parametrize("way,flavour", SIEVE_CASES, ids=case_ids(SIEVE_CASES))
def test_sieve_putscript(sallyport, tmp_path, ca, dovecot, one_target, way, flavour, client):
    """Cleartext capabilities from sallyport (STARTTLS, no SASL mechanism), then
    after TLS Dovecot's (through sallyport or straight from Dovecot), exactly
    once; AUTHENTICATE PLAIN; the script lands on Dovecot's disk as sent."""
    t = one_target(flavour)
    gw = start_gateway(sallyport, ca, way, [t])
    mark = marker()
    name, script = f"s{mark[:10]}", sieve_script_text(mark)
    got = SIEVE_CLIENTS[client](way, gw.port, t.sni, ca.cert, t.user, t.password, name, script,
                                tmp=tmp_path)
    assert_certificate(got.cn, way, t)
    assert got.extra["listed"] == [(name, False)], got.extra
    assert dovecot.sieve_scripts(t.user) == [name]
    assert sieve_script_on_disk(dovecot, t.user, name) == script.encode()
    wait_dovecot_login(t, tls=flavour != "plain")
    check_session_line(gw, way, t, flavour)


# ---- greetings in terminate mode ---------------------------------------------------------

IMAP_STARTTLS_TERMINATE = AccessWay("imap", "starttls", "terminate")
IMAP_IMPLICIT_TERMINATE = AccessWay("imap", "implicit", "terminate")
POP3_STARTTLS_TERMINATE = AccessWay("pop3", "starttls", "terminate")
POP3_IMPLICIT_TERMINATE = AccessWay("pop3", "implicit", "terminate")
STALE_STARTTLS = re.compile(rb"\[CAPABILITY [^\]]*\bSTARTTLS\b", re.I)


def imap_tagged(s, tag):
    """Reads up to the line tagged `tag`; returns (untagged lines, tagged line)."""
    untagged = []
    while not (line := s.readline()).startswith(tag.encode() + b" "):
        untagged.append(line)
    return untagged, line


def imap_login_logout(s, t):
    s.send(f"b LOGIN {t.user} {t.password}")
    _, done = imap_tagged(s, "b")
    assert done.startswith(b"b OK"), s.lines
    s.send("c LOGOUT")
    untagged, done = imap_tagged(s, "c")
    assert done.startswith(b"c OK") and untagged[0].startswith(b"* BYE"), s.lines
    assert s.read_to_eof() == b"", "more after the LOGOUT reply"


def assert_never_saw_backend_greeting(s, dv):
    """Dovecot's greeting carries its token; nothing the client read may."""
    leaked = [l for l in s.lines if dv.token.encode() in l]
    assert not leaked, f"Dovecot's greeting reached the client: {leaked!r}"


@pytest.mark.parametrize("flavour", FIXTURE_FLAVOURS["imap"])
def test_imap_starttls_no_second_greeting(sallyport, ca, dovecot, one_target, flavour):
    """After STARTTLS the next thing the client reads is the answer to its own
    command: `a CAPABILITY` gives `* CAPABILITY ...` (Dovecot's) and `a OK`."""
    t = one_target(flavour)
    gw = start_gateway(sallyport, ca, IMAP_STARTTLS_TERMINATE, [t])
    with RawSession(gw.port) as s:
        greeting = s.readline()
        assert greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED]"), \
            greeting
        s.send("s STARTTLS")
        assert s.readline().startswith(b"s OK"), s.lines
        s.starttls(ca.cert, t.sni)
        s.send("a CAPABILITY")
        first = s.readline()
        assert first.startswith(b"* CAPABILITY "), \
            f"expected the CAPABILITY answer first, got {first!r} (a second greeting?)"
        assert b" AUTH=PLAIN" in first and b"LOGINDISABLED" not in first, \
            f"not Dovecot's capabilities after TLS: {first!r}"
        assert s.readline().startswith(b"a OK"), s.lines
        imap_login_logout(s, t)
    assert_never_saw_backend_greeting(s, dovecot)
    check_session_line(gw, IMAP_STARTTLS_TERMINATE, t, flavour)


@pytest.mark.parametrize("flavour", FIXTURE_FLAVOURS["imap"])
def test_imap_implicit_one_greeting(sallyport, ca, dovecot, one_target, flavour):
    """One `* OK` greeting: Dovecot's own from a plain or implicit-TLS port;
    sallyport's fresh one after a STARTTLS dance, without the backend's stale
    pre-TLS capabilities (STARTTLS)."""
    t = one_target(flavour)
    gw = start_gateway(sallyport, ca, IMAP_IMPLICIT_TERMINATE, [t])
    with RawSession(gw.port) as s:
        s.wrap_implicit(ca.cert, t.sni)
        greeting = s.readline()
        assert greeting.startswith(b"* OK "), greeting
        if flavour == "starttls":
            assert dovecot.token.encode() not in greeting, \
                f"the backend's pre-STARTTLS greeting was passed on: {greeting!r}"
            assert not STALE_STARTTLS.search(greeting), greeting
        else:
            assert dovecot.token.encode() in greeting, greeting
        s.send("a NOOP")
        reply = s.readline()
        assert reply.startswith(b"a OK"), f"expected `a OK`, got {reply!r} (a second greeting?)"
        imap_login_logout(s, t)
    greetings = [l for l in s.lines if l.startswith(b"* OK")]
    assert len(greetings) == 1, greetings
    check_session_line(gw, IMAP_IMPLICIT_TERMINATE, t, flavour)


def read_capa(s):
    """Sends CAPA; returns (status line, capability lines)."""
    s.send("CAPA")
    status = s.readline()
    lines = []
    while (line := s.readline()) != b".":
        lines.append(line)
    return status, lines


def pop3_login_stat_quit(s, t):
    s.send(f"USER {t.user}")
    assert s.readline().startswith(b"+OK"), s.lines
    s.send(f"PASS {t.password}")
    assert s.readline().startswith(b"+OK"), s.lines
    s.send("STAT")
    assert s.readline() == b"+OK 0 0", s.lines
    s.send("QUIT")
    assert s.readline().startswith(b"+OK"), s.lines
    assert s.read_to_eof() == b"", "more after the QUIT reply"


@pytest.mark.parametrize("flavour", FIXTURE_FLAVOURS["pop3"])
def test_pop3_stls_no_second_greeting(sallyport, ca, dovecot, one_target, flavour):
    """After STLS the client's CAPA gets Dovecot's capability list, not a
    greeting followed by it."""
    t = one_target(flavour)
    gw = start_gateway(sallyport, ca, POP3_STARTTLS_TERMINATE, [t])
    with RawSession(gw.port) as s:
        greeting = s.readline()
        assert greeting.startswith(b"+OK ") and b"sallyport" in greeting, greeting
        status, caps = read_capa(s)
        assert status.startswith(b"+OK") and b"STLS" in caps and b"USER" not in caps, \
            (status, caps)
        s.send("STLS")
        assert s.readline().startswith(b"+OK"), s.lines
        s.starttls(ca.cert, t.sni)
        status, caps = read_capa(s)
        assert status.startswith(b"+OK") and dovecot.token.encode() not in status, \
            f"CAPA answered by a greeting: {status!r}"
        assert not [c for c in caps if c.startswith((b"+OK", b"-ERR"))], \
            f"a status line inside the capability list (a second greeting?): {caps!r}"
        assert b"USER" in caps, f"not Dovecot's capabilities after TLS: {caps!r}"
        pop3_login_stat_quit(s, t)
    assert_never_saw_backend_greeting(s, dovecot)
    check_session_line(gw, POP3_STARTTLS_TERMINATE, t, flavour)


@pytest.mark.parametrize("flavour", FIXTURE_FLAVOURS["pop3"])
def test_pop3_implicit_one_greeting(sallyport, ca, dovecot, one_target, flavour):
    t = one_target(flavour)
    gw = start_gateway(sallyport, ca, POP3_IMPLICIT_TERMINATE, [t])
    with RawSession(gw.port) as s:
        s.wrap_implicit(ca.cert, t.sni)
        greeting = s.readline()
        assert greeting.startswith(b"+OK"), greeting
        if flavour == "starttls":
            assert dovecot.token.encode() not in greeting, \
                f"the backend's pre-STLS greeting was passed on: {greeting!r}"
        else:
            assert dovecot.token.encode() in greeting, greeting
        status, caps = read_capa(s)
        assert status.startswith(b"+OK") and not [c for c in caps if c.startswith(b"+OK")], \
            f"a second greeting: {status!r} {caps!r}"
        assert b"USER" in caps, caps
        pop3_login_stat_quit(s, t)
    check_session_line(gw, POP3_IMPLICIT_TERMINATE, t, flavour)

