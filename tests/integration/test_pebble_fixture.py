"""Self-test of the private ACME CA (pebble.py): pebble and its DNS server
(pebble-challtestsrv) start, answer, stop and start again."""
import socket
import ssl
import urllib.error

import pytest

from conftest import refused
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
