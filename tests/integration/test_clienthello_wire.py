"""Passthrough routing by a ClientHello that arrives in pieces: split over many
TCP segments, over many TLS records, and large (the size of a hello that
carries post-quantum key shares). The unit tests feed the parser such input;
these tests prove the running daemon buffers it, routes by its SNI and
forwards it verbatim, so that the backend completes the handshake.

A small relay between smtplib and sallyport re-frames the client's first TLS
record (its ClientHello) into records of `record_size` bytes of handshake
data each and sends them `segment_size` bytes per TCP segment; everything
else passes through unchanged."""
import select
import socket
import ssl
import threading
import time

import pytest

from conftest import free_port
from smtp_helpers import (
    EHLO_NAME, IMPLICIT_PASSTHROUGH, PASSWORD, SENDER, STARTTLS_PASSTHROUGH, USER,
    LoopbackSMTP, LoopbackSMTP_SSL, assert_mailbox_stored, global_section, issue,
    listener_section, log_fields, mailbox_section, make_message, marker, route_section,
    standard_body, users_file, wait_maildir, wait_session_line)

SNI = "mail.fragments.test"
OTHER_SNI = "mail.other.test"
RCPT = "bob@fragments.test"
RELAY_TIMEOUT = 30
TLS_HANDSHAKE = 0x16


def reframe(record: bytes, record_size: int) -> bytes:
    """The handshake bytes of one TLS record, re-framed into records of at
    most record_size bytes each (same content type and record version)."""
    assert record[0] == TLS_HANDSHAKE and len(record) == 5 + int.from_bytes(record[3:5], "big")
    header, body = record[:3], record[5:]
    out = b""
    for i in range(0, len(body), record_size):
        piece = body[i:i + record_size]
        out += header + len(piece).to_bytes(2, "big") + piece
    return out


class FragmentingRelay:
    """Accepts one connection on 127.0.0.1:port, connects it to 127.0.0.1:target
    and copies both ways; the client's first TLS record is re-framed and
    trickled. `hello_segments` counts the sends the ClientHello took."""

    def __init__(self, target, record_size, segment_size):
        self.target, self.record_size, self.segment_size = target, record_size, segment_size
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.hello_records = 0
        self.hello_segments = 0
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.listener.settimeout(RELAY_TIMEOUT)
            client, _ = self.listener.accept()
            server = socket.create_connection(("127.0.0.1", self.target), RELAY_TIMEOUT)
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with client, server:
                self._copy(client, server)
        except Exception as e:  # reported by close()
            self.error = e
        finally:
            self.listener.close()

    def _trickle(self, server, data):
        for i in range(0, len(data), self.segment_size):
            server.sendall(data[i:i + self.segment_size])
            self.hello_segments += 1
            time.sleep(0.002)  # lets each piece go out as a segment of its own

    def _copy(self, client, server):
        pending, hello_done = b"", False
        deadline = time.monotonic() + RELAY_TIMEOUT
        open_ends = {client: server, server: client}
        while open_ends and time.monotonic() < deadline:
            readable, _, _ = select.select(list(open_ends), [], [], 1.0)
            for src in readable:
                try:
                    data = src.recv(65536)
                except ConnectionResetError:  # smtplib may close with input unread
                    data = b""
                dst = open_ends[src]
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    del open_ends[src]
                    continue
                if src is not client or hello_done:
                    dst.sendall(data)
                    continue
                if not pending and data[0] != TLS_HANDSHAKE:
                    dst.sendall(data)  # the STARTTLS dialogue: cleartext lines
                    continue
                pending += data
                if len(pending) < 5 or len(pending) < 5 + int.from_bytes(pending[3:5], "big"):
                    continue
                end = 5 + int.from_bytes(pending[3:5], "big")
                framed = reframe(pending[:end], self.record_size)
                self.hello_records = -(-(end - 5) // self.record_size)
                self._trickle(dst, framed)
                dst.sendall(pending[end:])
                hello_done = True

    def close(self):
        self.thread.join(RELAY_TIMEOUT)
        assert not self.thread.is_alive(), "relay still running"
        if self.error:
            raise self.error


def gateway(sallyport, tmp_path, ca, way):
    """A passthrough listener of `way` with two routes told apart by SNI, each
    to an embedded mailbox of the listener's TLS flavour holding the
    certificate for its name."""
    port = free_port()
    conf = global_section() + listener_section(way, port)
    maildirs = {}
    for name, sni in (("box1", SNI), ("box2", OTHER_SNI)):
        cert, key = issue(ca, sni)
        maildirs[sni] = tmp_path / name
        conf += mailbox_section(name, free_port(), maildirs[sni], tls=way.tls, cert=cert,
                                key=key, users=users_file(tmp_path))
        conf += route_section(name, sni, name)
    return sallyport(conf), port, maildirs


def context(ca, alpn_bytes=0):
    """A client context; alpn_bytes > 0 offers that many bytes of ALPN names,
    to make the ClientHello as large as one with post-quantum key shares."""
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    if alpn_bytes:
        names = [f"x-sallyport-{i:03d}-".ljust(200, "p") for i in range(alpn_bytes // 201)]
        ctx.set_alpn_protocols(names)
    return ctx


def send_through(way, port, ctx, sni, message):
    if way.tls == "implicit":
        cls = type("S", (LoopbackSMTP_SSL,), {})
        s = cls(sni, port, local_hostname=EHLO_NAME, context=ctx, timeout=RELAY_TIMEOUT)
    else:
        s = LoopbackSMTP(sni, port, local_hostname=EHLO_NAME, timeout=RELAY_TIMEOUT)
        s.ehlo()
        s.starttls(context=ctx)
    try:
        s.ehlo()
        s.login(USER, PASSWORD)
        assert not s.sendmail(SENDER, [RCPT], message)
        s.quit()
    finally:
        s.close()


# (record_size, segment_size, alpn_bytes): one record in one-byte segments; many
# small records; a large hello (PQ-sized) in 300-byte records over 97-byte segments.
SHAPES = [(1 << 14, 1, 0), (61, 17, 0), (300, 97, 6000)]
SHAPE_IDS = ["byte-by-byte", "small-records", "large-hello"]


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("way", [IMPLICIT_PASSTHROUGH, STARTTLS_PASSTHROUGH],
                         ids=["implicit", "starttls"])
def test_fragmented_clienthello_is_routed_and_forwarded(sallyport, tmp_path, ca, way, shape):
    record_size, segment_size, alpn_bytes = shape
    sp, port, maildirs = gateway(sallyport, tmp_path, ca, way)
    relay = FragmentingRelay(port, record_size, segment_size)
    mark = marker()
    message = make_message(mark, standard_body(mark), RCPT)
    send_through(way, relay.port, context(ca, alpn_bytes), SNI, message)
    relay.close()
    assert relay.hello_segments > 3, relay.hello_segments
    if record_size < 1 << 14:
        assert relay.hello_records > 3, relay.hello_records
    (stored,) = wait_maildir(maildirs[SNI])
    assert_mailbox_stored(stored, message)
    assert not maildirs[OTHER_SNI].exists() or not list((maildirs[OTHER_SNI] / "new").iterdir())
    f = log_fields(wait_session_line(sp, f"sni={SNI}"))
    assert (f["route"], f["mode"], f["tls"]) == ("box1", "passthrough", "passthrough"), f
