"""Routing by SNI on the SMTP listeners, in all four ways: which route (and so
which Maildir) a server name leads to, which certificate the client sees, and
the one log line per connection."""
import re

import pytest

from conftest import free_port
from smtp_helpers import (
    CLIENTS, PASSWORD, SENDER, USER, WAYS, WAY_IDS, assert_mailbox_stored,
    certificate_section, global_section, issue, listener_section, log_fields,
    mailbox_section, mailbox_tls_for, maildir_messages, make_message, marker, route_section,
    send, session_lines, smtplib_session, standard_body, users_file, wait_maildir,
    wait_session_line)

R1 = "mail.route1.test"
R2 = "mail.route2.test"
R2_WILD = "x.route2.test"
RCPT = "bob@route1.test"


def san_names(peercert):
    return {v for k, v in peercert.get("subjectAltName", ()) if k == "DNS"}


def gateway_cert(ca, *names):
    """What sallyport presents in terminate mode."""
    return issue(ca, *names)


def backend_cert(ca, box, *names):
    """What a TLS mailbox presents (passthrough): the names plus its own
    box name, so that a test can tell it from sallyport's."""
    return issue(ca, *names, f"{box}.backend.test")


def two_route_gateway(sallyport, tmp_path, ca, way, users=None):
    """Route r1 (mail.route1.test) -> box1, route r2 (mail.route2.test,
    *.route2.test) -> box2. Returns (sallyport, port, {box: Maildir})."""
    port = free_port()
    names = {"box1": [R1], "box2": [R2, "*.route2.test"]}
    conf = global_section()
    if not way.passthrough:
        conf += certificate_section("c1", *gateway_cert(ca, *names["box1"]))
        conf += certificate_section("c2", *gateway_cert(ca, *names["box2"]))
    conf += listener_section(way, port)
    maildirs = {}
    for box in ("box1", "box2"):
        maildirs[box] = tmp_path / f"Maildir-{box}"
        cert, key = backend_cert(ca, box, *names[box])
        conf += mailbox_section(box, free_port(), maildirs[box], tls=mailbox_tls_for(way),
                                cert=cert, key=key, users=users)
    conf += route_section("r2", f"{R2} *.route2.test", "box2")
    conf += route_section("r1", R1, "box1")
    return sallyport(conf), port, maildirs


# ---- two routes, two Maildirs ----------------------------------------------------------

@pytest.mark.parametrize("client", list(CLIENTS))
@pytest.mark.parametrize("way", WAYS, ids=WAY_IDS)
def test_two_routes_two_maildirs(sallyport, tmp_path, ca, way, client):
    sp, port, md = two_route_gateway(sallyport, tmp_path, ca, way)
    sent = {}
    for sni in (R1, R2, R2_WILD):
        mark = marker()
        sent[sni] = make_message(mark, standard_body(mark), RCPT)
        send(client, way, port, sni, ca.cert, [RCPT], sent[sni], tmp=tmp_path)
    (m1,) = wait_maildir(md["box1"])
    assert_mailbox_stored(m1, sent[R1])
    m2, m3 = wait_maildir(md["box2"], 2)
    stored2 = sorted([m2, m3], key=lambda m: m.endswith(sent[R2_WILD]))
    assert_mailbox_stored(stored2[0], sent[R2])
    assert_mailbox_stored(stored2[1], sent[R2_WILD])
    assert len(maildir_messages(md["box1"])) == 1
    for sni, route in ((R1, "r1"), (R2, "r2"), (R2_WILD, "r2")):
        f = log_fields(wait_session_line(sp, f"sni={sni} "))
        assert f["route"] == route, f


# ---- exact beats wildcard beats default ----------------------------------------------------

# SNI asked for -> the mailbox it must reach.
PRECEDENCE = [(R2, "exact"), (R2_WILD, "wild"), ("other.test", "any"),
              ("route2.test", "any"),        # *.route2.test needs one more label
              ("a.b.route2.test", "any")]    # ... and exactly one


@pytest.mark.parametrize("way", WAYS, ids=WAY_IDS)
def test_exact_beats_wildcard_beats_default(sallyport, tmp_path, ca, way):
    """The routes are listed default first, exact last: order must not matter."""
    port = free_port()
    names = {"exact": [R2], "wild": ["*.route2.test"],
             "any": ["other.test", "route2.test", "a.b.route2.test"]}
    conf = global_section()
    if not way.passthrough:
        conf += certificate_section("any", *gateway_cert(ca, *names["any"]), default=True)
        conf += certificate_section("wild", *gateway_cert(ca, *names["wild"]))
        conf += certificate_section("exact", *gateway_cert(ca, *names["exact"]))
    conf += listener_section(way, port)
    md = {}
    for box in ("any", "wild", "exact"):
        md[box] = tmp_path / f"Maildir-{box}"
        cert, key = backend_cert(ca, box, *names[box])
        conf += mailbox_section(box, free_port(), md[box], tls=mailbox_tls_for(way),
                                cert=cert, key=key)
    conf += route_section("any", "*", "any")
    conf += route_section("wild", "*.route2.test", "wild")
    conf += route_section("exact", R2, "exact")
    sp = sallyport(conf)

    expected = {box: [] for box in md}
    for sni, box in PRECEDENCE:
        mark = marker()
        msg = make_message(mark, standard_body(mark), RCPT)
        send("smtplib", way, port, sni, ca.cert, [RCPT], msg)
        expected[box].append(msg)
        f = log_fields(wait_session_line(sp, f"sni={sni} "))
        assert (f["route"], f["backend"]) == (box, box), (sni, f)
    for box, msgs in expected.items():
        stored = wait_maildir(md[box], len(msgs))
        assert len(stored) == len(msgs), (box, len(stored))
        for got, want in zip(stored, msgs):
            assert_mailbox_stored(got, want)


# ---- the certificate the client sees -------------------------------------------------------

@pytest.mark.parametrize("way", WAYS, ids=WAY_IDS)
def test_certificate_matches_sni(sallyport, tmp_path, ca, way):
    """Terminate: sallyport's certificate for that SNI (picked by SAN, exact or
    wildcard). Passthrough: the backend's own certificate, untouched."""
    sp, port, md = two_route_gateway(sallyport, tmp_path, ca, way)
    cases = [(R1, {R1}, "box1"), (R2, {R2, "*.route2.test"}, "box2"),
             (R2_WILD, {R2, "*.route2.test"}, "box2")]
    for sni, sans, box in cases:
        with smtplib_session(way.tls, port, sni, ca.cert) as s:
            names = san_names(s.sock.getpeercert())
        if way.passthrough:
            assert names == sans | {f"{box}.backend.test"}, (sni, names)
        else:
            assert names == sans, (sni, names)


# ---- the per-connection log line -------------------------------------------------------------

@pytest.mark.parametrize("way", WAYS, ids=WAY_IDS)
def test_session_log_line(sallyport, tmp_path, ca, way):
    sp, port, md = two_route_gateway(sallyport, tmp_path, ca, way)
    mark = marker()
    msg = make_message(mark, standard_body(mark), RCPT)
    with smtplib_session(way.tls, port, R2_WILD, ca.cert) as s:
        client_port = s.sock.getsockname()[1]
        version = s.sock.version()
        assert not s.sendmail(SENDER, [RCPT], msg)
    wait_maildir(md["box2"])
    line = wait_session_line(sp, f"client=127.0.0.1:{client_port} ")
    f = log_fields(line)
    for key in ("listener", "client", "sni", "route", "backend", "mode", "tls", "bytes_in",
                "bytes_out", "duration", "close"):
        assert key in f, (key, line)
    assert f["listener"] == way.service, line
    assert f["client"] == f"127.0.0.1:{client_port}", line
    assert f["sni"] == R2_WILD, line
    assert f["route"] == "r2", line
    assert f["backend"] == "box2", line
    assert f["mode"] == way.mode, line
    if way.passthrough:
        assert not f["tls"].startswith("TLSv"), line   # sallyport never saw the version
    else:
        assert f["tls"] == version, line
    assert int(f["bytes_in"]) >= len(msg), line
    assert int(f["bytes_out"]) > 0, line
    assert re.fullmatch(r"\d+(\.\d+)?s", f["duration"]), line
    assert f["close"], line
    # One line per connection.
    assert [l for l in session_lines(sp.log()) if f"client=127.0.0.1:{client_port} " in l] \
        == [line], line


@pytest.mark.parametrize("way", WAYS, ids=WAY_IDS)
def test_routing_with_auth(sallyport, tmp_path, ca, way):
    """AUTH goes through to the routed backend."""
    sp, port, md = two_route_gateway(sallyport, tmp_path, ca, way, users=users_file(tmp_path))
    mark = marker()
    msg = make_message(mark, standard_body(mark), RCPT)
    send("smtplib", way, port, R2, ca.cert, [RCPT], msg, auth=(USER, PASSWORD))
    (stored,) = wait_maildir(md["box2"])
    assert_mailbox_stored(stored, msg)
    assert maildir_messages(md["box1"]) == []
