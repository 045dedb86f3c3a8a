"""Routing by SNI on the IMAP, POP3 and ManageSieve listeners, in every way:
two routes, told apart by the server name, lead to two different Dovecot
instances (imap.route1.test and imap.route2.test), each with users the other
does not have.

The proof is a login: a user of one Dovecot logs in, fetches the message that
was delivered to it through sallyport's SMTP path (or uploads a Sieve script)
under its route's name, and is refused under the other route's name. In
terminate mode each name gets sallyport's certificate for that name (in
passthrough, the Dovecot's own); and every connection has one log line with
listener=, sni=, route=, backend= and mode=."""
from concurrent.futures import ThreadPoolExecutor

import pytest

from access_helpers import (
    FETCHERS, IMAP_WAYS, POP3_WAYS, SIEVE_CLIENTS, SIEVE_WAYS, Target, UserPool,
    assert_certificate, assert_same_message, assert_session_fields, deliver, dovecot_port,
    gateway_cn, imaplib_login_fails, marker, poplib_login_fails, sieve_authenticate_fails,
    sieve_script_on_disk, sieve_script_text, start_gateway, wait_access_line,
    wait_dovecot_login)
from dovecot import dovecot_module_factory  # noqa: F401  (a fixture)

HOST1, HOST2 = "imap.route1.test", "imap.route2.test"
LOGIN_FAILS = {"imap": {"imaplib": imaplib_login_fails},
               "pop3": {"poplib": poplib_login_fails}}
OTHER_FLAVOUR = {"implicit": "starttls", "starttls": "implicit"}


@pytest.fixture(scope="module")
def backends(dovecot_module_factory):
    """Two Dovecots, each with a pool of users of its own (made before any login)."""
    dv1 = dovecot_module_factory(HOST1, users={})
    dv2 = dovecot_module_factory(HOST2, users={})
    return [(dv1, UserPool(dv1, 40)), (dv2, UserPool(dv2, 40))]


def flavours(way):
    """Backend flavours of route r1 and r2: the listener's own in passthrough;
    in terminate, a different one per route (so that the endpoint, too, tells
    the routes apart)."""
    if way.passthrough:
        return way.tls, way.tls
    if way.proto == "sieve":
        return "starttls", "plain"
    return OTHER_FLAVOUR[way.tls], "plain"


def two_targets(backends, way):
    out = []
    for i, ((dv, pool), flavour) in enumerate(zip(backends, flavours(way)), 1):
        user, password = pool.take()
        out.append(Target(f"r{i}", dv.hostname, dv, user, password, flavour))
    return out


def both_ways(targets, attempt):
    """attempt(t, other) for (r1, r2) and (r2, r1) at once (each refusal of an
    unknown user takes Dovecot 0.5 s); returns both results in that order."""
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(attempt, t, other) for t, other in (targets, targets[::-1])]
        return [f.result() for f in futures]


def check_log(gw, way, targets, count):
    """`count` connections per name, each logged once with its route and backend."""
    for t in targets:
        lines = wait_access_line(gw.sp, way.service, t.sni, count)
        assert len(lines) == count, lines
        for f in lines:
            assert_session_fields(f, way, t, dovecot_port(t.dv, way.proto, t.flavour))


def assert_gateway_certificate_for(got, way, t, other):
    assert_certificate(got.cn, way, t)
    if not way.passthrough:
        assert got.cn != gateway_cn(other.sni)
        if got.dns_names is not None:
            assert t.sni in got.dns_names and other.sni not in got.dns_names, got.dns_names


@pytest.mark.parametrize("client", ["imaplib", "curl", "openssl"])
@pytest.mark.parametrize("way", IMAP_WAYS, ids=[w.id for w in IMAP_WAYS])
def test_imap_two_routes(sallyport, tmp_path, ca, backends, way, client):
    two_routes_fetch(sallyport, tmp_path, ca, backends, way, client)


@pytest.mark.parametrize("client", ["poplib", "curl", "openssl"])
@pytest.mark.parametrize("way", POP3_WAYS, ids=[w.id for w in POP3_WAYS])
def test_pop3_two_routes(sallyport, tmp_path, ca, backends, way, client):
    two_routes_fetch(sallyport, tmp_path, ca, backends, way, client)


def two_routes_fetch(sallyport, tmp_path, ca, backends, way, client):
    targets = two_targets(backends, way)
    gw = start_gateway(sallyport, ca, way, targets)
    for t, other in (targets, targets[::-1]):
        sent, stored = deliver(gw, t, ca.cert)
        got = FETCHERS[way.proto][client](way, gw.port, t.sni, ca.cert, t.user, t.password,
                                          tmp_path)
        assert_same_message(got.message, stored, sent)
        assert_gateway_certificate_for(got, way, t, other)
        wait_dovecot_login(t, tls=t.flavour != "plain")
    # Each user exists on one backend only, so the logins above prove the
    # routes; the other way round (once per way: Dovecot takes 0.5 s to refuse
    # an unknown user), under the other name the login fails.
    if client in LOGIN_FAILS[way.proto]:
        refused = both_ways(targets, lambda t, other: LOGIN_FAILS[way.proto][client](
            way, gw.port, other.sni, ca.cert, t.user, t.password))
        for (t, other), no in zip((targets, targets[::-1]), refused):
            assert no, f"{t.user} of {t.dv.hostname} logged in under {other.sni}"
            assert not [l for l in other.dv.logins() if f"user=<{t.user}>" in l]
        check_log(gw, way, targets, 2)
    else:
        check_log(gw, way, targets, 1)


@pytest.mark.parametrize("client", list(SIEVE_CLIENTS))
@pytest.mark.parametrize("way", SIEVE_WAYS, ids=[w.id for w in SIEVE_WAYS])
def test_sieve_two_routes(sallyport, tmp_path, ca, backends, way, client):
    targets = two_targets(backends, way)
    gw = start_gateway(sallyport, ca, way, targets)
    for t, other in (targets, targets[::-1]):
        mark = marker()
        name, script = f"s{mark[:10]}", sieve_script_text(mark)
        got = SIEVE_CLIENTS[client](way, gw.port, t.sni, ca.cert, t.user, t.password, name,
                                    script, tmp=tmp_path)
        assert got.extra["listed"] == [(name, False)], got.extra
        assert_gateway_certificate_for(got, way, t, other)
        assert sieve_script_on_disk(t.dv, t.user, name) == script.encode()
        assert not (other.dv.sieve_dir / t.user).exists()
        wait_dovecot_login(t, tls=t.flavour != "plain")
    if client == "SieveClient":
        refused = both_ways(targets, lambda t, other: sieve_authenticate_fails(
            gw.port, other.sni, ca.cert, t.user, t.password))
        for (t, other), no in zip((targets, targets[::-1]), refused):
            assert no, f"{t.user} of {t.dv.hostname} authenticated under {other.sni}"
        check_log(gw, way, targets, 2)
    else:
        check_log(gw, way, targets, 1)
