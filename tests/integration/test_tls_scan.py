"""The TLS floor, checked by a real scanner: testssl.sh (Debian's testssl)
against every TLS listener on loopback, implicit and STARTTLS, terminate and
passthrough (where the embedded mailbox holds the TLS, under the same policy).

testssl.sh speaks SMTP, IMAP and POP3 STARTTLS; it cannot reach TLS on a
ManageSieve port, so that one is checked with openssl s_client, which can.

Asserted from testssl's JSON findings: no SSLv2, SSLv3, TLS 1.0 or 1.1; no
NULL, anonymous, export, LOW, 3DES/IDEA or CBC ciphers; no client-initiated
renegotiation; no TLS compression (CRIME)."""
import json
import subprocess

import pytest

from conftest import free_port

HOSTNAME = "gw.test"
SCAN_TIMEOUT = 240

# listener name -> (service, mode, testssl's -t protocol or None for implicit TLS)
TARGETS = {
    "submissions": ("submissions", "terminate", None),
    "submission": ("submission", "terminate", "smtp"),
    "imaps": ("imaps", "terminate", None),
    "imap": ("imap", "terminate", "imap"),
    "pop3s": ("pop3s", "terminate", None),
    "pop3": ("pop3", "terminate", "pop3"),
    "submissions-passthrough": ("submissions", "passthrough", None),
    "submission-passthrough": ("submission", "passthrough", "smtp"),
}

NOT_OFFERED = ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "cipherlist_NULL", "cipherlist_aNULL",
               "cipherlist_EXPORT", "cipherlist_LOW", "cipherlist_3DES_IDEA",
               "cipherlist_AVERAGE"]


@pytest.fixture(scope="module")
def gateway(ca, tmp_path_factory):
    """One sallyport with every target listener. Terminate listeners lead to a
    backend that is never reached (a scan stops after the handshake);
    passthrough ones to an embedded mailbox holding the certificate."""
    from conftest import Sallyport
    directory = tmp_path_factory.mktemp("scan")
    cert, key = ca.issue("scan-gw", [HOSTNAME])
    ports = {name: free_port() for name in TARGETS}
    box_implicit, box_starttls = free_port(), free_port()
    text = (f"[global]\nlog_level = info\n"
            f"[certificate gw]\ncert = {cert}\nkey = {key}\n")
    for name, (service, mode, _) in TARGETS.items():
        text += (f"[listener {name}]\nservice = {service}\naddress = 127.0.0.1:{ports[name]}\n"
                 f"mode = {mode}\nhostname = {HOSTNAME}\n")
    dead = f"127.0.0.1:{free_port()}"
    text += (f"[backend nowhere]\n"
             f"submissions = 127.0.0.1:{box_implicit} implicit\n"
             f"submission = 127.0.0.1:{box_starttls} starttls\n"
             f"imaps = {dead} implicit\nimap = {dead} starttls\n"
             f"pop3s = {dead} implicit\npop3 = {dead} starttls\n"
             f"ca = {ca.cert}\ntls_name = {HOSTNAME}\n")
    for name, port, tls in (("boximplicit", box_implicit, "implicit"),
                            ("boxstarttls", box_starttls, "starttls")):
        text += (f"[mailbox {name}]\naddress = 127.0.0.1:{port}\nmaildir = {directory / name}\n"
                 f"tls = {tls}\ncert = {cert}\nkey = {key}\nhostname = {HOSTNAME}\n")
    text += "[route r]\nsni = *\nbackend = nowhere\n"
    sp = Sallyport(directory, text)
    yield sp, ports, directory
    sp.stop()


def scan(directory, name, port, starttls):
    out = directory / f"{name}.json"
    argv = ["testssl", "--quiet", "--color", "0", "--warnings", "off", "--nodns", "none",
            "--connect-timeout", "10", "--openssl-timeout", "10", "--fast",
            "-p", "-s", "-R", "-C", "-oj", str(out), "--ip", "127.0.0.1"]
    if starttls:
        argv += ["-t", starttls]
    argv.append(f"{HOSTNAME}:{port}")
    run = subprocess.run(argv, capture_output=True, text=True, timeout=SCAN_TIMEOUT)
    assert out.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    return {f["id"]: f for f in json.loads(out.read_text())}, run.stdout


@pytest.mark.parametrize("name", list(TARGETS))
def test_testssl_finds_nothing_below_the_floor(gateway, name):
    sp, ports, directory = gateway
    _, _, starttls = TARGETS[name]
    findings, report = scan(directory, name, ports[name], starttls)
    for fid in NOT_OFFERED:
        assert fid in findings, (fid, report)
        assert findings[fid]["finding"].startswith("not offered"), (fid, findings[fid], report)
    assert findings["TLS1_2"]["finding"] == "offered", report
    assert findings["TLS1_3"]["finding"].startswith("offered"), report
    assert findings["cipherlist_STRONG"]["finding"] == "offered", report
    assert findings["secure_client_renego"]["finding"] == "not vulnerable", report
    assert findings["CRIME_TLS"]["finding"].startswith("not vulnerable"), report
    assert not [f for f in findings.values() if f["severity"] in ("HIGH", "CRITICAL")], report
    assert sp.proc.poll() is None


@pytest.fixture(scope="module")
def sieve_gateway(ca, tmp_path_factory):
    from conftest import Sallyport
    directory = tmp_path_factory.mktemp("scan-sieve")
    cert, key = ca.issue("scan-gw", [HOSTNAME])
    port = free_port()
    text = (f"[certificate gw]\ncert = {cert}\nkey = {key}\n"
            f"[listener sieve]\naddress = 127.0.0.1:{port}\nhostname = {HOSTNAME}\n"
            f"[backend nowhere]\nsieve = 127.0.0.1:{free_port()} starttls\n"
            f"[route r]\nsni = *\nbackend = nowhere\n")
    sp = Sallyport(directory, text)
    yield port
    sp.stop()


@pytest.mark.parametrize("version,accepted", [("-tls1", False), ("-tls1_1", False),
                                              ("-tls1_2", True), ("-tls1_3", True)])
def test_sieve_tls_versions(sieve_gateway, ca, version, accepted):
    """ManageSieve, which testssl cannot reach: only TLS 1.2 and 1.3 are
    accepted (openssl s_client does the ManageSieve STARTTLS itself)."""
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{sieve_gateway}", "-starttls", "sieve",
            "-servername", HOSTNAME, "-CAfile", str(ca.cert), version,
            "-cipher", "DEFAULT@SECLEVEL=0", "-brief"]
    run = subprocess.run(argv, input=b"", capture_output=True, timeout=60)
    text = (run.stdout + run.stderr).decode(errors="replace")
    if accepted:
        assert "CONNECTION ESTABLISHED" in text, text
    else:
        assert "CONNECTION ESTABLISHED" not in text and run.returncode != 0, text
