"""Self-test of the private Postfix backend (postfix.py): every port delivers into
the right Maildir with the exact body, TLS is what each port promises, and
stopping leaves nothing behind."""
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from postfix import (_group_members, body_of, crlf_to_lf, header_values,  # noqa: F401
                     postfix, postfix_factory)

# CRLF on the wire, a dot-stuffed line, an empty line, 8-bit text, a long line.
BODY = (b"first line\r\n.leading dot\r\n..two dots\r\n\r\n"
        b"caf\xc3\xa9 \xe2\x9c\x93\r\n" + b"x" * 1500 + b"\r\nlast line\r\n")


def message(sender, rcpt, subject):
    return (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@sallyport.test>\r\n\r\n").encode() + BODY


def assert_delivered(pf, rcpt, subject, other_domain):
    (msg,) = pf.wait_for_message(rcpt)
    assert body_of(msg) == crlf_to_lf(BODY)
    assert b"\r" not in msg
    assert header_values(msg, "Subject") == [subject]
    assert header_values(msg, "Delivered-To") == [rcpt]
    # landed in its own domain's Maildir, not in the other one
    assert pf.maildir(rcpt).name == rcpt.rpartition("@")[2]
    assert not any(subject.encode() in m for m in pf.messages("@" + other_domain))
    return msg


def test_starttls_port_verifies_and_delivers(postfix):
    rcpt = postfix.new_address("route1.test")
    with smtplib.SMTP(postfix.host, postfix.starttls_port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls")
        assert s.has_extn("size") and int(s.esmtp_features["size"]) >= 25 * 1024 * 1024
        s.starttls(context=postfix.client_context())   # CA-verified, hostname 127.0.0.1
        assert s.sock.version() in ("TLSv1.2", "TLSv1.3")
        s.ehlo("client.test")
        assert not s.has_extn("starttls")
        s.sendmail("sender@route2.test", [rcpt], message("sender@route2.test", rcpt, "starttls"))
    msg = assert_delivered(postfix, rcpt, "starttls", "route2.test")
    assert b"with ESMTPS" in msg


def test_implicit_port_verifies_and_delivers(postfix):
    rcpt = postfix.new_address("route2.test")
    ctx = postfix.client_context()
    with smtplib.SMTP_SSL(postfix.host, postfix.implicit_port, context=ctx, timeout=10) as s:
        cert = s.sock.getpeercert()
        assert ("DNS", "postfix.test") in cert["subjectAltName"]
        s.ehlo("client.test")
        assert not s.has_extn("starttls")
        s.sendmail("sender@route1.test", [rcpt], message("sender@route1.test", rcpt, "implicit"))
    msg = assert_delivered(postfix, rcpt, "implicit", "route1.test")
    assert b"with ESMTPS" in msg


def test_plain_port_offers_no_tls_and_delivers(postfix):
    rcpt1 = postfix.new_address("route1.test")
    rcpt2 = postfix.new_address("route2.test")
    with smtplib.SMTP(postfix.host, postfix.plain_port, timeout=10) as s:
        s.ehlo("client.test")
        assert not s.has_extn("starttls")
        s.sendmail("sender@client.test", [rcpt1], message("sender@client.test", rcpt1, "plain1"))
        s.sendmail("sender@client.test", [rcpt2], message("sender@client.test", rcpt2, "plain2"))
    msg = assert_delivered(postfix, rcpt1, "plain1", "route2.test")
    assert b"with ESMTP id" in msg          # not ESMTPS
    assert_delivered(postfix, rcpt2, "plain2", "route1.test")


def test_other_domains_are_refused(postfix):
    """default_transport = error: smtpd refuses other domains, nothing leaves."""
    sender = postfix.new_address("route1.test")
    with smtplib.SMTP(postfix.host, postfix.plain_port, timeout=10) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            s.sendmail(sender, ["nobody@example.com"], message(sender, "nobody@example.com", "x"))
    code, text = e.value.recipients["nobody@example.com"]
    assert code == 550 and b"outbound mail is disabled in tests" in text


def test_postfix_check_is_clean(postfix):
    out = postfix.check()
    assert out == "", out
    assert "postfix-script" not in postfix.log(), postfix.log()


def test_stop_leaves_nothing_and_is_idempotent(postfix_factory):
    pf = postfix_factory(["stop.test"], hostname="mx.stop.test")
    ports = (pf.plain_port, pf.starttls_port, pf.implicit_port)
    pgid = pf.master_pid
    rcpt = pf.new_address()
    with smtplib.SMTP(pf.host, pf.plain_port, timeout=10) as s:
        s.sendmail("a@client.test", [rcpt], message("a@client.test", rcpt, "stop"))
    assert pf.maildir(rcpt) == pf.mail_dir / "stop.test"
    pf.wait_for_message(rcpt)
    assert len(_group_members(pgid)) >= 3      # master, smtpd, qmgr, ...
    pf.stop()
    assert _group_members(pgid) == []
    assert not pf.running()
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((pf.host, port), timeout=2).close()
    pf.stop()
    # a restart gets fresh ports and keeps the delivered mail
    pf.start()
    with smtplib.SMTP_SSL(pf.host, pf.implicit_port, timeout=10,
                          context=pf.client_context()) as s:
        assert s.noop()[0] == 250
    assert len(pf.messages(rcpt)) == 1
    pf.stop()


def test_postfix_dies_with_the_test_process(ca, tmp_path):
    """Even a SIGKILLed test process leaves no Postfix behind (the reaper's PDEATHSIG)."""
    cert, key = ca.issue("postfix.test", ["postfix.test", "127.0.0.1"])
    script = (f"import sys, time; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              f"from postfix import Postfix\n"
              f"pf = Postfix({str(tmp_path / 'pf')!r}, {str(cert)!r}, {str(key)!r})\n"
              f"print(pf.master_pid, flush=True)\n"
              f"time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        master_pid = int(child.stdout.readline())
        assert _group_members(master_pid)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    deadline = time.monotonic() + 10
    while _group_members(master_pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _group_members(master_pid) == []
    # the one thing a killed run leaves: the instance directory in /tmp
    orphan = (tmp_path / "pf").resolve()
    assert orphan.name.startswith("sallyport-postfix-")
    shutil.rmtree(orphan)


def test_unverified_client_sees_ca_issued_cert(postfix):
    """A client that trusts nothing fails verification: the cert comes from the test CA."""
    with pytest.raises(ssl.SSLCertVerificationError):
        smtplib.SMTP_SSL(postfix.host, postfix.implicit_port, timeout=10,
                         context=ssl.create_default_context())
