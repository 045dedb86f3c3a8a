"""Self-test of the private Dovecot backend (dovecot.py) and of the ManageSieve
client (sieve_client.py), against Dovecot directly (no sallyport): every port
serves the mail byte for byte, TLS is what each port promises, cleartext
authentication works only where it should, and stopping leaves nothing behind."""
import imaplib
import os
import poplib
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import wait_for
from dovecot import _group_members, dovecot, dovecot_factory, dovecot_module_factory  # noqa: F401
from sieve_client import SieveClient, SieveError

# CRLF line endings (what Dovecot serves), a line starting with a dot, 8-bit text.
BODY = (b"first line\r\n.leading dot\r\n..two dots\r\n\r\n"
        b"caf\xc3\xa9 \xe2\x9c\x93\r\n" + b"x" * 998 + b"\r\nlast line\r\n")
SCRIPT = 'require ["fileinto"];\r\nif header :contains "subject" "x" {\r\n  fileinto "INBOX";\r\n}\r\n'


def new_message(subject):
    mid = f"<{subject}.{secrets.token_hex(4)}@sallyport.test>"
    return mid, (f"From: <a@route2.test>\r\nTo: <alice@route1.test>\r\nSubject: {subject}\r\n"
                 f"Message-ID: {mid}\r\n\r\n").encode() + BODY


def imap_fetch(m, mid):
    typ, data = m.select("INBOX")
    assert typ == "OK", data
    typ, data = m.search(None, "HEADER", "Message-ID", mid)
    assert typ == "OK" and len(data[0].split()) == 1, data
    typ, data = m.fetch(data[0], "(BODY.PEEK[])")
    assert typ == "OK", data
    return data[0][1]


def pop3_messages(p):
    count, _ = p.stat()
    return [b"\r\n".join(p.retr(i)[1]) + b"\r\n" for i in range(1, count + 1)]


def peer_names(sock):
    return [v for k, v in sock.getpeercert()["subjectAltName"] if k == "DNS"]


# -- IMAP -----------------------------------------------------------------------------

def test_imaps_serves_delivered_message_byte_for_byte(dovecot):
    mid, msg = new_message("imaps")
    dovecot.deliver("alice", msg)
    with imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port,
                           ssl_context=dovecot.client_context(), timeout=10) as m:
        assert "imap.route1.test" in peer_names(m.sock)
        assert m.sock.version() in ("TLSv1.2", "TLSv1.3")
        m.login("alice", "secret")
        assert imap_fetch(m, mid) == msg
        m.logout()
    assert any("user=<alice>" in line and ", TLS," in line for line in dovecot.logins())


def test_imap_starttls_port_needs_tls_for_login(dovecot):
    mid, msg = new_message("starttls")
    dovecot.deliver("alice", msg)
    with imaplib.IMAP4(dovecot.host, dovecot.imap_port, timeout=10) as m:
        assert "STARTTLS" in m.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            m.login("alice", "secret")              # cleartext: refused
        m.starttls(dovecot.client_context())
        m.login("alice", "secret")
        assert imap_fetch(m, mid) == msg
        m.logout()
    # Dovecot's log process writes asynchronously: wait for the line.
    wait_for(lambda: "User found from deny passdb" in dovecot.log(), timeout=10,
             what="Dovecot logging the deny passdb")


def test_imap_plain_port_allows_cleartext_login(dovecot):
    mid, msg = new_message("plain")
    dovecot.deliver("alice", msg)
    with imaplib.IMAP4(dovecot.host, dovecot.imap_plain_port, timeout=10) as m:
        m.login("alice", "secret")
        assert imap_fetch(m, mid) == msg
        with pytest.raises(imaplib.IMAP4.error):
            imaplib.IMAP4(dovecot.host, dovecot.imap_plain_port, timeout=10).login(
                "alice", "wrong")
        m.logout()
    assert any("user=<alice>" in line and ", secured," in line for line in dovecot.logins())


# -- POP3 -----------------------------------------------------------------------------

def test_pop3_ports(dovecot_factory):
    dv = dovecot_factory("pop.route1.test", users={"carol": "carol"})
    msgs = []
    for i in range(2):
        msgs.append(new_message(f"pop{i}")[1])
        dv.deliver("carol", msgs[-1])
        time.sleep(0.002)
    p = poplib.POP3_SSL(dv.host, dv.pop3s_port, context=dv.client_context(), timeout=10)
    try:
        assert "pop.route1.test" in peer_names(p.sock)
        p.user("carol")
        p.pass_("carol")
        assert pop3_messages(p) == msgs
        p.quit()
    finally:
        p.close()
    p = poplib.POP3(dv.host, dv.pop3_port, timeout=10)
    try:
        assert "STLS" in p.capa()
        p.user("carol")
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            p.pass_("carol")                        # cleartext: refused
        p.stls(dv.client_context())
        p.user("carol")
        p.pass_("carol")
        assert pop3_messages(p) == msgs
        p.quit()
    finally:
        p.close()
    p = poplib.POP3(dv.host, dv.pop3_plain_port, timeout=10)
    try:
        p.user("carol")
        p.pass_("carol")
        assert len(pop3_messages(p)) == 2
        p.quit()
    finally:
        p.close()


# -- ManageSieve ----------------------------------------------------------------------

def test_managesieve_starttls_putscript_listscripts(dovecot):
    with SieveClient(socket.create_connection((dovecot.host, dovecot.sieve_port), timeout=10)) as c:
        assert "STARTTLS" in c.caps and c.caps["VERSION"] == "1.0"
        assert dovecot.token in c.greeting.text
        with pytest.raises(SieveError) as e:
            c.authenticate("alice", "secret")       # cleartext: refused
        assert e.value.status == "NO"
        caps = c.starttls(dovecot.client_context(), "imap.route1.test")
        assert "imap.route1.test" in peer_names(c.sock)
        assert "STARTTLS" not in caps and "PLAIN" in caps["SASL"].split()
        assert "fileinto" in caps["SIEVE"].split()
        c.authenticate("alice", "secret")
        c.putscript("test", SCRIPT)
        c.putscript("other", "keep;\r\n")
        c.setactive("test")
        assert sorted(c.listscripts()) == [("other", False), ("test", True)]
        assert c.getscript("test") == SCRIPT
        c.deletescript("other")
        with pytest.raises(SieveError):
            c.putscript("bad", "this is not sieve;\r\n")
        c.logout()
    assert dovecot.sieve_scripts("alice") == ["test"]
    assert dovecot.sieve_script("alice", "test") == SCRIPT
    assert dovecot.active_sieve_script("alice") == "test"


def test_managesieve_plain_port(dovecot):
    with SieveClient(socket.create_connection((dovecot.host, dovecot.sieve_plain_port),
                                              timeout=10)) as c:
        c.authenticate("alice", "secret")
        c.putscript("plain", "keep;\r\n")
        assert ("plain", False) in c.listscripts()
        c.deletescript("plain")
        c.logout()


# -- file ownership ---------------------------------------------------------------------

def test_root_0600_message_needs_adopt(dovecot):
    """A file written by root with mode 0600 (as sallyport's mailbox does when
    running as root) is listed but unreadable until adopt() chowns it."""
    mid, msg = new_message("root0600")
    md = dovecot.maildir("alice")
    tmp = md / "tmp" / f"{time.time_ns()}.root.test"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, msg)
    os.close(fd)
    os.rename(tmp, md / "new" / tmp.name)
    with imaplib.IMAP4(dovecot.host, dovecot.imap_plain_port, timeout=10) as m:
        m.login("alice", "secret")
        assert m.select("INBOX")[0] == "OK"
        with pytest.raises((AssertionError, imaplib.IMAP4.error, imaplib.IMAP4.abort, OSError)):
            typ, data = m.fetch("*", "(BODY.PEEK[])")   # the newest message
            assert typ == "OK", data
    wait_for(lambda: "missing +r perm" in dovecot.log(), timeout=10,
             what="Dovecot logging the unreadable file")
    assert dovecot.adopt("alice") >= 1
    with imaplib.IMAP4(dovecot.host, dovecot.imap_plain_port, timeout=10) as m:
        m.login("alice", "secret")
        assert imap_fetch(m, mid) == msg
        m.logout()


# -- two instances, life cycle ----------------------------------------------------------

def test_two_instances_with_own_names_and_users(dovecot_module_factory):
    one = dovecot_module_factory("imap.route1.test", users={"alice": "secret"})
    two = dovecot_module_factory("imap.route2.test", users={"bob": "hunter2"},
                                 password_scheme="SHA512-CRYPT", plain_ports=False)
    assert two.imap_plain_port is None
    assert "{SHA512-CRYPT}$6$" in two.passwd_path.read_text()
    for dv, user, password, name in ((one, "alice", "secret", "imap.route1.test"),
                                     (two, "bob", "hunter2", "imap.route2.test")):
        with imaplib.IMAP4_SSL(dv.host, dv.imaps_port, ssl_context=dv.client_context(),
                               timeout=10) as m:
            assert name in peer_names(m.sock)
            m.login(user, password)
            m.logout()
    with imaplib.IMAP4_SSL(two.host, two.imaps_port, ssl_context=two.client_context(),
                           timeout=10) as m:
        with pytest.raises(imaplib.IMAP4.error):
            m.login("alice", "secret")              # not a user of this instance


def test_stop_leaves_nothing_and_is_idempotent(dovecot_factory):
    dv = dovecot_factory("stop.route1.test")
    ports = [getattr(dv, n) for n in ("imap_port", "imaps_port", "pop3_port", "pop3s_port",
                                      "sieve_port", "imap_plain_port")]
    pgid = dv.master_pid
    mid, msg = new_message("stop")
    dv.deliver("alice", msg)
    m = imaplib.IMAP4(dv.host, dv.imap_plain_port, timeout=10)
    m.login("alice", "secret")                      # a mail process to stop too
    assert len(_group_members(pgid)) >= 5
    t = time.monotonic()
    dv.stop()
    assert time.monotonic() - t < 3
    assert _group_members(pgid) == []
    assert not dv.running()
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((dv.host, port), timeout=2).close()
    dv.stop()
    dv.start()                                      # new ports, same mail
    assert dv.master_pid != pgid
    with imaplib.IMAP4_SSL(dv.host, dv.imaps_port, ssl_context=dv.client_context(),
                           timeout=10) as m2:
        m2.login("alice", "secret")
        assert imap_fetch(m2, mid) == msg
        m2.logout()
    dv.stop()


def test_dovecot_dies_with_the_test_process(ca, tmp_path):
    """Even a SIGKILLed test process leaves no Dovecot behind (the reaper's PDEATHSIG)."""
    cert, key = ca.issue("kill.route1.test")
    script = (f"import sys, time; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              f"from dovecot import Dovecot\n"
              f"dv = Dovecot({str(tmp_path / 'dv')!r}, {str(cert)!r}, {str(key)!r})\n"
              f"print(dv.master_pid, flush=True)\n"
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
    orphan = (tmp_path / "dv").resolve()
    assert orphan.name.startswith("sallyport-dovecot-")
    shutil.rmtree(orphan)


def test_unverified_client_sees_ca_issued_cert(dovecot):
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(dovecot.host, dovecot.imaps_port, timeout=10,
                          ssl_context=ssl.create_default_context())
