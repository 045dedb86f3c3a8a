"""ACME (RFC 8555): `acme = yes` certificates, issued for real by Debian's
pebble (pebble.py), challenges answered with tls-alpn-01 on the daemon's
implicit-TLS listener.

Every test starts its own pebble and its own sallyport: a submissions
listener (implicit TLS, where pebble's tls-alpn-01 validations go), a
submission listener (STARTTLS), an embedded mailbox behind `route sni = *`,
and /metrics. What is checked is what users see: the certificate on the
wire (verified against pebble's root, or recognised as the temporary
self-signed one), mail landing in the Maildir, the files in the state
directory, log lines, metrics and exit codes."""
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import uuid

import pytest

from conftest import free_port, run_check, wait_for
from pebble import pebble_factory  # noqa: F401 (fixture)
from smtp_helpers import LoopbackSMTP, LoopbackSMTP_SSL, maildir_messages, wait_maildir
from test_metrics import parse, scrape

MAIL, IMAP = "mail.example.test", "imap.example.test"
BAD = "bad.example.test"
TIMEOUT = 20
ISSUE_TIMEOUT = 60       # generous bound on one issuance (retries included)
# X509_V_FLAG_NO_CHECK_TIME: verify the chain whatever the clock says, so a
# check of a short-lived certificate does not depend on how fast it runs.
NO_CHECK_TIME = 0x200000


# ---- certificates on the wire --------------------------------------------------

def verifying_context(root, check_time=True):
    ctx = ssl.create_default_context(cafile=str(root))
    if not check_time:
        ctx.verify_flags = ctx.verify_flags | NO_CHECK_TIME
    return ctx


def unverified_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def served(port, sni, ctx=None):
    """The DER leaf the implicit-TLS listener on `port` serves for `sni`, after
    the handshake (verified when ctx verifies) and the backend's 220."""
    ctx = ctx or unverified_context()
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT),
                         server_hostname=sni) as s:
        banner = s.recv(4096)
        assert banner.startswith(b"220"), banner
        return s.getpeercert(binary_form=True)


class Cert:
    """What openssl(1) says about a DER certificate."""

    def __init__(self, der):
        out = subprocess.run(
            ["openssl", "x509", "-inform", "DER", "-noout", "-serial", "-subject", "-issuer",
             "-enddate", "-ext", "subjectAltName"],
            input=der, capture_output=True, check=True).stdout.decode()
        self.text = out
        self.serial = re.search(r"^serial=(\S+)", out, re.M).group(1)
        self.subject = re.search(r"^subject=(.*)$", out, re.M).group(1).strip()
        self.issuer = re.search(r"^issuer=(.*)$", out, re.M).group(1).strip()
        self.not_after = int(ssl.cert_time_to_seconds(
            re.search(r"^notAfter=(.*)$", out, re.M).group(1).strip()))
        self.names = sorted(re.findall(r"DNS:([^,\s]+)", out))

    @property
    def self_signed(self):
        return self.subject == self.issuer

    def __repr__(self):
        return f"<Cert {self.text!r}>"


def pem_certs(path):
    """The DER certificates of a PEM file, in order."""
    text = path.read_text()
    return [ssl.PEM_cert_to_DER_cert(m) for m in re.findall(
        r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)]


# ---- the gateway -----------------------------------------------------------------

class Site:
    """Ports, directories and the config of one ACME-using sallyport."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.ports = {n: free_port() for n in ("smtps", "smtp", "box", "metrics", "http")}
        self.state = tmp_path / "acme"
        self.maildir = tmp_path / "Maildir"

    def pebble(self, pebble_factory, validity=None):
        """A pebble whose tls-alpn-01 validations come to the submissions listener."""
        self.pb = pebble_factory(http_port=self.ports["http"], tls_port=self.ports["smtps"],
                                 validity=validity)
        return self.pb

    def config(self, certificates=None, retry_interval=1):
        p = self.ports
        certificates = certificates or {"mail": [MAIL, IMAP]}
        text = ("[global]\nlog_level = info\n\n"
                f"[metrics]\naddress = 127.0.0.1:{p['metrics']}\n\n"
                f"[acme]\ndirectory = {self.pb.directory_url}\nca = {self.pb.ca_file}\n"
                f"state_dir = {self.state}\ncontact = admin@example.com\n"
                f"retry_interval = {retry_interval}\n\n")
        for i, (name, names) in enumerate(certificates.items()):
            text += f"[certificate {name}]\nacme = yes\nnames = {' '.join(names)}\n"
            if i == 0:
                text += "default = yes\n"
            text += "\n"
        text += (f"[listener smtps]\nservice = submissions\naddress = 127.0.0.1:{p['smtps']}\n"
                 "hostname = gw.test\n\n"
                 f"[listener smtp]\nservice = submission\naddress = 127.0.0.1:{p['smtp']}\n"
                 "hostname = gw.test\n\n"
                 f"[mailbox box]\naddress = 127.0.0.1:{p['box']}\nmaildir = {self.maildir}\n\n"
                 "[route main]\nsni = *\nbackend = box\n")
        return text

    def served(self, sni=MAIL, ctx=None):
        return Cert(served(self.ports["smtps"], sni, ctx))

    def metrics(self):
        return parse(scrape(self.ports["metrics"]))

    def send_implicit(self, sni, ctx):
        mark = uuid.uuid4().hex
        with LoopbackSMTP_SSL(sni, self.ports["smtps"], context=ctx, timeout=TIMEOUT) as s:
            s.sendmail("a@client.test", ["b@example.test"], f"Subject: {mark}\r\n\r\n{mark}\r\n")
        return mark

    def send_starttls(self, sni, ctx):
        mark = uuid.uuid4().hex
        with LoopbackSMTP(sni, self.ports["smtp"], timeout=TIMEOUT) as s:
            s.starttls(context=ctx)
            s.sendmail("a@client.test", ["b@example.test"], f"Subject: {mark}\r\n\r\n{mark}\r\n")
        return mark

    def landed(self, mark):
        wait_for(lambda: any(mark.encode() in m for m in maildir_messages(self.maildir)),
                 TIMEOUT, what=f"message {mark} in {self.maildir}/new")


def acme_lines(sp, what, name="mail"):
    """The log lines `acme: certificate NAME: ...` that contain `what`."""
    return [l for l in sp.log().splitlines() if f"acme: certificate {name}: " in l and what in l]


def wait_acme(sp, what, count=1, name="mail", timeout=ISSUE_TIMEOUT):
    wait_for(lambda: len(acme_lines(sp, what, name)) >= count, timeout,
             what=f"{count} 'acme: certificate {name}: ...{what}' line(s) in {sp.log_path}")
    return acme_lines(sp, what, name)


def wait_refreshed(sp, count=1):
    wait_for(lambda: sp.log().count("acme: certificates refreshed: generation ") >= count,
             ISSUE_TIMEOUT, what=f"{count} 'acme: certificates refreshed' line(s)")


def wait_installed(sp, count=1, name="mail"):
    """Waits for the count-th installation and the generation that serves it."""
    wait_acme(sp, "installed, valid until ", count, name)
    wait_refreshed(sp, count)


def wait_served(site, predicate, sni=MAIL, what="certificate"):
    """The first certificate the listener serves for which predicate holds."""
    def check():
        c = site.served(sni)
        return c if predicate(c) else None
    return wait_for(check, ISSUE_TIMEOUT, what=what)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def orders(m, certificate, result):
    """sallyport_acme_orders_total of one certificate and result, from a scrape."""
    return m[("sallyport_acme_orders_total",
              frozenset({("certificate", certificate), ("result", result)}))]


def assert_temporary(cert, names):
    assert cert.self_signed, cert
    assert cert.names == sorted(names), cert


# ---- tests -------------------------------------------------------------------------

def test_first_issuance_two_names(sallyport, pebble_factory, tmp_path):
    site = Site(tmp_path)
    pb = site.pebble(pebble_factory)
    sp = sallyport(site.config())
    line = wait_acme(sp, "ordering ")[0]
    assert f"ordering {MAIL} and more from {pb.directory_url}" in line, line
    wait_installed(sp)
    assert "acme: made a new account key " in sp.log()

    root = pb.root_file()
    ctx = verifying_context(root)
    leaf = None
    for sni in (MAIL, IMAP):
        c = site.served(sni, ctx)                # verifies: leaf + intermediate sent
        assert not c.self_signed and c.names == sorted([MAIL, IMAP]), c
        assert leaf is None or c.serial == leaf.serial
        leaf = c
    # pebble knows it as one of its own
    assert pb.cert_status(leaf.serial)["Status"] == "Valid"

    # SMTP through to the mailbox, over implicit TLS for both names and STARTTLS
    marks = [site.send_implicit(MAIL, ctx), site.send_implicit(IMAP, ctx),
             site.send_starttls(MAIL, ctx), site.send_starttls(IMAP, ctx)]
    for mark in marks:
        site.landed(mark)
    assert len(wait_maildir(site.maildir, 4)) == 4

    # STARTTLS trusting nothing but the system store does not verify pebble's chain
    with LoopbackSMTP(MAIL, site.ports["smtp"], timeout=TIMEOUT) as s:
        with pytest.raises(ssl.SSLCertVerificationError):
            s.starttls(context=ssl.create_default_context())

    # the state directory: 0700, the chain + key and the account key 0600
    assert mode(site.state) == 0o700
    pem = site.state / "mail.pem"
    assert mode(pem) == 0o600 and mode(site.state / "account.key") == 0o600
    chain = pem_certs(pem)
    assert len(chain) >= 2 and Cert(chain[0]).serial == leaf.serial
    assert "PRIVATE KEY-----" in pem.read_text()

    m = site.metrics()
    assert orders(m, "mail", "done") == 1
    assert m[("sallyport_certificate_expiry_seconds",
              frozenset({("certificate", "mail")}))] == leaf.not_after
    challenges = sum(v for (n, ls), v in m.items()
                     if n == "sallyport_connections_total" and ("outcome", "acme_challenge") in ls)
    assert challenges >= 2, m     # one validation per name at least


def test_ca_down_at_start_serves_temporary_certificate(sallyport, pebble_factory, tmp_path):
    site = Site(tmp_path)
    pb = site.pebble(pebble_factory)
    pb.stop()
    sp = sallyport(site.config())
    # the CA is down: the temporary self-signed certificate for the names is served
    for sni in (MAIL, IMAP):
        assert_temporary(site.served(sni), [MAIL, IMAP])
    wait_acme(sp, "retrying in ")
    line = acme_lines(sp, "retrying in ")[0]
    assert "(failure 1 in a row)" in line, line
    assert sp.proc.poll() is None
    assert_temporary(site.served(), [MAIL, IMAP])
    # mail is relayed meanwhile, over the temporary certificate
    site.landed(site.send_implicit(MAIL, unverified_context()))

    pb.start()                                  # a new pebble: a new root
    wait_installed(sp)
    ctx = verifying_context(pb.root_file())
    c = site.served(MAIL, ctx)
    assert not c.self_signed and c.names == sorted([MAIL, IMAP]), c
    site.landed(site.send_implicit(IMAP, ctx))
    site.landed(site.send_starttls(MAIL, ctx))
    m = site.metrics()
    assert orders(m, "mail", "failed") >= 1
    assert orders(m, "mail", "done") == 1


def test_renewal_keeps_open_session(sallyport, pebble_factory, tmp_path):
    site = Site(tmp_path)
    pb = site.pebble(pebble_factory, validity=20)
    sp = sallyport(site.config())
    wait_installed(sp)
    ctx = verifying_context(pb.root_file(), check_time=False)
    first = site.served(MAIL, ctx)

    # a session on the first certificate, EHLO'd
    s = LoopbackSMTP_SSL(MAIL, site.ports["smtps"], context=ctx, timeout=TIMEOUT)
    try:
        assert Cert(s.sock.getpeercert(binary_form=True)).serial == first.serial
        assert s.ehlo()[0] == 250

        # renewal (due two thirds into the 20 s): a second certificate
        wait_installed(sp, 2)
        second = wait_served(site, lambda c: c.serial != first.serial,
                             what="a renewed certificate served")
        c = site.served(IMAP, verifying_context(pb.root_file()))
        assert c.serial != first.serial and not c.self_signed, c
        assert second.names == sorted([MAIL, IMAP])
        site.landed(site.send_starttls(IMAP, verifying_context(pb.root_file())))

        # the old session keeps going on the old generation
        assert s.noop()[0] == 250
        mark = uuid.uuid4().hex
        s.sendmail("a@client.test", ["b@example.test"], f"Subject: {mark}\r\n\r\n{mark}\r\n")
        site.landed(mark)
        s.quit()
    finally:
        s.close()
    assert sp.proc.poll() is None


def test_ca_down_during_renewal_keeps_serving(sallyport, pebble_factory, tmp_path):
    site = Site(tmp_path)
    pb = site.pebble(pebble_factory, validity=20)
    sp = sallyport(site.config())
    wait_installed(sp)
    ctx = verifying_context(pb.root_file(), check_time=False)
    first = site.served(MAIL, ctx)
    pb.stop()

    # the renewal fails and is retried
    line = wait_acme(sp, "retrying in ")[0]
    assert "(failure 1 in a row)" in line, line
    wait_acme(sp, "(failure 2 in a row)")
    assert len(acme_lines(sp, "installed, valid until ")) == 1
    assert sp.proc.poll() is None
    # still the first certificate, and mail still goes through
    for sni in (MAIL, IMAP):
        assert site.served(sni, ctx).serial == first.serial
    site.landed(site.send_implicit(MAIL, ctx))
    site.landed(site.send_starttls(IMAP, ctx))
    m = site.metrics()
    assert orders(m, "mail", "failed") >= 2
    assert m[("sallyport_certificate_expiry_seconds",
              frozenset({("certificate", "mail")}))] == first.not_after


def test_failed_challenge_is_retried_and_others_issued(sallyport, pebble_factory, tmp_path):
    site = Site(tmp_path)
    pb = site.pebble(pebble_factory)
    # the CA looks for bad.example.test at 127.0.0.2, where nothing listens
    pb.dns_post("/add-a", {"host": BAD + ".", "addresses": ["127.0.0.2"]})
    assert pb.resolve(BAD) == ["127.0.0.2"]
    sp = sallyport(site.config({"mail": [MAIL, IMAP], "bad": [BAD]}))

    lines = wait_acme(sp, "retrying in ", name="bad")
    assert f"{BAD}: tls-alpn-01 failed" in lines[0], lines[0]
    assert "(failure 1 in a row)" in lines[0], lines[0]
    wait_acme(sp, "(failure 2 in a row)", name="bad")
    wait_installed(sp)
    assert sp.proc.poll() is None
    assert not acme_lines(sp, "installed", name="bad")

    ctx = verifying_context(pb.root_file())
    c = site.served(MAIL, ctx)
    assert c.names == sorted([MAIL, IMAP]), c
    site.landed(site.send_implicit(IMAP, ctx))
    # the bad name is still on its temporary certificate
    assert_temporary(site.served(BAD), [BAD])
    assert not (site.state / "bad.pem").exists()
    m = site.metrics()
    assert orders(m, "bad", "failed") >= 2
    assert orders(m, "mail", "done") == 1


def test_corrupt_state_is_kept_aside(sallyport, pebble_factory, tmp_path):
    site = Site(tmp_path)
    pb = site.pebble(pebble_factory)
    pb.stop()          # the CA is down at first: the temporary certificate stays up
    site.state.mkdir(mode=0o700)
    (site.state / "mail.pem").write_text("garbage, not a certificate\n")
    (site.state / "account.key").write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n")
    os.chmod(site.state / "mail.pem", 0o600)
    os.chmod(site.state / "account.key", 0o600)
    sp = sallyport(site.config())

    assert_temporary(site.served(), [MAIL, IMAP])
    line = wait_acme(sp, " is not a certificate with its key; kept as ")[0]
    aside = list(site.state.glob("mail.pem.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_text() == "garbage, not a certificate\n", aside
    assert f"{site.state / 'mail.pem'} is not a certificate with its key; kept as {aside[0]}, " \
           "getting a new one" in line, line
    wait_acme(sp, "retrying in ")
    assert_temporary(site.served(IMAP), [MAIL, IMAP])

    pb.start()
    wait_installed(sp)
    key_aside = list(site.state.glob("account.key.corrupt-*"))
    assert len(key_aside) == 1, key_aside
    assert key_aside[0].read_text() == "-----BEGIN PRIVATE KEY-----\ngarbage\n"
    assert f"; kept as {key_aside[0]}, making a new account key" in sp.log()
    assert mode(site.state / "account.key") == 0o600
    assert "PRIVATE KEY-----" in (site.state / "account.key").read_text()
    ctx = verifying_context(pb.root_file())
    c = site.served(MAIL, ctx)
    assert c.names == sorted([MAIL, IMAP]) and not c.self_signed, c
    assert Cert(pem_certs(site.state / "mail.pem")[0]).serial == c.serial
    site.landed(site.send_implicit(MAIL, ctx))


def test_restart_reuses_state(sallyport, pebble_factory, tmp_path):
    site = Site(tmp_path)
    pb = site.pebble(pebble_factory)
    config = site.config()
    sp = sallyport(config)
    wait_installed(sp)
    root = pb.root_file()
    ctx = verifying_context(root)
    first = site.served(MAIL, ctx)
    assert sp.stop() == 0
    pb.stop()

    sp2 = sallyport(config, name="again")
    # served from the state directory at once (the CA is down: nothing to order)
    assert site.served(MAIL, ctx).serial == first.serial
    assert site.served(IMAP, ctx).serial == first.serial
    # the ACME thread has read the file (the expiry gauge comes from it) ...
    wait_for(lambda: site.metrics().get(("sallyport_certificate_expiry_seconds",
                                         frozenset({("certificate", "mail")}))) ==
             first.not_after, TIMEOUT, what="expiry gauge from the state file")
    site.landed(site.send_implicit(MAIL, ctx))
    site.landed(site.send_starttls(IMAP, ctx))
    # ... and orders nothing: renewal is years away
    log = sp2.log()
    assert "ordering" not in log and "retrying in" not in log, log
    assert "made a new account key" not in log
    assert sp2.proc.poll() is None



def test_restart_with_other_names_orders_again(sallyport, pebble_factory, tmp_path):
    site = Site(tmp_path)
    pb = site.pebble(pebble_factory)
    sp = sallyport(site.config())
    wait_installed(sp)
    first = site.served(MAIL, verifying_context(pb.root_file()))
    assert sp.stop() == 0
    pb.stop()

    # the state file names mail and imap; the config now names mail alone:
    # it is ordered again, and the last good certificate serves meanwhile
    sp2 = sallyport(site.config({"mail": [MAIL]}), name="fewer")
    assert site.served(MAIL).serial == first.serial
    line = wait_acme(sp2, " is for other names; ")[0]
    assert f"{site.state / 'mail.pem'} is for other names; getting one for the names " \
           "configured" in line, line
    wait_acme(sp2, "retrying in ")
    pb.start()
    wait_installed(sp2)
    c = site.served(MAIL, verifying_context(pb.root_file()))
    assert c.names == [MAIL] and c.serial != first.serial, c
    assert Cert(pem_certs(site.state / "mail.pem")[0]).names == [MAIL]


def test_reload_keeps_issued_certificate(sallyport, pebble_factory, tmp_path):
    site = Site(tmp_path)
    pb = site.pebble(pebble_factory)
    sp = sallyport(site.config())
    wait_installed(sp)
    ctx = verifying_context(pb.root_file())
    first = site.served(MAIL, ctx)
    generation = int(re.findall(r"acme: certificates refreshed: generation (\d+) ", sp.log())[-1])

    sp.proc.send_signal(signal.SIGHUP)
    sp.wait_log(f"reloaded: generation {generation + 1} ")
    # the new generation loads the certificate from the state directory
    for sni in (MAIL, IMAP):
        c = site.served(sni, ctx)
        assert c.serial == first.serial and not c.self_signed, c
    site.landed(site.send_implicit(IMAP, ctx))
    log = sp.log()
    assert len(acme_lines(sp, "ordering ")) == 1, log
    assert "retrying in" not in log, log


# ---- -t: configuration errors ------------------------------------------------------

BASE = ("[listener s]\nservice = submissions\naddress = 127.0.0.1:{port}\n"
        "hostname = gw.test\n\n"
        "[mailbox box]\naddress = 127.0.0.1:{box}\nmaildir = {dir}/Maildir\n\n"
        "[route r]\nsni = *\nbackend = box\n\n")   # 13 lines


def check(tmp_path, text):
    base = BASE.format(port=free_port(), box=free_port(), dir=tmp_path)
    assert base.count("\n") == 13
    return run_check(base + text, tmp_path)


def test_config_ok(tmp_path):
    code, out = check(tmp_path, f"[acme]\nstate_dir = {tmp_path}/st\ndirectory = "
                                "https://127.0.0.1:1/dir\ncontact = a@b.test\nretry_interval = 5\n"
                                "[certificate mail]\nacme = yes\nnames = a.test b.test\n")
    assert (code, out.strip()) == (0, f"{tmp_path / 'check.conf'}: configuration ok"), out


@pytest.mark.parametrize("text, line, key, message", [
    ("[certificate mail]\nacme = yes\nnames = a.test\ncert = {cert}\n",
     17, "cert", "certificate 'mail' has acme = yes"),
    ("[certificate mail]\nacme = yes\nnames = a.test\nkey = {cert}\n",
     17, "key", "certificate 'mail' has acme = yes"),
    ("[certificate mail]\nacme = yes\n",
     14, "certificate mail", "acme = yes needs the names"),
    ("[certificate mail]\nacme = yes\nnames = a.test *.example.test\n",
     16, "names", "'*.example.test': an ACME certificate lists host names only"),
    ("[acme]\ndirectory = ftp://ca.test/dir\n" "[certificate mail]\nacme = yes\nnames = a.test\n",
     15, "directory", "'ftp://ca.test/dir' is not an https:// URL"),
    ("[acme]\ndirectory = acme-v02.api.letsencrypt.org/directory\n"
     "[certificate mail]\nacme = yes\nnames = a.test\n",
     15, "directory", "is not an https:// URL"),
    ("[acme]\ncontact = admin.example.com\n[certificate mail]\nacme = yes\nnames = a.test\n",
     15, "contact", "'admin.example.com' is not an e-mail address"),
    ("[acme]\nstate_dir = var/acme\n[certificate mail]\nacme = yes\nnames = a.test\n",
     15, "state_dir", "'var/acme' is not an absolute path"),
    ("[acme]\nretry_interval = 0\n[certificate mail]\nacme = yes\nnames = a.test\n",
     15, "retry_interval", "0 would retry a failing CA without a pause"),
], ids=["cert", "key", "no-names", "wildcard", "ftp-directory", "schemeless-directory",
        "contact", "relative-state-dir", "retry-zero"])
def test_config_errors(tmp_path, ca, text, line, key, message):
    code, out = check(tmp_path, text.format(cert=ca.cert))
    assert code == 1, out
    want = f"{tmp_path / 'check.conf'}:{line}: {key}: "
    hits = [l for l in out.splitlines() if l.startswith(want) and message in l]
    assert hits, f"no line {want}...{message}... in:\n{out}"
    assert "configuration ok" not in out
