#!/usr/bin/env python3
"""`make bench`: sallyport against HAProxy, sniproxy, nginx mail and a bare
splice(2) relay, in front of one backend (bench/benchd.c), driven by one load
generator (bench/loadgen.c). Python standard library only.

    make bench                      (builds everything, then runs this)
    python3 bench/run.py            (SALLYPORT=path, BENCH_BIN=dir of benchd/loadgen/splice_relay)

Prints a progress line per step (stderr) and one table at the end (stdout and
build/bench/results.txt; the raw figures go to build/bench/results.json).
Loopback only, fixed ports (BENCH_PORT_BASE, default 21000, + offsets) below
the ephemeral range, every step bounded in count and time; a step that fails
prints "failed: reason" in its cell and the run goes on. Every process it
starts is killed at the end, also on Ctrl-C.

With two or more CPUs the proxy under test is pinned to the last CPU and the
load generator and backend to the others (BENCH_PIN=0 turns that off); for
the "direct" column benchd moves to the proxy's CPU, so that every hop crosses
CPUs as it does through a proxy; in the "every core" rows (workers) the proxy
may use every CPU.
"""
import json
import os
import platform
import resource
import select
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SALLYPORT = os.environ.get("SALLYPORT", str(ROOT / "sallyport"))
BIN = Path(os.environ.get("BENCH_BIN", str(ROOT / "build" / "bench")))
OUT = ROOT / "build" / "bench"

N_GREET = 300          # sequential greetings (rows 1, 2, 4)
N_GREET_SLOW = 100     # for a proxy whose greeting takes ~40 ms (nginx 465)
N_STARTTLS = 300       # sequential STARTTLS setups (row 3)
N_IDLE = 2000          # idle sessions held at once (row 5)
N_WORKERS = 1500       # handshakes with 4 concurrent clients (row 8)
RAW_1 = 2 << 30        # passthrough bytes, 1 stream
RAW_4 = 512 << 20      # passthrough bytes per stream, 4 streams
TLS_1 = 1 << 30        # terminated bytes, 1 stream
BULK_LIMIT = 12        # seconds per throughput run at most
BULK_REPS = 3          # throughput runs per figure; the median is shown
BUDGET = 540           # seconds for the whole run; later steps are skipped
NOFILE = 20000         # RLIMIT_NOFILE wanted for every child

T0 = time.monotonic()


def loadavg():
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except (OSError, IndexError):
        return "?"


LOAD_AT_START = loadavg()
CHILDREN = []          # every Popen we started, killed at the end
RES = {}               # (row, column) -> cell text
RAW = {}               # (row, column) -> the numbers behind it
NOTES = []
CPUS = sorted(os.sched_getaffinity(0))
PIN = os.environ.get("BENCH_PIN", "1") != "0" and len(CPUS) >= 2
PROXY_CPUS = {CPUS[-1]} if PIN else set(CPUS)
LOAD_CPUS = set(CPUS[:-1]) if PIN else set(CPUS)


def progress(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def note(msg):
    if msg not in NOTES:
        NOTES.append(msg)


# ---------------------------------------------------------------- processes

def limits(cpus):
    """preexec_fn: raise RLIMIT_NOFILE to NOFILE (or the hard limit) and pin."""
    def fn():
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
        except (ValueError, OSError):
            pass
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:
            pass
    return fn


def spawn(cmd, log, cpus, **kw):
    f = open(log, "ab")
    p = subprocess.Popen([str(c) for c in cmd], stdout=kw.pop("stdout", f), stderr=f,
                         stdin=kw.pop("stdin", subprocess.DEVNULL), start_new_session=True,
                         preexec_fn=limits(cpus), **kw)
    f.close()
    CHILDREN.append(p)
    return p


def stop(p, grace=5):
    """Ends a process we started, and its process group (nginx workers,
    sniproxy's binder), by id."""
    if p is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if p.poll() is not None:
            break
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    try:  # the group may outlive its leader (a forked helper)
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if p in CHILDREN:
        CHILDREN.remove(p)


def stop_all_children():
    for p in list(CHILDREN):
        stop(p, grace=2)


def tree(pid):
    """pid and every descendant."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                st = Path(f"/proc/{d}/stat").read_text()
                parent[int(d)] = int(st[st.rindex(")") + 2:].split()[1])
            except (OSError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(c for c, pp in parent.items() if pp == p)
    return out


def status_kib(pids, key):
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def fd_count(pids):
    n = 0
    for p in pids:
        try:
            n += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return n


def cpu_seconds(pids):
    """CPU time (user+system) of the processes. /proc/PID/stat counts every
    thread, also exited ones, but in ticks; schedstat is in ns but only for
    live threads. Per process the larger of the two: exact for a
    single-threaded proxy, and right for splice_relay's short-lived threads."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in pids:
        try:
            st = Path(f"/proc/{p}/stat").read_text()
            f = st[st.rindex(")") + 2:].split()
            ticks = (int(f[11]) + int(f[12])) / tick
            ns = 0
            for t in os.listdir(f"/proc/{p}/task"):
                try:
                    ns += int(Path(f"/proc/{p}/task/{t}/schedstat").read_text().split()[0])
                except (OSError, ValueError, IndexError):
                    pass
            total += max(ticks, ns / 1e9)
        except (OSError, ValueError, IndexError):
            pass
    return total


def wait_ports(ports, proc, timeout=10):
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"exited with status {proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"port {port} not accepting after {timeout} s")
                time.sleep(0.05)


def pick_ports(count):
    """A base below the ephemeral range with base+1 .. base+count all free."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    first = int(os.environ.get("BENCH_PORT_BASE", "21000"))
    for base in range(first, low - count - 1, 1000):
        ok = True
        for off in range(1, count + 1):
            with socket.socket() as s:
                # As the servers do: TIME_WAIT leftovers do not count, a
                # listener does.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", base + off))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free block of ports below the ephemeral range")


# ---------------------------------------------------------------- load

def loadgen(args, timeout):
    """Runs one loadgen measurement; returns its JSON result or raises."""
    cmd = [str(BIN / "loadgen")] + [str(a) for a in args]
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=timeout, preexec_fn=limits(LOAD_CPUS))
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"loadgen timed out after {timeout} s")
    lines = [l for l in r.stdout.decode(errors="replace").splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"loadgen: no result ({r.stderr.decode(errors='replace').strip()[:100]})")
    res = json.loads(lines[-1])
    if res.get("ok", 0) == 0:
        raise RuntimeError(res.get("error") or "no connection succeeded")
    return res


def backend_stats(ports):
    try:
        with socket.create_connection(("127.0.0.1", ports["stats"]), timeout=5) as s:
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        return json.loads(data)
    except (OSError, ValueError):
        return None


def delta(before, after, key, sub=None):
    if not before or not after:
        return None
    if sub:
        return after[key][sub] - before[key][sub]
    return after[key] - before[key]


class Ctx:
    """What every step needs: ports, paths, the backend."""

    def __init__(self, tmp, base):
        self.tmp = tmp
        self.base = base
        self.b = {"plain": base + 1, "implicit": base + 2, "starttls": base + 3,
                  "rawbulk": base + 4, "stats": base + 5}
        self.cert = tmp / "cert.pem"
        self.key = tmp / "key.pem"
        self.pem = tmp / "combined.pem"
        self.benchd = None

    def port(self, off):
        return self.base + off

    def stats(self):
        return backend_stats(self.b)


def check(ctx, before, what, want, label):
    """Checks on the backend's counters that the proxy carried the traffic."""
    after = ctx.stats()
    key, sub = what
    got = delta(before, after, key, sub)
    if got is None:
        note(f"{label}: backend counters unavailable")
        return ""
    if got < want:
        note(f"{label}: the backend saw {got} {sub or key}, expected >= {want}")
        return " !"
    return ""


def budget_left():
    return time.monotonic() - T0 < BUDGET


def fmt(v, digits=2):
    return f"{v:.{digits}f}"


# ---------------------------------------------------------------- steps

def step(row, col, label, fn):
    """Runs one measurement; its cell becomes the result or failed: reason."""
    if not budget_left():
        RES[(row, col)] = "skipped"
        progress(f"{col}: {label}: skipped (time budget)")
        return None
    progress(f"{col}: {label} ...")
    try:
        cell, raw, msg = fn()
        RES[(row, col)] = cell
        RAW[(row, col)] = raw
        progress(f"{col}: {label}: {msg}")
        return raw
    except Exception as e:  # a failed step must not end the run
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        RES[(row, col)] = f"failed: {reason[:22]}"
        note(f"{col}: {label}: failed: {reason[:200]}")
        progress(f"{col}: {label}: FAILED: {e}")
        return None


def do_greeting(ctx, proxy, port, col, rows, backend_key, n=N_GREET, rate_row=None):
    """Rows 1/2 (and 4): n sequential implicit-TLS greetings."""
    def run():
        before = ctx.stats()
        pids = tree(proxy.pid) if proxy else tree(ctx.benchd.pid)
        cpu0 = cpu_seconds(pids)
        r = loadgen(["greeting", "-p", port, "-n", n, "-t", 120], timeout=150)
        cpu = cpu_seconds(pids) - cpu0
        mark = check(ctx, before, backend_key, r["ok"], f"{col} greeting") if backend_key else ""
        if r["failed"]:
            note(f"{col} greeting on {port}: {r['failed']} of {n} failed ({r['error']})")
        if 30 <= r["greet_p50"] <= 60:
            note(f"{col}: the greeting comes ~{r['greet_p50']:.0f} ms after the handshake, the "
                 "delayed-ACK timer: Nagle holds the greeting behind the unacknowledged TLS 1.3 "
                 "session tickets, i.e. no TCP_NODELAY on the client socket")
        RES[(rows[1], col)] = fmt(r["total_p50"]) + mark
        if rate_row:
            RES[(rate_row, col)] = f"{r['rate']:.0f}"
            RES[(rate_row + 'c', col)] = fmt(cpu * 1e3 / r["ok"], 3)
            RAW[(rate_row, col)] = r["rate"]
            RAW[(rate_row + 'c', col)] = cpu * 1e3 / r["ok"]
        return (f"{fmt(r['greet_p50'])} / {fmt(r['greet_p99'])}{mark}", r,
                f"greeting after handshake p50 {fmt(r['greet_p50'])} p99 {fmt(r['greet_p99'])} ms,"
                f" total p50 {fmt(r['total_p50'])} ms, {r['rate']:.0f}/s, server CPU "
                f"{cpu * 1e3 / r['ok']:.3f} ms/conn, ok {r['ok']}/{n}")
    return step(rows[0], col, f"greeting x{n} on {port}", run)


def do_starttls(ctx, port, col, row, backend_key):
    def run():
        before = ctx.stats()
        r = loadgen(["starttls", "-p", port, "-n", N_STARTTLS, "-t", 120], timeout=150)
        mark = check(ctx, before, backend_key, r["ok"], f"{col} starttls") if backend_key else ""
        if r["failed"]:
            note(f"{col} starttls on {port}: {r['failed']} failed ({r['error']})")
        return (f"{fmt(r['total_p50'])} / {fmt(r['total_p99'])}{mark}", r,
                f"setup p50 {fmt(r['total_p50'])} p99 {fmt(r['total_p99'])} ms, ok {r['ok']}")
    return step(row, col, f"STARTTLS setup x{N_STARTTLS} on {port}", run)


def do_bulk(ctx, proxy, mode, port, col, row, streams, per_stream, cpu_row=None):
    """Rows 6/7: BULK_REPS runs, the median MB/s; CPU per GB over all runs."""
    def run():
        before = ctx.stats()
        pids = tree(proxy.pid) if proxy else []
        cpu0 = cpu_seconds(pids)
        rates, total, capped = [], 0, False
        for _ in range(BULK_REPS):
            if rates and not budget_left():
                break
            r = loadgen([mode, "-p", port, "-c", streams, "-b", per_stream, "-t", BULK_LIMIT],
                        timeout=BULK_LIMIT + 20)
            rates.append(r["MBps"])
            total += r["bytes"]
            capped = capped or r["timed_out"]
        cpu = cpu_seconds(pids) - cpu0
        key = ("raw_bytes", None) if mode == "bulk-raw" else ("bulk_bytes", None)
        after = ctx.stats()
        legs = ""
        if mode == "bulk-tls" and before and after and proxy:
            c0, c1 = before.get("ciphers", {}), after.get("ciphers", {})
            used = [k for k in c1 if c1[k] > c0.get(k, 0)]
            if used:
                legs = f", backend leg {'/'.join(used)}"
                if row == "7b":
                    note(f"{col} TLS->TLS: the proxy's TLS to the backend negotiated "
                         f"{'/'.join(used)} (the client side is pinned to TLS_AES_128_GCM_SHA256)")
        mark = check(ctx, before, key, total, f"{col} {mode}")
        if capped:
            note(f"{col} {mode} x{streams}: time cap {BULK_LIMIT} s reached; "
                 "MB/s is bytes received / elapsed")
            mark += "*"
        med = sorted(rates)[len(rates) // 2]
        gb = total / 1e9
        if cpu_row and proxy and gb > 0:
            RES[(cpu_row, col)] = fmt(cpu / gb)
            RAW[(cpu_row, col)] = cpu / gb
        return (f"{med:.0f}{mark}", med,
                f"median {med:.0f} MB/s of {', '.join(f'{x:.0f}' for x in rates)} "
                f"({total / 1e6:.0f} MB in all"
                + (f", proxy CPU {cpu / gb:.2f} s/GB" if proxy and gb else "") + legs + ")")
    return step(row, col, f"{mode} {streams} stream(s) x{BULK_REPS} on {port}", run)


def do_idle(ctx, start, kind, port, col, row, backend_key):
    """Row 5: a fresh proxy; N sessions held; RSS and descriptors per session."""
    def run():
        proxy = start()
        try:
            # Warm up (one-time allocations), then the baseline.
            warm = idle_open(port, kind, 50)
            idle_close(warm)
            time.sleep(0.3)
            pids = tree(proxy.pid)
            base_rss, base_fd = status_kib(pids, "VmRSS"), fd_count(pids)
            before = ctx.stats()
            lg = idle_open(port, kind, N_IDLE)
            try:
                ok = lg.ready["ok"]
                time.sleep(0.5)
                pids = tree(proxy.pid)
                rss, fds = status_kib(pids, "VmRSS"), fd_count(pids)
                mark = check(ctx, before, backend_key, ok, f"{col} idle {kind}") \
                    if backend_key else ""
            finally:
                end = idle_close(lg)
            if end and end.get("dropped"):
                note(f"{col} idle {kind}: {end['dropped']} sessions dropped while held")
            kib, fdp = (rss - base_rss) / ok, (fds - base_fd) / ok
            peak = status_kib(tree(proxy.pid), "VmHWM")
            PEAK[col] = max(PEAK.get(col, 0), peak)
            fewer = f" (n={ok})" if ok < N_IDLE else ""
            if ok < N_IDLE:
                note(f"{col} idle {kind}: only {ok} of {N_IDLE} sessions opened "
                     f"({lg.ready.get('error')})")
            return (f"{kib:.1f} KiB, {fdp:.1f} fd{fewer}{mark}", (kib, fdp),
                    f"{ok} sessions: +{rss - base_rss} KiB RSS, +{fds - base_fd} fds -> "
                    f"{kib:.1f} KiB and {fdp:.2f} fds per session")
        finally:
            stop(proxy)
    return step(row, col, f"idle {kind} x{N_IDLE} on {port}", run)


PEAK = {}


class Idle:
    pass


def idle_open(port, kind, n):
    """Starts loadgen idle; returns once it reported how many it opened."""
    lg = Idle()
    lg.p = subprocess.Popen([str(BIN / "loadgen"), "idle", "-p", str(port), "-k", kind,
                             "-n", str(n), "-t", "60", "--hold", "120"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, preexec_fn=limits(LOAD_CPUS),
                            start_new_session=True)
    CHILDREN.append(lg.p)
    line = b""
    deadline = time.monotonic() + 75
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([lg.p.stdout], [], [], left)[0]:
            stop(lg.p)
            raise RuntimeError("loadgen idle: no ready line")
        chunk = os.read(lg.p.stdout.fileno(), 4096)
        if not chunk:
            stop(lg.p)
            raise RuntimeError("loadgen idle exited early")
        line += chunk
    lg.ready = json.loads(line.splitlines()[0])
    if lg.ready["ok"] == 0:
        idle_close(lg)
        raise RuntimeError(lg.ready.get("error") or "no session opened")
    return lg


def idle_close(lg):
    try:  # communicate() closes stdin: loadgen closes its sessions and exits
        out, _ = lg.p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        stop(lg.p)
        return None
    if lg.p in CHILDREN:
        CHILDREN.remove(lg.p)
    lines = [l for l in out.decode(errors="replace").splitlines() if l.startswith("{")]
    return json.loads(lines[-1]) if lines else None


class SNI_SMTP_SSL(smtplib.SMTP_SSL):
    """SMTP_SSL that sends SNI bench.test (passthrough routes by it)."""

    def _get_socket(self, host, port, timeout):
        sock = socket.create_connection((host, port), timeout)
        return self.context.wrap_socket(sock, server_hostname="bench.test")


def smtp_check_sni(col, port, backend_ctx):
    def run():
        before = backend_ctx.stats()
        tctx = ssl.create_default_context()
        tctx.check_hostname = False
        tctx.verify_mode = ssl.CERT_NONE
        s = SNI_SMTP_SSL("127.0.0.1", port, timeout=10, context=tctx)
        try:
            s.ehlo("bench")
            s.sendmail("a@bench.test", ["b@bench.test"], b"Subject: bench\r\n\r\nhello\r\n")
            s.quit()
        finally:
            s.close()
        got = delta(before, backend_ctx.stats(), "commands")
        if got is not None and got < 4:
            raise RuntimeError(f"the backend saw only {got} commands")
        return ("ok", None, f"full SMTP session ok (backend saw {got} commands)")
    return step("check", col, f"SMTP session check on {port} (implicit TLS)", run)


class SNI_SMTP(smtplib.SMTP):
    """SMTP whose STARTTLS sends SNI bench.test."""

    def starttls(self, context=None):
        self._host = "bench.test"
        return super().starttls(context=context)


def smtp_check_starttls(col, port, backend_ctx):
    def run():
        before = backend_ctx.stats()
        tctx = ssl.create_default_context()
        tctx.check_hostname = False
        tctx.verify_mode = ssl.CERT_NONE
        s = SNI_SMTP("127.0.0.1", port, timeout=10)
        try:
            s.ehlo("bench")
            s.starttls(context=tctx)
            s.ehlo("bench")
            s.sendmail("a@bench.test", ["b@bench.test"], b"Subject: bench\r\n\r\nhello\r\n")
            s.quit()
        finally:
            s.close()
        got = delta(before, backend_ctx.stats(), "commands")
        if got is not None and got < 4:
            raise RuntimeError(f"the backend saw only {got} commands")
        return ("ok", None, f"full SMTP session over STARTTLS ok (backend saw {got} commands)")
    return step("check", col, f"SMTP STARTTLS session check on {port}", run)


# ---------------------------------------------------------------- proxies

def started(col, name, start):
    """Starts a proxy instance; on failure every listed row gets the reason."""
    progress(f"{col}: starting {name}")
    return start()


def stop_proxy(col, p):
    if p is not None and p.poll() is None:
        PEAK[col] = max(PEAK.get(col, 0), status_kib(tree(p.pid), "VmHWM"))
    stop(p)


def log_tail(path, n=3):
    try:
        lines = Path(path).read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-n:])
    except OSError:
        return ""


def launch(ctx, col, name, cmd, ports, cpus=None):
    log = ctx.tmp / f"{name}.log"
    p = spawn(cmd, log, cpus or PROXY_CPUS)
    try:
        wait_ports(ports, p)
    except RuntimeError as e:
        stop(p)
        raise RuntimeError(f"{name}: {e}: {log_tail(log)}")
    time.sleep(0.1)
    return p


def sallyport_conf(ctx, name, listeners, endpoints, extra=""):
    lines = ["[global]", "log_level = warn", "max_connections = 10000", extra,
             "[certificate bench]", f"cert = {ctx.cert}", f"key = {ctx.key}"]
    for i, (service, port, mode) in enumerate(listeners):
        lines += [f"[listener l{i}]", f"service = {service}", f"address = 127.0.0.1:{port}",
                  f"mode = {mode}", "hostname = bench.test"]
    lines += ["[backend b]"] + [f"{k} = {v}" for k, v in endpoints.items()]
    if any("implicit" in v or "starttls" in v for v in endpoints.values()):
        lines.append("verify = no")
    lines += ["[route r]", "sni = bench.test", "backend = b", ""]
    conf = ctx.tmp / f"sallyport-{name}.conf"
    conf.write_text("\n".join(lines))
    return conf


def sallyport(ctx, name, listeners, endpoints, extra="", cpus=None):
    conf = sallyport_conf(ctx, name, listeners, endpoints, extra)
    return launch(ctx, "sallyport", f"sallyport-{name}", [SALLYPORT, "-c", conf],
                  [port for _, port, _ in listeners], cpus)


def workers_supported(ctx):
    conf = sallyport_conf(ctx, "workers-check", [("submissions", ctx.port(16), "terminate")],
                          {"submissions": f"127.0.0.1:{ctx.b['plain']} plain"}, "workers = 2")
    r = subprocess.run([SALLYPORT, "-t", "-c", str(conf)], capture_output=True, timeout=20)
    return r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace").strip()


def run_direct(ctx):
    """The loadgen straight to benchd, which runs on the proxy's CPU here, so
    that every hop crosses CPUs as it does through a proxy."""
    if PIN:
        os.sched_setaffinity(ctx.benchd.pid, PROXY_CPUS)
    try:
        run_direct_steps(ctx)
    finally:
        if PIN:
            os.sched_setaffinity(ctx.benchd.pid, LOAD_CPUS)


def run_direct_steps(ctx):
    col = "direct"
    b = ctx.b
    smtp_check_sni(col, b["implicit"], ctx)
    do_greeting(ctx, None, b["implicit"], col, ("1", "1t"), ("handshakes", None), rate_row="4")
    RES[("2", col)], RES[("2t", col)] = RES.get(("1", col)), RES.get(("1t", col))
    RAW[("2", col)] = RAW.get(("1", col))
    do_starttls(ctx, b["starttls"], col, "3", ("handshakes", None))
    RES[("3p", col)], RAW[("3p", col)] = RES.get(("3", col)), RAW.get(("3", col))
    do_bulk(ctx, None, "bulk-raw", b["rawbulk"], col, "6a", 1, RAW_1)
    do_bulk(ctx, None, "bulk-raw", b["rawbulk"], col, "6b", 4, RAW_4)
    do_bulk(ctx, None, "bulk-tls", b["implicit"], col, "7a", 1, TLS_1)
    RES[("7b", col)], RAW[("7b", col)] = RES.get(("7a", col)), RAW.get(("7a", col))


def section(col, rows, fn):
    """Runs fn(); if it raises (a proxy that does not start), the rows it
    has not filled say why."""
    try:
        fn()
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        progress(f"{col}: FAILED: {e}")
        note(f"{col}: failed: {reason[:200]}")
        for r in rows:
            RES.setdefault((r, col), f"failed: {reason[:22]}")


def run_sallyport(ctx):
    col = "sallyport"
    b = ctx.b
    plain = f"127.0.0.1:{b['plain']} plain"
    term = [("submissions", ctx.port(10), "terminate"), ("submission", ctx.port(11), "terminate")]
    term_ep = {"submissions": plain, "submission": plain}

    def start_a():
        return sallyport(ctx, "term-plain", term, term_ep)

    def part_a():
        p = start_a()
        try:
            smtp_check_sni(col, ctx.port(10), ctx)
            do_greeting(ctx, p, ctx.port(10), col, ("1", "1t"), ("accepted", "plain"),
                        rate_row="4")
            do_starttls(ctx, ctx.port(11), col, "3", ("accepted", "plain"))
            do_bulk(ctx, p, "bulk-tls", ctx.port(10), col, "7a", 1, TLS_1, cpu_row="7c")
        finally:
            stop_proxy(col, p)
    section(col, ["check", "1", "1t", "3", "4", "4c", "7a", "7c"], part_a)
    do_idle(ctx, start_a, "plain-greeted", ctx.port(11), col, "5b", None)
    do_idle(ctx, start_a, "tls-greeted", ctx.port(10), col, "5c", ("accepted", "plain"))

    def part_b():
        p = sallyport(ctx, "term-tls", [("submissions", ctx.port(12), "terminate")],
                      {"submissions": f"127.0.0.1:{b['implicit']} implicit"})
        try:
            do_bulk(ctx, p, "bulk-tls", ctx.port(12), col, "7b", 1, TLS_1)
        finally:
            stop_proxy(col, p)
    section(col, ["7b"], part_b)

    pt = [("submissions", ctx.port(13), "passthrough"), ("submission", ctx.port(14), "passthrough")]
    pt_ep = {"submissions": f"127.0.0.1:{b['implicit']} implicit",
             "submission": f"127.0.0.1:{b['starttls']} starttls"}

    def start_c():
        return sallyport(ctx, "passthrough", pt, pt_ep)

    def part_c():
        p = start_c()
        try:
            do_greeting(ctx, p, ctx.port(13), col, ("2", "2t"), ("handshakes", None))
            do_starttls(ctx, ctx.port(14), col, "3p", ("handshakes", None))
        finally:
            stop_proxy(col, p)
    section(col, ["2", "2t", "3p"], part_c)
    do_idle(ctx, start_c, "tls-greeted", ctx.port(13), col, "5a", ("handshakes", None))

    def part_d():
        p = sallyport(ctx, "passthrough-raw", [("submissions", ctx.port(15), "passthrough")],
                      {"submissions": f"127.0.0.1:{b['rawbulk']} implicit"})
        try:
            do_bulk(ctx, p, "bulk-raw", ctx.port(15), col, "6a", 1, RAW_1, cpu_row="6c")
            do_bulk(ctx, p, "bulk-raw", ctx.port(15), col, "6b", 4, RAW_4)
        finally:
            stop_proxy(col, p)
    section(col, ["6a", "6b", "6c"], part_d)

    ok, why = workers_supported(ctx)
    if not ok:
        RES[("8a", col)] = RES[("8b", col)] = "n/a"
        lines = why.splitlines() or ["?"]
        said = next((l for l in lines if "workers:" in l), lines[0])
        said = said.split("workers:", 1)[-1].split("(")[0].strip()
        note(f"sallyport: `sallyport -t` refuses `workers = 2` ({said}): row 8 n/a")
        progress("sallyport: workers = N not supported by this build: row 8 n/a")
        return
    for row, w, port in (("8a", 1, ctx.port(16)), ("8b", 2, ctx.port(17))):
        def part_w(row=row, w=w, port=port):
            p = sallyport(ctx, f"workers{w}", [("submissions", port, "terminate")],
                          {"submissions": plain}, f"workers = {w}", cpus=set(CPUS))
            try:
                def run():
                    r = loadgen(["greeting", "-p", port, "-n", N_WORKERS, "-c", 4, "-t", 20],
                                timeout=150)
                    return (f"{r['rate']:.0f}", r["rate"],
                            f"{r['rate']:.0f} handshakes/s with 4 clients, ok {r['ok']}")
                step(row, col, f"workers = {w}: greeting x{N_WORKERS}, 4 clients", run)
            finally:
                stop_proxy(col, p)
        section(col, [row], part_w)


def haproxy_cfg(ctx):
    b = ctx.b
    cfg = ctx.tmp / "haproxy.cfg"
    pt = ("    tcp-request inspect-delay 5s\n"
          "    tcp-request content accept if { req_ssl_hello_type 1 }\n")
    cfg.write_text(f"""global
    nbthread 1
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend term_plain
    bind 127.0.0.1:{ctx.port(30)} ssl crt {ctx.pem}
    default_backend be_plain
frontend term_tls
    bind 127.0.0.1:{ctx.port(31)} ssl crt {ctx.pem}
    default_backend be_implicit_tls
frontend pt_implicit
    bind 127.0.0.1:{ctx.port(32)}
{pt}    use_backend be_implicit if {{ req_ssl_sni -i bench.test }}
frontend pt_raw
    bind 127.0.0.1:{ctx.port(33)}
{pt}    use_backend be_raw if {{ req_ssl_sni -i bench.test }}
backend be_plain
    server s 127.0.0.1:{b['plain']}
backend be_implicit_tls
    server s 127.0.0.1:{b['implicit']} ssl verify none
backend be_implicit
    server s 127.0.0.1:{b['implicit']}
backend be_raw
    server s 127.0.0.1:{b['rawbulk']}
""")
    return cfg


def run_haproxy(ctx):
    col = "haproxy"
    cfg = haproxy_cfg(ctx)

    def start():
        return launch(ctx, col, "haproxy", ["haproxy", "-f", cfg, "-db"],
                      [ctx.port(o) for o in (30, 31, 32, 33)])

    def part():
        p = start()
        try:
            smtp_check_sni(col, ctx.port(30), ctx)
            do_greeting(ctx, p, ctx.port(30), col, ("1", "1t"), ("accepted", "plain"),
                        rate_row="4")
            do_greeting(ctx, p, ctx.port(32), col, ("2", "2t"), ("handshakes", None))
            do_bulk(ctx, p, "bulk-tls", ctx.port(30), col, "7a", 1, TLS_1, cpu_row="7c")
            do_bulk(ctx, p, "bulk-tls", ctx.port(31), col, "7b", 1, TLS_1)
            do_bulk(ctx, p, "bulk-raw", ctx.port(33), col, "6a", 1, RAW_1, cpu_row="6c")
            do_bulk(ctx, p, "bulk-raw", ctx.port(33), col, "6b", 4, RAW_4)
        finally:
            stop_proxy(col, p)
    section(col, ["check", "1", "1t", "2", "2t", "4", "4c", "6a", "6b", "6c", "7a", "7b", "7c"],
            part)
    do_idle(ctx, start, "tls-greeted", ctx.port(30), col, "5c", ("accepted", "plain"))
    do_idle(ctx, start, "tls-greeted", ctx.port(32), col, "5a", ("handshakes", None))
    note("haproxy: no STARTTLS rows (it cannot route STARTTLS by SNI); nbthread 1, "
         "Debian defaults otherwise (no splice options)")


def run_sniproxy(ctx):
    col = "sniproxy"
    b = ctx.b
    conf = ctx.tmp / "sniproxy.conf"
    user = "root" if os.geteuid() == 0 else ""
    conf.write_text((f"user {user}\n" if user else "") + f"""pidfile {ctx.tmp}/sniproxy.pid
error_log {{
    filename {ctx.tmp}/sniproxy-error.log
    priority notice
}}
listener 127.0.0.1:{ctx.port(40)} {{
    protocol tls
    table implicit
}}
listener 127.0.0.1:{ctx.port(41)} {{
    protocol tls
    table raw
}}
table implicit {{
    ^bench\\.test$ 127.0.0.1:{b['implicit']}
}}
table raw {{
    ^bench\\.test$ 127.0.0.1:{b['rawbulk']}
}}
""")

    def start():
        return launch(ctx, col, "sniproxy", ["sniproxy", "-f", "-c", conf, "-n", NOFILE],
                      [ctx.port(40), ctx.port(41)])

    def part():
        p = start()
        try:
            smtp_check_sni(col, ctx.port(40), ctx)
            do_greeting(ctx, p, ctx.port(40), col, ("2", "2t"), ("handshakes", None))
            do_bulk(ctx, p, "bulk-raw", ctx.port(41), col, "6a", 1, RAW_1, cpu_row="6c")
            do_bulk(ctx, p, "bulk-raw", ctx.port(41), col, "6b", 4, RAW_4)
        finally:
            stop_proxy(col, p)
    section(col, ["check", "2", "2t", "6a", "6b", "6c"], part)
    do_idle(ctx, start, "tls-greeted", ctx.port(40), col, "5a", ("handshakes", None))


def run_nginx(ctx):
    col = "nginx"
    b = ctx.b
    prefix = ctx.tmp / "nginx"
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    user = "user root;\n" if os.geteuid() == 0 else ""
    temps = "\n".join(f"    {k}_temp_path {prefix}/tmp_{k};"
                      for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf.write_text(f"""load_module /usr/lib/nginx/modules/ngx_mail_module.so;
{user}worker_processes 1;
worker_rlimit_nofile {NOFILE};
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 10000; }}
http {{
    access_log off;
{temps}
    server {{
        listen 127.0.0.1:{ctx.port(50)};
        location /auth {{
            add_header Auth-Status OK;
            add_header Auth-Server 127.0.0.1;
            add_header Auth-Port {b['plain']};
            return 204;
        }}
    }}
}}
mail {{
    auth_http 127.0.0.1:{ctx.port(50)}/auth;
    proxy on;
    xclient off;
    ssl_certificate {ctx.cert};
    ssl_certificate_key {ctx.key};
    server {{
        listen 127.0.0.1:{ctx.port(51)};
        protocol smtp;
        starttls on;
        smtp_auth none;
    }}
    server {{
        listen 127.0.0.1:{ctx.port(52)} ssl;
        protocol smtp;
        smtp_auth none;
    }}
}}
""")

    def start():
        return launch(ctx, col, "nginx",
                      ["nginx", "-p", prefix, "-e", prefix / "error.log", "-c", conf,
                       "-g", "daemon off; master_process on;"],
                      [ctx.port(o) for o in (50, 51, 52)])

    def part():
        p = start()
        try:
            smtp_check_starttls(col, ctx.port(51), ctx)
            do_starttls(ctx, ctx.port(51), col, "3", None)
            do_greeting(ctx, p, ctx.port(52), col, ("1", "1t"), None, n=N_GREET_SLOW,
                        rate_row="4")
        finally:
            stop_proxy(col, p)
    section(col, ["check", "3", "1", "1t", "4", "4c"], part)
    do_idle(ctx, start, "plain-greeted", ctx.port(51), col, "5b", None)
    do_idle(ctx, start, "tls-greeted", ctx.port(52), col, "5c", None)
    note("nginx: greets and answers EHLO itself and connects to the backend only at MAIL "
         "FROM, so its STARTTLS/greeting/idle rows involve no backend connection")


def run_splice(ctx):
    col = "splice"

    def part():
        p = launch(ctx, col, "splice_relay",
                   [BIN / "splice_relay", ctx.port(60), ctx.b["rawbulk"]], [ctx.port(60)])
        try:
            do_bulk(ctx, p, "bulk-raw", ctx.port(60), col, "6a", 1, RAW_1, cpu_row="6c")
            do_bulk(ctx, p, "bulk-raw", ctx.port(60), col, "6b", 4, RAW_4)
        finally:
            stop_proxy(col, p)
    section(col, ["6a", "6b", "6c"], part)


# ---------------------------------------------------------------- the table

COLS = ["direct", "sallyport", "haproxy", "sniproxy", "nginx", "splice"]
ROWS = [
    ("check", "0 full SMTP session through it"),
    ("1", "1 greeting after handshake, terminate, p50/p99 ms"),
    ("1t", "  connect to greeting, terminate, p50 ms"),
    ("2", "2 greeting after handshake, passthrough, p50/p99 ms"),
    ("2t", "  connect to greeting, passthrough, p50 ms"),
    ("3", "3 STARTTLS setup, terminate, p50/p99 ms"),
    ("3p", "  STARTTLS setup, passthrough, p50/p99 ms"),
    ("4", "4 handshakes/s, 1 client, terminate"),
    ("4c", "  server CPU per handshake, ms"),
    ("5a", "5 idle passthrough, per session"),
    ("5b", "  idle STARTTLS cleartext phase, per session"),
    ("5c", "  idle terminated, per session"),
    ("5d", "  peak RSS, MiB"),
    ("6a", "6 passthrough MB/s, 1 stream"),
    ("6b", "  passthrough MB/s, 4 streams"),
    ("6c", "  proxy CPU s/GB, passthrough 1 stream"),
    ("7a", "7 terminated TLS->plain MB/s, 1 stream"),
    ("7b", "  terminated TLS->TLS MB/s, 1 stream"),
    ("7c", "  proxy CPU s/GB, TLS->plain"),
    ("8a", "8 handshakes/s, 4 clients, workers=1"),
    ("8b", "  handshakes/s, 4 clients, workers=2"),
]


def ratio(row, num, den, key=None, target=None, higher=True):
    a, b = RAW.get((row, num)), RAW.get((row, den))
    if key:
        a = a.get(key) if isinstance(a, dict) else None
        b = b.get(key) if isinstance(b, dict) else None
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or b <= 0:
        return f"{num}/{den} n/a"
    r = a / b
    text = f"{num}/{den} {r:.2f}x"
    if target is not None:
        met = r >= target if higher else r <= target
        text += f" ({'>=' if higher else '<='}{target}x {'met' if met else 'MISSED'})"
    return text


def idle_target(row, kib, fds=None):
    v = RAW.get((row, "sallyport"))
    if not v:
        return "target n/a"
    met = v[0] <= kib and (fds is None or v[1] <= fds + 0.05)
    want = f"<={kib} KiB" + (f", {fds} fd" if fds else "")
    return f"target {want}: {'met' if met else 'MISSED'}"


def ratios():
    sp = "sallyport"
    return {
        "1": ratio("1", sp, "haproxy", "greet_p50", None, higher=False),
        "2": ratio("2", sp, "haproxy", "greet_p50", None, higher=False),
        "3": ratio("3", sp, "direct", "total_p50", 1.25, higher=False),
        "3p": ratio("3p", sp, "direct", "total_p50", 1.25, higher=False),
        "4": ratio("4", sp, "haproxy"),
        "5a": idle_target("5a", 4, 2),
        "5b": idle_target("5b", 8),
        "5c": idle_target("5c", 16),
        "6a": ratio("6a", sp, "splice", None, 0.9) + "; " + ratio("6a", sp, "haproxy", None, 1.5),
        "6b": ratio("6b", sp, "splice", None, 0.9) + "; " + ratio("6b", sp, "haproxy", None, 1.5),
        "7a": ratio("7a", sp, "haproxy", None, 1.0),
        "7b": ratio("7b", sp, "haproxy", None, 1.0),
        "8b": (f"workers 2/1 {RAW[('8b', sp)] / RAW[('8a', sp)]:.2f}x"
               if isinstance(RAW.get(("8a", sp)), float) and RAW[("8a", sp)] > 0
               and isinstance(RAW.get(("8b", sp)), float) else ""),
    }


def version(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=10)
        out = (r.stdout + r.stderr).decode(errors="replace").strip().splitlines()
        return out[0].strip() if out else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not found"


def machine():
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pin = (f"proxy pinned to CPU {sorted(PROXY_CPUS)}, loadgen+benchd to CPU {sorted(LOAD_CPUS)}"
           " (direct: benchd on the proxy's CPU)" if PIN else "no CPU pinning")
    return [
        f"machine:  {model}, {os.cpu_count()} cores, Linux {platform.release()}; {pin}",
        f"load:     {LOAD_AT_START} at the start, {loadavg()} at the end (1-minute load "
        "average; anything else running on the machine skews the figures)",
        f"openssl:  {version(['openssl', 'version'])}",
        f"proxies:  sallyport {version([SALLYPORT, '-V'])}; {version(['haproxy', '-v'])}; "
        f"{version(['nginx', '-v'])}; {version(['sniproxy', '-V'])}",
    ]


def table():
    for col in COLS:
        if col in PEAK and PEAK[col]:
            RES[("5d", col)] = f"{PEAK[col] / 1024:.1f}"
    rat = ratios()
    head = ["figure"] + COLS + ["ratio (target)"]
    rows = []
    for key, label in ROWS:
        rows.append([label] + [RES.get((key, c)) or "n/a" for c in COLS] + [rat.get(key, "")])
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head) - 1)]
    out = []
    for r in [head] + rows:
        out.append("  ".join(r[i].ljust(widths[i]) if i == 0 else r[i].rjust(widths[i])
                             for i in range(len(widths))) + "  " + r[-1])
    out.insert(1, "-" * len(out[0]))
    return out


def write_report(lines):
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.txt").write_text("\n".join(lines) + "\n")
    raw = {f"{r}|{c}": v for (r, c), v in RAW.items()}
    (OUT / "results.json").write_text(json.dumps({"cells": {f"{r}|{c}": v for (r, c), v in
                                                            RES.items()}, "raw": raw},
                                                 indent=1, default=str))


# ---------------------------------------------------------------- main

def main():
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for prog in ("benchd", "loadgen", "splice_relay"):
        if not (BIN / prog).exists():
            sys.exit(f"bench: {BIN / prog} missing (run `make bench`)")
    if not Path(SALLYPORT).exists():
        sys.exit(f"bench: {SALLYPORT} missing (run `make`)")
    tmp = Path(tempfile.mkdtemp(prefix="sallyport-bench-"))
    try:
        base = pick_ports(60)
        ctx = Ctx(tmp, base)
        progress(f"ports {base + 1}..{base + 60} on 127.0.0.1, scratch {tmp}")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=bench.test",
                        "-addext", "subjectAltName=DNS:bench.test", "-keyout", str(ctx.key),
                        "-out", str(ctx.cert)], check=True, capture_output=True, timeout=30)
        ctx.pem.write_bytes(ctx.cert.read_bytes() + ctx.key.read_bytes())
        b = ctx.b
        ctx.benchd = spawn([BIN / "benchd", "--cert", ctx.cert, "--key", ctx.key,
                            "--plain", b["plain"], "--implicit", b["implicit"],
                            "--starttls", b["starttls"], "--rawbulk", b["rawbulk"],
                            "--stats", b["stats"]], tmp / "benchd.log", LOAD_CPUS)
        wait_ports(b.values(), ctx.benchd)
        progress(f"benchd up (pid {ctx.benchd.pid})")
        for col, fn in (("direct", run_direct), ("sallyport", run_sallyport),
                        ("haproxy", run_haproxy), ("sniproxy", run_sniproxy),
                        ("nginx", run_nginx), ("splice", run_splice)):
            section(col, [], lambda fn=fn: fn(ctx))
        final = ctx.stats()
        if final:
            progress(f"benchd totals: {json.dumps(final)}")
        for log in sorted(tmp.glob("sallyport-*.log")):
            text = log.read_text(errors="replace").strip()
            if text:
                note(f"{log.name}: {len(text.splitlines())} log line(s), e.g. "
                     f"{text.splitlines()[0][:120]}")
        lines = machine() + [""] + table() + [""]
        lines += [f"total time {time.monotonic() - T0:.0f} s; MB = 10^6 bytes; "
                  "'!' = backend counters did not confirm the traffic; "
                  "'*' = time cap reached"]
        lines += ["notes:"] + [f"  - {n}" for n in NOTES]
        print("\n".join(lines), flush=True)
        write_report(lines)
        logs = OUT / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for f in list(tmp.glob("*.log")) + list(tmp.glob("*.conf")) + list(tmp.glob("*.cfg")) \
                + list((tmp / "nginx").glob("*")):
            if f.is_file():
                (logs / f.name).write_bytes(f.read_bytes())
        progress(f"done in {time.monotonic() - T0:.0f} s; table in {OUT / 'results.txt'}")
    finally:
        stop_all_children()
        if os.environ.get("BENCH_KEEP") != "1":
            subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # main() has already stopped every child
        sys.exit("bench: interrupted")
