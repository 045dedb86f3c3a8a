"""Logs that never stop the gateway (log.c, log_line.c, log_sink.c).

Every line goes through one writer thread and a bounded queue: a log reader
that stalls (a full pipe, a busy journal) blocks only the writer, never an
event loop; what does not fit in the queue is dropped and counted, and the
writer says how many once it can write again. `log = stderr | syslog`
(our own RFC 3164 client on an AF_UNIX datagram socket, `syslog_socket`),
`log_format = text | json`, all three reloadable and checked by -t.

The daemons whose stderr or syslog socket a test holds itself are started
here with subprocess (the fixture reads stderr from a file); each is killed
at the end of its test."""
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from conftest import (READY_TIMEOUT, SALLYPORT, SANITIZER_MARKERS, WRAPPER, free_port, refused,
                      run_check, wait_for)
from smtp_helpers import (EHLO_NAME, SENDER, LoopbackSMTP_SSL, client_context, issue,
                          maildir_messages)

SNI = "mail.logs.test"
RCPT = "bob@logs.test"
# The stalled-reader test: sessions in all (over two client threads), the
# MAIL/RSET pairs each one sends first (two debug lines each: enough volume
# to overflow the writer's 1 MiB queue behind a full pipe), and the bound
# on the whole loop in seconds.
STALLED_SESSIONS = 300
STALLED_PAIRS = 30
STALLED_MAX_SECONDS = 240
CLIENT_TIMEOUT = 30
DROPPED_LINE = re.compile(
    r"sallyport\[warn\]: log: (\d+) lines dropped \(the log reader was too slow\)")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SYSLOG_HEADER = re.compile(
    r"^<(\d+)>(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 123]\d \d\d:\d\d:\d\d "
    r"sallyport\[(\d+)\]: ")


def gateway_config(ca, tmp_path, ports, extra_global="", log_level="debug", workers=2):
    """An implicit-TLS listener terminating for a plain embedded mailbox."""
    cert, key = issue(ca, SNI)
    return (f"[global]\nlog_level = {log_level}\nworkers = {workers}\n{extra_global}\n"
            f"[certificate gw]\ncert = {cert}\nkey = {key}\n\n"
            f"[listener submissions]\naddress = 127.0.0.1:{ports[0]}\nhostname = gw.test\n\n"
            f"[mailbox box]\naddress = 127.0.0.1:{ports[1]}\nmaildir = {tmp_path / 'mail'}\n\n"
            f"[route all]\nsni = *\nbackend = box\n")


def one_session(port, ca, pairs=0, tag="x"):
    """A complete SMTP session through the gateway: `pairs` MAIL/RSET pairs,
    then one message, then QUIT."""
    s = LoopbackSMTP_SSL(SNI, port, local_hostname=EHLO_NAME, context=client_context(ca.cert),
                         timeout=CLIENT_TIMEOUT)
    try:
        s.ehlo()
        for _ in range(pairs):
            assert s.mail(SENDER)[0] == 250
            assert s.rset()[0] == 250
        refused_rcpts = s.sendmail(SENDER, [RCPT], f"Subject: {tag}\r\n\r\nlogs\r\n".encode())
        assert not refused_rcpts
        s.quit()
    finally:
        s.close()


def start_daemon(config_path, stderr):
    """sallyport with its stderr where the test says."""
    return subprocess.Popen(WRAPPER + [SALLYPORT, "-c", str(config_path)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=stderr)


def wait_listening(proc, port):
    """Until the listener takes connections (its socket is bound before the
    loops run; a connection meanwhile waits in the backlog)."""
    def up():
        if proc.poll() is not None:
            raise AssertionError(f"sallyport exited with {proc.returncode}")
        return not refused(port)
    wait_for(up, what="the listener")


@contextmanager
def killed_at_the_end(proc):
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


class PipeReader(threading.Thread):
    """Reads a pipe to its end, keeping everything."""

    def __init__(self, fd):
        super().__init__(daemon=True)
        self.fd = fd
        self.data = bytearray()
        self.lock = threading.Lock()

    def run(self):
        while True:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return
            with self.lock:
                self.data += chunk

    def text(self):
        with self.lock:
            return self.data.decode(errors="replace")


def run_sessions(port, ca, total, pairs, threads=2):
    """`total` sessions over `threads` client threads, bounded in time.
    Returns (sessions completed, failures)."""
    done, failures, lock = [0], [], threading.Lock()
    deadline = time.monotonic() + STALLED_MAX_SECONDS

    def client(index):
        for i in range(index, total, threads):
            if time.monotonic() > deadline:
                with lock:
                    failures.append("out of time")
                return
            try:
                one_session(port, ca, pairs, tag=f"{index}-{i}")
            except Exception as e:  # noqa: BLE001 (every failure is kept and reported)
                with lock:
                    failures.append(repr(e))
                return
            with lock:
                done[0] += 1

    workers = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(STALLED_MAX_SECONDS + CLIENT_TIMEOUT)
    return done[0], failures


def dropped_in_metrics(port):
    """sallyport_log_lines_dropped_total from the [metrics] endpoint."""
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    found = re.search(rb"^sallyport_log_lines_dropped_total (\d+)$", data, re.M)
    assert found, data[-2000:]
    return int(found.group(1))


def no_sanitizer_reports(text):
    assert not any(marker in text for marker in SANITIZER_MARKERS), text[-4000:]


# ---- a stalled reader ----------------------------------------------------------


def test_a_stderr_nobody_reads_stops_no_session(ca, tmp_path):
    """stderr is a pipe the test does not read while hundreds of sessions
    pass, at debug level: the writer blocks on the full pipe, its queue
    fills, and every session still completes. Once the pipe is read, the
    writer catches up and says how many lines it dropped."""
    ports = (free_port(), free_port())
    metrics_port = free_port()
    conf = tmp_path / "stalled.conf"
    conf.write_text(gateway_config(ca, tmp_path, ports) +
                    f"[metrics]\naddress = 127.0.0.1:{metrics_port}\n")
    r, w = os.pipe()
    proc = start_daemon(conf, w)
    os.close(w)
    reader = PipeReader(r)
    try:
        with killed_at_the_end(proc):
            wait_listening(proc, ports[0])
            done, failures = run_sessions(ports[0], ca, STALLED_SESSIONS, STALLED_PAIRS)
            assert failures == [] and done == STALLED_SESSIONS, (done, failures[:5])
            assert len(maildir_messages(tmp_path / "mail")) == STALLED_SESSIONS
            assert proc.poll() is None
            # The metrics say what was dropped, while nobody reads.
            assert dropped_in_metrics(metrics_port) > 0

            # Now someone reads: the writer writes what it held, then the count.
            reader.start()
            found = wait_for(lambda: DROPPED_LINE.search(reader.text()),
                             what="the 'lines dropped' line")
            assert int(found.group(1)) > 0
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=READY_TIMEOUT) == 0
            reader.join(timeout=READY_TIMEOUT)
            text = reader.text()
            no_sanitizer_reports(text)
            assert text.rstrip("\n").endswith("sallyport[info]: sallyport stopped"), text[-2000:]
    finally:
        os.close(r)


def test_a_stuck_reader_does_not_hold_up_the_exit(ca, tmp_path):
    """With the writer blocked on a pipe nobody will ever read, SIGTERM
    still ends the process (the writer gets a bounded time to flush, then
    is left behind)."""
    ports = (free_port(), free_port())
    conf = tmp_path / "stuck.conf"
    conf.write_text(gateway_config(ca, tmp_path, ports))
    r, w = os.pipe()
    proc = start_daemon(conf, w)
    os.close(w)
    try:
        with killed_at_the_end(proc):
            wait_listening(proc, ports[0])
            # About 6 KiB of lines each: far more than a pipe holds.
            done, failures = run_sessions(ports[0], ca, 40, STALLED_PAIRS, threads=1)
            assert failures == [] and done == 40, failures[:5]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=READY_TIMEOUT) == 0
    finally:
        os.close(r)


# ---- json ------------------------------------------------------------------------


def json_lines(text):
    """Every line of a log, each parsed (a line that is not JSON fails)."""
    return [json.loads(line) for line in text.splitlines() if line]


def test_json_lines_parse_and_the_session_line_has_its_fields(sallyport, ca, tmp_path):
    ports = (free_port(), free_port())
    sp = sallyport(gateway_config(ca, tmp_path, ports, "log_format = json\n", log_level="info",
                                  workers=1))
    one_session(ports[0], ca, pairs=1, tag="json")
    wait_for(lambda: '"event":"session"' in sp.log() and '"event":"mailbox"' in sp.log(),
             what="the session lines")
    assert sp.stop() == 0
    objects = json_lines(sp.log())
    for o in objects:
        assert STAMP.match(o["time"]), o
        assert o["level"] in ("debug", "info", "warn", "error"), o
        assert isinstance(o["message"], str), o
    assert objects[-1]["message"] == "sallyport stopped"

    [session] = [o for o in objects if o.get("event") == "session"]
    assert session["message"].startswith("session listener=submissions client=127.0.0.1:")
    assert session["listener"] == "submissions"
    assert session["client"].startswith("127.0.0.1:")
    assert (session["route"], session["backend"], session["mode"]) == ("all", "box", "terminate")
    assert session["sni"] == SNI
    assert session["tls"].startswith("TLSv1.")
    assert session["gen"] == "1" and session["worker"] == "0"
    assert int(session["bytes_in"]) > 0 and session["duration"].endswith("s")
    assert session["close"] and '"' not in session["close"], session  # unquoted
    assert session["message"].endswith(f'close="{session["close"]}"')

    [mailbox] = [o for o in objects if o.get("event") == "mailbox"]
    assert mailbox["mailbox"] == "box"  # from "mailbox box:"
    assert (mailbox["messages"], mailbox["auth"], mailbox["close"]) == ("1", "-", "quit")

    # A sentence with one key=value is no event: its text stays in "message".
    [stored] = [o for o in objects if " stored " in o["message"]]
    assert "event" not in stored and f"from=<{SENDER}>" in stored["message"]


# ---- syslog ----------------------------------------------------------------------


class SyslogReceiver:
    """An AF_UNIX datagram socket standing in for /dev/log."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.datagrams = []

    def poll(self):
        """Everything received so far, as text."""
        while True:
            try:
                self.datagrams.append(self.sock.recv(65536).decode(errors="replace"))
            except BlockingIOError:
                return self.datagrams

    def wait(self, text, what=None):
        return wait_for(lambda: next((d for d in self.poll() if text in d), None),
                        what=what or f"a datagram with {text!r} at {self.path}")

    def close(self):
        self.sock.close()
        Path(self.path).unlink(missing_ok=True)


def short_socket_dir():
    """A directory for sockets: pytest's tmp_path can be longer than a
    socket address holds."""
    return Path(tempfile.mkdtemp(prefix="sp-log-", dir="/tmp"))


def test_syslog_lines_reach_the_socket_and_survive_its_restart(ca, tmp_path):
    sockets = short_socket_dir()
    first, second = str(sockets / "log"), str(sockets / "log2")
    rx = SyslogReceiver(first)
    ports = (free_port(), free_port())
    conf = tmp_path / "syslog.conf"

    def config(extra):
        return gateway_config(ca, tmp_path, ports, f"log = syslog\n{extra}", log_level="info",
                              workers=1)

    conf.write_text(config(f"syslog_socket = {first}\n"))
    stderr_path = tmp_path / "syslog.stderr"
    with open(stderr_path, "wb") as stderr:
        proc = start_daemon(conf, stderr)
    rx2 = None
    try:
        with killed_at_the_end(proc):
            ready = rx.wait("sallyport ready")
            m = SYSLOG_HEADER.match(ready)
            assert m and m.group(1) == "22" and int(m.group(3)) == proc.pid, ready  # mail.info
            assert ready[m.end():].startswith("sallyport ready (1 listener")

            one_session(ports[0], ca, tag="syslog-1")
            line = rx.wait("session listener=submissions")
            assert re.match(rf"^<22>\w\w\w [ 123]\d \d\d:\d\d:\d\d sallyport\[{proc.pid}\]: "
                            r"session listener=submissions client=127\.0\.0\.1:", line), line

            # A reload refused for a bad key: lines at error level (mail.err = 19).
            good = conf.read_text()
            conf.write_text(good + "[backend x]\nsubmissions = 127.0.0.1:1 plain\nbogus = 1\n")
            proc.send_signal(signal.SIGHUP)
            refused_line = rx.wait("reload refused")
            assert refused_line.startswith("<19>"), refused_line
            conf.write_text(good)

            # The reader goes away and comes back: the writer connects again
            # (at most once a second), and lines flow once more.
            rx.close()
            rx = SyslogReceiver(first)

            def delivered_after_restart():
                one_session(ports[0], ca, tag="syslog-2")
                return [d for d in rx.poll() if "session listener=" in d]
            wait_for(delivered_after_restart, what="a session line after the socket came back")

            # A reload to another socket, in json: the body is the object.
            rx2 = SyslogReceiver(second)
            conf.write_text(config(f"syslog_socket = {second}\nlog_format = json\n"))
            proc.send_signal(signal.SIGHUP)
            reloaded = rx2.wait("reloaded: generation 2")
            m = SYSLOG_HEADER.match(reloaded)
            assert m and m.group(1) == "22", reloaded
            body = json.loads(reloaded[m.end():])
            assert body["level"] == "info" and body["message"].startswith("reloaded: generation 2")

            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=READY_TIMEOUT) == 0
            stopped = rx2.wait("sallyport stopped")
            assert json.loads(stopped[SYSLOG_HEADER.match(stopped).end():])["level"] == "info"
        err = stderr_path.read_text(errors="replace")
        no_sanitizer_reports(err)
        assert "sallyport[" not in err, err  # nothing went to stderr
    finally:
        rx.close()
        if rx2:
            rx2.close()
        sockets.rmdir()


# ---- the check, and reload -------------------------------------------------------


def test_bad_log_settings_are_refused_by_the_check(tmp_path):
    mailbox = f"[mailbox box]\naddress = 127.0.0.1:{free_port()}\nmaildir = {tmp_path / 'm'}\n"
    text = ("[global]\nlog = file\nlog_format = xml\nsyslog_socket = dev/log\n\n" + mailbox)
    code, out = run_check(text, tmp_path)
    conf = tmp_path / "check.conf"
    assert code == 1, out
    assert (f"{conf}:2: log: unknown log destination 'file' (expected stderr or syslog)"
            in out), out
    assert f"{conf}:3: log_format: unknown log format 'xml' (expected text or json)" in out, out
    assert f"{conf}:4: syslog_socket: socket path 'dev/log' is not absolute" in out, out

    code, out = run_check("[global]\nsyslog_socket = /" + "x" * 120 + "\n\n" + mailbox, tmp_path)
    assert code == 1 and f"{conf}:2: syslog_socket: socket path too long" in out, out

    code, out = run_check("[global]\nlog = syslog\nlog_format = json\n"
                          "syslog_socket = /nonexistent/log\n\n" + mailbox, tmp_path)
    assert code == 0 and "configuration ok" in out, out


def test_a_reload_switches_the_format(sallyport, ca, tmp_path):
    ports = (free_port(), free_port())
    sp = sallyport(gateway_config(ca, tmp_path, ports, log_level="info", workers=1))
    one_session(ports[0], ca, tag="before")
    before = wait_for(lambda: [l for l in sp.log().splitlines() if "session listener=" in l],
                      what="the first session line")[0]
    assert re.match(r"^\S+Z sallyport\[info\]: session listener=submissions ", before), before

    sp.config.write_text(gateway_config(ca, tmp_path, ports, "log_format = json\n",
                                        log_level="info", workers=1))
    sp.proc.send_signal(signal.SIGHUP)
    sp.wait_log("reloaded: generation 2 ")
    one_session(ports[0], ca, tag="after")
    wait_for(lambda: '"event":"session"' in sp.log(), what="a json session line")
    assert sp.stop() == 0
    lines = sp.log().splitlines()
    reloaded = next(i for i, l in enumerate(lines) if "reloaded: generation 2 " in l)
    # From the reload on, every line is an object.
    after = json_lines("\n".join(lines[reloaded:]))
    assert after[0]["message"].startswith("reloaded: generation 2 ")
    [session] = [o for o in after if o.get("event") == "session"]
    assert session["gen"] == "2"
    assert lines[0].startswith("20") and not lines[0].startswith("{")
