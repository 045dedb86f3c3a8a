"""The per-client limits: connections open at once per address
(max_client_connections), new connections per second per address
(client_connection_rate), and the addresses they skip
(client_limit_exceptions, loopback by default).

A client over a limit is turned away at once: on a STARTTLS listener with the
protocol's own "try later" greeting, on an implicit-TLS listener with a bare
close. Either way a log line says which limit, and the address is admitted
again as soon as it is back under the limit. The clients here all come from
127.0.0.1, so the tests that exercise a limit set client_limit_exceptions =
none."""
import select
import socket

import pytest

from conftest import free_port, wait_for

HOSTNAME = "gw.test"
TIMEOUT = 20

# service -> (greeting prefix, the busy refusal it gets instead)
SERVICES = {
    "submission": (b"220 ", b"421 4.7.0 gw.test Too many connections from your address"),
    "imap": (b"* OK ", b"* BYE [UNAVAILABLE] gw.test Too many connections from your address"),
    "pop3": (b"+OK ", b"-ERR [SYS/TEMP] gw.test Too many connections from your address"),
    "sieve": (b'"IMPLEMENTATION"', b'BYE (TRYLATER) "gw.test Too many connections from your '
                                   b'address"'),
}


def config(ca, port, service, **global_opts):
    cert, key = ca.issue("limits-gw", [HOSTNAME])
    text = "[global]\nlog_level = debug\n"
    text += "".join(f"{k} = {v}\n" for k, v in global_opts.items())
    text += (f"[certificate gw]\ncert = {cert}\nkey = {key}\n"
             f"[listener l]\nservice = {service}\naddress = 127.0.0.1:{port}\n"
             f"hostname = {HOSTNAME}\n"
             # Never reached: these clients stop before TLS.
             f"[backend b]\nhost = 127.0.0.1\n"
             f"[route r]\nsni = *\nbackend = b\n")
    return text


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\0" * 8)
    return s


def first_bytes(s):
    """What the server sends before the client says anything: up to the end of
    its first line (for ManageSieve, its first capability line), or b"" on a
    close."""
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def refused_with(s, busy):
    data = first_bytes(s)
    assert data.startswith(busy), data
    assert data.endswith(b"\r\n") and data.count(b"\n") == 1, data
    assert s.recv(4096) == b"", "the connection stays open after the refusal"


def log_refusals(sp, limit):
    return [line for line in sp.log().splitlines()
            if " session " in line and f'close="refused: {limit}' in line]


def admitted_again(port, greeting):
    """Polls (bounded) until a new connection is greeted again."""
    def try_once():
        with connect(port) as s:
            return first_bytes(s).startswith(greeting)
    wait_for(try_once, TIMEOUT, what="a connection admitted again")


@pytest.mark.parametrize("service", list(SERVICES))
def test_max_client_connections(sallyport, ca, service):
    greeting, busy = SERVICES[service]
    port = free_port()
    sp = sallyport(config(ca, port, service, max_client_connections=3, client_connection_rate=0,
                          client_limit_exceptions="none"))
    held = [connect(port) for _ in range(3)]
    try:
        for s in held:
            assert first_bytes(s).startswith(greeting)
        with connect(port) as extra:
            refused_with(extra, busy)
        wait_for(lambda: log_refusals(sp, "max_client_connections"), TIMEOUT,
                 what="the refusal's log line")
        (line,) = log_refusals(sp, "max_client_connections")
        assert "listener=l client=127.0.0.1:" in line, line
        held.pop().close()
        admitted_again(port, greeting)
    finally:
        for s in held:
            s.close()


def test_client_connection_rate(sallyport, ca):
    greeting, busy = SERVICES["submission"]
    port = free_port()
    sp = sallyport(config(ca, port, "submission", max_client_connections=0,
                          client_connection_rate=1, client_limit_exceptions="none"))
    with connect(port) as first:
        assert first_bytes(first).startswith(greeting)
    # The bucket holds one connection a second: the next one at once is too fast.
    with connect(port) as second:
        refused_with(second, busy)
    wait_for(lambda: log_refusals(sp, "client_connection_rate"), TIMEOUT,
             what="the refusal's log line")
    admitted_again(port, greeting)


def test_implicit_tls_listener_refuses_with_a_bare_close(sallyport, ca):
    port = free_port()
    sallyport(config(ca, port, "submissions", max_client_connections=1,
                     client_connection_rate=0, client_limit_exceptions="none"))
    with connect(port) as held:
        held.sendall(b"\x16")  # the start of a ClientHello: the session waits for more
        with connect(port) as extra:
            assert extra.recv(4096) == b""


def test_loopback_is_exempt_by_default(sallyport, ca):
    """The defaults (32 per address, 10 a second) do not apply to 127.0.0.1."""
    greeting, _ = SERVICES["submission"]
    port = free_port()
    sp = sallyport(config(ca, port, "submission"))
    held = []
    try:
        for _ in range(40):
            s = connect(port)
            held.append(s)
            assert first_bytes(s).startswith(greeting)
    finally:
        for s in held:
            s.close()
    assert not log_refusals(sp, ""), sp.log()


def test_exception_list_replaces_loopback(sallyport, ca):
    """Listing other prefixes takes loopback off the list."""
    _, busy = SERVICES["submission"]
    port = free_port()
    sallyport(config(ca, port, "submission", max_client_connections=1, client_connection_rate=0,
                     client_limit_exceptions="192.0.2.0/24 2001:db8::/32"))
    with connect(port) as held:
        assert first_bytes(held).startswith(b"220 ")
        with connect(port) as extra:
            refused_with(extra, busy)


# ---- running out: max_connections and file descriptors ------------------------------

def test_max_connections_pauses_accept_and_resumes(sallyport, ca):
    greeting, _ = SERVICES["submission"]
    port = free_port()
    sp = sallyport(config(ca, port, "submission", max_connections=3))
    held = [connect(port) for _ in range(3)]
    try:
        for s in held:
            assert first_bytes(s).startswith(greeting)
            # A client that has said something is never closed to make room
            # (test_overload.py): the limit holds it off.
            s.sendall(b"NOOP\r\n")
            assert first_bytes(s).startswith(b"250")
        waiting = connect(port)  # queued by the kernel, not accepted
        held.append(waiting)
        sp.wait_log("the max_connections limit; pausing accept")
        waiting.setblocking(False)
        with pytest.raises(BlockingIOError):
            waiting.recv(1)
        waiting.setblocking(True)
        held.pop(0).close()
        assert first_bytes(waiting).startswith(greeting)
    finally:
        for s in held:
            s.close()


def test_out_of_file_descriptors(tmp_path, ca):
    """With a small descriptor limit, clients beyond it wait in the listen
    queue while sallyport backs off (no busy loop: one log line per back-off),
    and are served as soon as descriptors free up."""
    import resource
    import subprocess
    from conftest import SALLYPORT, SANITIZER_MARKERS
    greeting, _ = SERVICES["submission"]
    port = free_port()
    conf = tmp_path / "emfile.conf"
    conf.write_text(config(ca, port, "submission"))
    log_path = tmp_path / "emfile.log"
    limit = 40

    def small_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    with open(log_path, "wb") as log:
        proc = subprocess.Popen([SALLYPORT, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=small_limit)
    held = []
    try:
        wait_for(lambda: b"sallyport ready" in log_path.read_bytes(), TIMEOUT, what="ready")
        for _ in range(limit + 10):
            held.append(connect(port))
            # Said something: never closed to make room (test_overload.py).
            held[-1].sendall(b"NOOP\r\n")
        wait_for(lambda: b"Too many open files; pausing" in log_path.read_bytes(), TIMEOUT,
                 what="the EMFILE back-off")
        greeted = []
        for s in held:
            s.setblocking(False)
            try:
                if s.recv(4096).startswith(greeting):
                    greeted.append(s)
            except BlockingIOError:
                pass
            s.setblocking(True)
        assert 10 < len(greeted) < limit, len(greeted)
        waiting = [s for s in held if s not in greeted]
        for s in greeted:
            s.close()
        held = waiting
        for s in waiting[:len(greeted) - 5]:
            assert first_bytes(s).startswith(greeting)
        assert proc.poll() is None
        pauses = log_path.read_text().count("Too many open files; pausing")
        assert pauses < 60, f"{pauses} back-offs: accept is spinning"
    finally:
        for s in held:
            s.close()
        proc.terminate()
        proc.wait(timeout=10)
    text = log_path.read_text()
    assert not any(m in text for m in SANITIZER_MARKERS), text
    assert proc.returncode == 0, text[-3000:]


# ---- slow and idle clients ------------------------------------------------------------

def mailbox_config(ca, tmp_path, port, service, mode, **global_opts):
    """A listener in front of an embedded mailbox (plain behind terminate, of
    the listener's flavour behind passthrough)."""
    cert, key = ca.issue("limits-gw", [HOSTNAME])
    tls = "plain" if mode == "terminate" else ("implicit" if service == "submissions"
                                               else "starttls")
    text = "[global]\nlog_level = debug\n"
    text += "".join(f"{k} = {v}\n" for k, v in global_opts.items())
    text += (f"[certificate gw]\ncert = {cert}\nkey = {key}\n"
             f"[listener l]\nservice = {service}\naddress = 127.0.0.1:{port}\n"
             f"mode = {mode}\nhostname = {HOSTNAME}\n"
             f"[mailbox box]\naddress = 127.0.0.1:{free_port()}\nmaildir = {tmp_path / 'box'}\n"
             f"tls = {tls}\nhostname = {HOSTNAME}\n")
    if tls != "plain":
        text += f"cert = {cert}\nkey = {key}\n"
    text += "[route r]\nsni = *\nbackend = box\n"
    return text


@pytest.mark.parametrize("mode", ["terminate", "passthrough"])
def test_slow_clienthello_hits_the_handshake_timeout(sallyport, ca, tmp_path, mode):
    """A ClientHello trickled a byte at a time: the handshake timeout covers
    the whole handshake, so the trickle cannot stretch it."""
    from fakebackend import client_hello
    port = free_port()
    sp = sallyport(mailbox_config(ca, tmp_path, port, "submissions", mode, handshake_timeout=2))
    hello = client_hello(HOSTNAME)
    sent = 0
    with connect(port) as s:
        try:
            for i in range(len(hello)):  # 517 bytes at 50 ms: 26 s if never cut
                s.sendall(hello[i:i + 1])
                sent += 1
                readable = select.select([s], [], [], 0.05)[0]
                if readable and s.recv(4096) == b"":
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert sent < len(hello), "the whole trickled ClientHello was accepted"
    line = wait_for(lambda: [l for l in sp.log().splitlines() if "handshake timeout" in l],
                    TIMEOUT, what="the timeout's log line")[0]
    assert "session listener=l" in line, line


def test_idle_relay_hits_the_idle_timeout(sallyport, ca, tmp_path):
    import ssl
    port = free_port()
    sp = sallyport(mailbox_config(ca, tmp_path, port, "submissions", "terminate",
                                  idle_timeout=1))
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    with ctx.wrap_socket(connect(port), server_hostname=HOSTNAME) as s:
        assert first_bytes(s).startswith(b"220 ")
        s.sendall(b"EHLO client.test\r\n")
        assert first_bytes(s).startswith(b"250")
        data = b""
        while True:  # nothing more from us: sallyport ends the session
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    line = wait_for(lambda: [l for l in sp.log().splitlines() if 'close="idle timeout"' in l],
                    TIMEOUT, what="the idle timeout's log line")[0]
    assert "route=r backend=box" in line, line


def test_refusal_log_lines_are_capped(sallyport, ca):
    """A client hammering past its limit cannot turn each cheap refusal into a
    log line: at most 20 a second are logged one by one, the rest as a count."""
    import time
    port = free_port()
    sp = sallyport(config(ca, port, "submission", max_client_connections=0,
                          client_connection_rate=1, client_limit_exceptions="none"))
    attempts = 0
    summary = "more connections over the client limits (not logged one by one)"
    while summary not in sp.log() and attempts < 500:
        with connect(port) as s:
            first_bytes(s)
        attempts += 1
        if attempts > 50:
            time.sleep(0.01)  # let the clock pass a second boundary
    assert summary in sp.log(), f"{attempts} attempts"
    logged = len(log_refusals(sp, "client_connection_rate"))
    assert logged < attempts - 5, (logged, attempts)
