"""Self-test of the private ACME CA (pebble.py): pebble and its DNS server
(pebble-challtestsrv) start, answer, stop and start again; and one real
http-01 issuance (a minimal ACME client here, stdlib + openssl(1)) shows that
certificateValidityPeriod works and the chain verifies against root_file()."""
import base64
import hashlib
import http.server
import json
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import free_port, refused
from pebble import HOST, Pebble, pebble_factory  # noqa: F401


def test_directory_dns_roots_and_restart(pebble_factory, ca):
    pb = pebble_factory(http_port=5002, tls_port=5001)

    d = pb.directory()
    for key in ("newNonce", "newAccount", "newOrder"):
        assert d[key].startswith(f"https://{HOST}:{pb.port}/"), d

    # pebble's HTTPS certificate: the test CA, for IP 127.0.0.1 (and localhost)
    assert pb.ca_file == ca.cert
    with ssl.create_default_context(cafile=str(pb.ca_file)).wrap_socket(
            socket.create_connection((HOST, pb.port), timeout=5),
            server_hostname="localhost"):
        pass                        # DNS:localhost verifies too (directory() used the IP)

    # every name resolves to 127.0.0.1 at the DNS server pebble uses
    assert pb.resolve("mail.example.test") == [HOST]
    assert pb.resolve("another.name.example.org") == [HOST]

    root = pb.root_pem()
    assert root.startswith("-----BEGIN CERTIFICATE-----")
    assert pb.root_file().read_text() == root
    assert pb.intermediate_pem().startswith("-----BEGIN CERTIFICATE-----")
    assert pb.intermediate_pem() != root

    # the CA goes down: nothing answers on its ports; DNS still does
    pb.stop()
    assert not pb.running()
    assert refused(pb.port) and refused(pb.management_port)
    with pytest.raises(urllib.error.URLError):
        pb.directory()
    assert pb.resolve("mail.example.test") == [HOST]

    # and comes back on the same ports, with a new root (no state kept)
    port, mgmt = pb.port, pb.management_port
    pb.start()
    assert (pb.port, pb.management_port) == (port, mgmt)
    assert "newOrder" in pb.directory()
    assert pb.root_pem() != root

    config = pb.config_path.read_text()
    assert "PEBBLE_VA_ALWAYS_VALID" not in pb._env()
    assert '"httpPort": 5002' in config and '"tlsPort": 5001' in config


def test_always_valid_is_refused(ca, tmp_path):
    with pytest.raises(ValueError):
        Pebble(tmp_path, ca, env={"PEBBLE_VA_ALWAYS_VALID": "1"}, start=False)


def test_close_kills_both_programs(pebble_factory):
    pb = pebble_factory(http_port=5002, tls_port=5001)
    pids = dict(pb._pids)
    assert set(pids) == {"pebble", "dns"}
    pb.close()
    for pid in pids.values():
        try:
            with open(f"/proc/{pid}/stat") as f:
                assert f.read().split(") ", 1)[1][0] == "Z", f"{pid} still running"
        except FileNotFoundError:
            pass
    assert refused(pb.port) and refused(pb.dns_management_port)


# -- a real issuance: a minimal ACME (RFC 8555) client, stdlib + openssl(1) -----------

def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _MiniAcme:
    """Just enough ACME for one http-01 issuance: RS256 account key (openssl
    signs), urllib for HTTPS (trusting the fixture's ca_file)."""

    def __init__(self, pb, directory):
        self.pb, self.dir = pb, directory
        self.key = directory / "account.key"
        subprocess.run(["openssl", "genrsa", "-out", str(self.key), "2048"],
                       check=True, capture_output=True)
        modulus = subprocess.run(["openssl", "rsa", "-in", str(self.key), "-noout", "-modulus"],
                                 check=True, capture_output=True, text=True).stdout
        n = bytes.fromhex(modulus.strip().split("=", 1)[1])
        self.jwk = {"e": _b64((65537).to_bytes(3, "big")), "kty": "RSA", "n": _b64(n)}
        canonical = json.dumps(self.jwk, sort_keys=True, separators=(",", ":")).encode()
        self.thumbprint = _b64(hashlib.sha256(canonical).digest())
        self.urls = pb.directory()
        self.kid = None
        self.nonce = self._request(self.urls["newNonce"], method="HEAD")[1]["Replay-Nonce"]

    def _request(self, url, data=None, method=None):
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/jose+json"})
        try:
            with urllib.request.urlopen(req, context=self.pb._ssl, timeout=10) as r:
                return r.read(), r.headers
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{url}: {e.code} {e.read().decode(errors='replace')}")

    def post(self, url, payload):
        """A JWS POST (payload None: POST-as-GET); returns (body, headers)."""
        protected = {"alg": "RS256", "nonce": self.nonce, "url": url}
        protected.update({"kid": self.kid} if self.kid else {"jwk": self.jwk})
        p64 = _b64(json.dumps(protected).encode())
        b64 = "" if payload is None else _b64(json.dumps(payload).encode())
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                             input=f"{p64}.{b64}".encode(), check=True,
                             capture_output=True).stdout
        body, headers = self._request(url, json.dumps(
            {"protected": p64, "payload": b64, "signature": _b64(sig)}).encode())
        self.nonce = headers["Replay-Nonce"]
        return body, headers

    def poll(self, url, want, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            obj = json.loads(self.post(url, None)[0])
            if obj["status"] == want:
                return obj
            assert obj["status"] in ("pending", "processing", "ready"), obj
            assert time.monotonic() < deadline, obj
            time.sleep(0.05)

    def issue(self, name, tokens):
        """Orders a certificate for name; tokens: dict the http-01 server serves
        from. Returns the PEM chain."""
        _, h = self.post(self.urls["newAccount"], {"termsOfServiceAgreed": True})
        self.kid = h["Location"]
        body, h = self.post(self.urls["newOrder"],
                            {"identifiers": [{"type": "dns", "value": name}]})
        order_url, order = h["Location"], json.loads(body)
        for authz_url in order["authorizations"]:
            authz = json.loads(self.post(authz_url, None)[0])
            ch = next(c for c in authz["challenges"] if c["type"] == "http-01")
            tokens[ch["token"]] = f"{ch['token']}.{self.thumbprint}"
            self.post(ch["url"], {})
            self.poll(authz_url, "valid")
        key, csr = self.dir / "leaf.key", self.dir / "leaf.csr"
        subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
                        "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key),
                        "-outform", "DER", "-out", str(csr)], check=True, capture_output=True)
        self.post(order["finalize"], {"csr": _b64(csr.read_bytes())})
        order = self.poll(order_url, "valid")
        return self.post(order["certificate"], None)[0].decode()


def _http01_server(port, tokens):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            token = self.path.rsplit("/", 1)[-1]
            body = tokens.get(token, "").encode()
            ok = self.path.startswith("/.well-known/acme-challenge/") and body
            self.send_response(200 if ok else 404)
            self.send_header("Content-Length", str(len(body) if ok else 0))
            self.end_headers()
            if ok:
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((HOST, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _openssl_x509(pem, *args):
    return subprocess.run(["openssl", "x509", "-noout", *args], input=pem, check=True,
                          capture_output=True, text=True).stdout


def test_issuance_with_short_validity(pebble_factory, tmp_path):
    """A real http-01 issuance (pebble connects to our http-01 server on
    http_port): certificateValidityPeriod 120 gives a certificate valid for
    120 s, and the chain verifies against root_file()."""
    http_port = free_port()
    tokens = {}
    server = _http01_server(http_port, tokens)
    try:
        pb = pebble_factory(http_port=http_port, tls_port=free_port(), validity=120)
        assert "Using certificate validity period of 120 seconds" in pb.log()
        chain = _MiniAcme(pb, tmp_path).issue("mail.example.test", tokens)
    finally:
        server.shutdown()
        server.server_close()
    assert tokens, "no http-01 challenge was served"
    leaf = chain[:chain.index("-----END CERTIFICATE-----") + 26]
    dates = dict(line.split("=", 1) for line in _openssl_x509(leaf, "-dates").splitlines())
    lifetime = (ssl.cert_time_to_seconds(dates["notAfter"])
                - ssl.cert_time_to_seconds(dates["notBefore"]))
    # pebble sets notAfter = notBefore + period - 1 s: 120 s counting both
    # ends (RFC 5280 validity is inclusive)
    assert lifetime == 119, dates
    assert "DNS:mail.example.test" in _openssl_x509(leaf, "-ext", "subjectAltName")

    (tmp_path / "chain.pem").write_text(chain)
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(pb.root_file()),
                             "-untrusted", str(pb.intermediate_file()),
                             str(tmp_path / "chain.pem")], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    serial = _openssl_x509(leaf, "-serial").strip().split("=", 1)[1]
    status = pb.cert_status(serial)
    assert status["Status"] == "Valid" and status["Certificate"].strip() == leaf.strip()
