/* loadgen — the load generator of `make bench` (OpenSSL + libev, one thread).
 *
 *   loadgen MODE -p PORT [-H 127.0.0.1] [-s bench.test] [-n N] [-c C]
 *                [-b BYTES] [-t SECONDS] [-T SECONDS] [-k KIND] [--hold SECONDS]
 *
 * Modes (each connection runs a small script of steps, below):
 *   greeting  N connections, C at a time (default 1: sequential): implicit TLS
 *             handshake, then the "220" greeting inside TLS. Reports
 *             connect->handshake done, handshake done->greeting, and the
 *             total (p50/p90/p99 ms), and connections per second.
 *   starttls  N SMTP STARTTLS setups, C at a time (default 1): greeting, EHLO,
 *             STARTTLS, 220, TLS handshake, EHLO. Reports the setup time.
 *   idle      opens N sessions (C at a time, default 100) of KIND and holds
 *             them: plain-greeted (TCP, the cleartext "220") or tls-greeted
 *             (implicit TLS, the "220" inside TLS). Prints one JSON line with
 *             the count that succeeded, then holds until stdin closes, SIGTERM
 *             or --hold seconds (default 120), and prints a second line.
 *   bulk-raw  C streams (default 1): each sends a real TLS ClientHello record
 *             (made by OpenSSL through a memory BIO, SNI -s) and counts the
 *             bytes that come back up to BYTES per stream. The backend
 *             (benchd rawbulk) reads that one record and sends the bytes; the
 *             size rides in the ClientHello's legacy_session_id ("BENCHSZ:"
 *             and 8 bytes big endian), which passthrough proxies forward as is.
 *   bulk-tls  C streams: implicit TLS, greeting, "BULK BYTES", counts BYTES.
 *
 * TLS: 1.2 or newer, TLS 1.3 suite pinned to TLS_AES_128_GCM_SHA256 (1.2:
 * ECDHE-ECDSA-AES128-GCM-SHA256), no verification, no session reuse.
 * Every client socket has TCP_NODELAY. Every step is bounded by -T seconds
 * of inactivity (default 10) and the whole run by -t seconds (default 60).
 * Output: one JSON line on stdout (MB/s are 10^6 bytes per second).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bench_io.h"

enum op { OP_CONNECT, OP_TLS, OP_REPLY, OP_SEND, OP_SEND_HELLO, OP_READ_BYTES, OP_HOLD, OP_END };
static const char *const op_names[] = {"connect", "tls",       "reply", "send",
                                       "hello",   "read-bulk", "hold",  "end"};

struct step {
    enum op op;
    int code;         /* OP_REPLY: the expected reply code */
    const char *text; /* OP_SEND: the command (NULL: the BULK command) */
};

static const struct step script_greeting[] = {
    {OP_CONNECT, 0, NULL}, {OP_TLS, 0, NULL}, {OP_REPLY, 220, NULL}, {OP_END, 0, NULL}};
static const struct step script_starttls[] = {
    {OP_CONNECT, 0, NULL}, {OP_REPLY, 220, NULL},          {OP_SEND, 0, "EHLO bench\r\n"},
    {OP_REPLY, 250, NULL}, {OP_SEND, 0, "STARTTLS\r\n"},   {OP_REPLY, 220, NULL},
    {OP_TLS, 0, NULL},     {OP_SEND, 0, "EHLO bench\r\n"}, {OP_REPLY, 250, NULL},
    {OP_END, 0, NULL}};
static const struct step script_plain_greeted[] = {
    {OP_CONNECT, 0, NULL}, {OP_REPLY, 220, NULL}, {OP_HOLD, 0, NULL}};
static const struct step script_tls_greeted[] = {
    {OP_CONNECT, 0, NULL}, {OP_TLS, 0, NULL}, {OP_REPLY, 220, NULL}, {OP_HOLD, 0, NULL}};
static const struct step script_bulk_raw[] = {
    {OP_CONNECT, 0, NULL}, {OP_SEND_HELLO, 0, NULL}, {OP_READ_BYTES, 0, NULL}, {OP_END, 0, NULL}};
static const struct step script_bulk_tls[] = {{OP_CONNECT, 0, NULL},    {OP_TLS, 0, NULL},
                                              {OP_REPLY, 220, NULL},    {OP_SEND, 0, NULL},
                                              {OP_READ_BYTES, 0, NULL}, {OP_END, 0, NULL}};

#define IN_MAX 1024

struct sess {
    ev_io io;
    ev_timer timer;
    int fd;
    SSL *ssl;
    int pc;
    int held, done;
    size_t inlen, off;
    uint64_t got;
    double t0, t_tls, t_greet, t_end;
    char in[IN_MAX];
};

/* The run: options, progress and results. */
static struct {
    const char *mode, *host, *sni, *kind;
    int port, n, conc;
    uint64_t bytes;
    double limit, step_timeout, hold;
    const struct step *script;
    struct ev_loop *loop;
    SSL_CTX *ctx;
    struct sockaddr_in addr;
    struct sess *s;
    int started, active, finished, ok, failed, held, dropped, stopping, timed_out, idle_ready;
    double t_first, t_last;
    char error[256];
    unsigned char hello[4096];
    size_t hello_len;
    char bulk_cmd[64];
    double *m_hs, *m_greet, *m_total;
    int nm;
    ev_timer limit_timer; /* the run's time limit, then the idle hold limit */
} g;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void note_error(const struct sess *s, const char *what)
{
    if (g.error[0])
        return;
    char ssl_err[120] = "";
    unsigned long e = ERR_peek_error();
    if (e)
        ERR_error_string_n(e, ssl_err, sizeof ssl_err);
    snprintf(g.error, sizeof g.error, "%s in step %s%s%s", what, op_names[g.script[s->pc].op],
             ssl_err[0] ? ": " : "", ssl_err);
    for (char *p = g.error; *p; p++) /* it goes into a JSON string */
        if (*p < 0x20 || *p == '"' || *p == '\\' || *p > 0x7e)
            *p = '?';
}

static void start_more(void);

static void sess_close(struct sess *s)
{
    ev_io_stop(g.loop, &s->io);
    ev_timer_stop(g.loop, &s->timer);
    if (s->ssl)
        SSL_free(s->ssl);
    s->ssl = NULL;
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
}

static void check_idle_ready(void);

static int is_idle(void)
{
    return g.script == script_plain_greeted || g.script == script_tls_greeted;
}

/* A session ended (ok or not): record it, start the next one. */
static void finish(struct sess *s, int ok)
{
    if (s->done)
        return;
    s->done = 1;
    s->t_end = now();
    if (s->t_end > g.t_last)
        g.t_last = s->t_end;
    sess_close(s);
    ERR_clear_error();
    g.active--;
    g.finished++;
    if (ok) {
        g.ok++;
        g.m_hs[g.nm] = (s->t_tls - s->t0) * 1e3;
        g.m_greet[g.nm] = (s->t_greet - s->t_tls) * 1e3;
        g.m_total[g.nm] = ((g.script == script_starttls ? s->t_end : s->t_greet) - s->t0) * 1e3;
        g.nm++;
    } else {
        g.failed++;
    }
    if (is_idle()) {
        check_idle_ready(); /* idle runs end by stdin, a signal or --hold */
        start_more();
        return;
    }
    start_more();
    if (g.active == 0 && (g.finished == g.n || g.stopping))
        ev_break(g.loop, EVBREAK_ALL);
}

static void fail(struct sess *s, const char *what)
{
    note_error(s, what);
    finish(s, 0);
}

static void wait_for(struct sess *s, int events)
{
    if (!(s->io.events == events && ev_is_active(&s->io))) {
        ev_io_stop(g.loop, &s->io);
        ev_io_set(&s->io, s->fd, events);
        ev_io_start(g.loop, &s->io);
    }
}

static ssize_t s_read(struct sess *s, void *buf, size_t len, int *ev)
{
    return io_read(s->fd, s->ssl, buf, len, ev);
}

static ssize_t s_write(struct sess *s, const void *buf, size_t len, int *ev)
{
    return io_write(s->fd, s->ssl, buf, len, ev);
}

/* Length of a complete SMTP reply at the start of buf (multi-line aware:
 * "ddd-" lines continue, "ddd " ends), 0 if incomplete; *code is its code. */
static size_t reply_len(const char *buf, size_t len, int *code)
{
    size_t pos = 0;
    while (pos < len) {
        const char *nl = memchr(buf + pos, '\n', len - pos);
        if (!nl)
            return 0;
        size_t line = (size_t)(nl - (buf + pos)) + 1;
        int last = line < 5 || buf[pos + 3] != '-';
        if (last) {
            *code = atoi(buf + pos);
            return pos + line;
        }
        pos += line;
    }
    return 0;
}

/* Runs a session's script as far as it goes without blocking. */
static void advance(struct sess *s)
{
    static char big[262144];
    int ev = 0;
    for (;;) {
        const struct step *st = &g.script[s->pc];
        ssize_t n;
        switch (st->op) {
        case OP_CONNECT:
            if (s->fd < 0) {
                s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                if (s->fd < 0) {
                    fail(s, strerror(errno));
                    return;
                }
                int one = 1;
                setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                if (connect(s->fd, (struct sockaddr *)&g.addr, sizeof g.addr) < 0) {
                    if (errno != EINPROGRESS) {
                        fail(s, strerror(errno));
                        return;
                    }
                    ev = EV_WRITE;
                    goto wait;
                }
            } else {
                int err = 0;
                socklen_t l = sizeof err;
                getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &l);
                if (err) {
                    fail(s, strerror(err));
                    return;
                }
            }
            s->pc++;
            continue;
        case OP_TLS: {
            if (!s->ssl) {
                s->ssl = SSL_new(g.ctx);
                if (!s->ssl || !SSL_set_fd(s->ssl, s->fd) ||
                    !SSL_set_tlsext_host_name(s->ssl, g.sni)) {
                    fail(s, "SSL_new");
                    return;
                }
                SSL_set_connect_state(s->ssl);
            }
            int r = SSL_do_handshake(s->ssl);
            if (r != 1) {
                int e = SSL_get_error(s->ssl, r);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                    ev = e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE;
                    goto wait;
                }
                fail(s, "TLS handshake failed");
                return;
            }
            if (s->t_tls == 0)
                s->t_tls = now();
            s->pc++;
            continue;
        }
        case OP_REPLY: {
            int code = 0;
            size_t len = reply_len(s->in, s->inlen, &code);
            if (len) {
                if (code != st->code) {
                    char why[96];
                    snprintf(why, sizeof why, "expected %d, got '%.40s'", st->code, s->in);
                    fail(s, why);
                    return;
                }
                memmove(s->in, s->in + len, s->inlen - len);
                s->inlen -= len;
                if (s->t_greet == 0)
                    s->t_greet = now();
                s->pc++;
                continue;
            }
            if (s->inlen >= IN_MAX - 1) {
                fail(s, "reply too long");
                return;
            }
            n = s_read(s, s->in + s->inlen, IN_MAX - s->inlen - 1, &ev);
            if (n == -1)
                goto wait;
            if (n <= 0) {
                fail(s, n == 0 ? "EOF waiting for a reply" : "read error waiting for a reply");
                return;
            }
            s->inlen += (size_t)n;
            s->in[s->inlen] = '\0';
            ev_timer_again(g.loop, &s->timer);
            continue;
        }
        case OP_SEND:
        case OP_SEND_HELLO: {
            const char *text = st->op == OP_SEND_HELLO ? (const char *)g.hello
                               : st->text              ? st->text
                                                       : g.bulk_cmd;
            size_t len = st->op == OP_SEND_HELLO ? g.hello_len : strlen(text);
            n = s_write(s, text + s->off, len - s->off, &ev);
            if (n == -1)
                goto wait;
            if (n < 0) {
                fail(s, "write error");
                return;
            }
            s->off += (size_t)n;
            if (s->off == len) {
                s->off = 0;
                s->pc++;
            }
            continue;
        }
        case OP_READ_BYTES: {
            s->got += s->inlen; /* bytes that came with the reply */
            s->inlen = 0;
            size_t budget = 1 << 20; /* then yield to the other streams */
            while (s->got < g.bytes && budget > 0) {
                uint64_t left = g.bytes - s->got;
                n = s_read(s, big, left < sizeof big ? (size_t)left : sizeof big, &ev);
                if (n == -1) {
                    ev_timer_again(g.loop, &s->timer);
                    goto wait;
                }
                if (n <= 0) {
                    fail(s, n == 0 ? "EOF before all bytes" : "read error in bulk");
                    return;
                }
                s->got += (uint64_t)n;
                budget = (size_t)n < budget ? budget - (size_t)n : 0;
            }
            ev_timer_again(g.loop, &s->timer);
            if (s->got < g.bytes) {
                /* Budget spent: come back after the other streams had their
                 * turn (bytes may wait inside OpenSSL, not in the socket). */
                wait_for(s, EV_READ);
                ev_feed_event(g.loop, &s->io, EV_READ);
                return;
            }
            s->pc++;
            continue;
        }
        case OP_HOLD:
            ev_timer_stop(g.loop, &s->timer);
            s->held = 1;
            g.held++;
            g.active--;
            g.finished++;
            g.ok++;
            check_idle_ready();
            start_more();
            wait_for(s, EV_READ); /* to notice a session the proxy drops */
            return;
        case OP_END:
            finish(s, 1);
            return;
        }
    }
wait:
    wait_for(s, ev);
}

/* A held session became readable: the proxy closed it (or sent something). */
static void held_read(struct sess *s)
{
    char buf[512];
    int ev = 0;
    ssize_t n = s_read(s, buf, sizeof buf, &ev);
    if (n == -1) {
        wait_for(s, ev);
        return;
    }
    if (n > 0)
        return;
    g.dropped++;
    g.held--;
    s->held = 0;
    s->done = 1;
    sess_close(s);
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    struct sess *s = (struct sess *)w;
    if (s->held)
        held_read(s);
    else
        advance(s);
}

static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct sess *s = (struct sess *)((char *)t - offsetof(struct sess, timer));
    fail(s, "timeout");
}

static void start_more(void)
{
    while (!g.stopping && g.active < g.conc && g.started < g.n) {
        struct sess *s = &g.s[g.started++];
        s->fd = -1;
        g.active++;
        ev_init(&s->io, io_cb);
        ev_init(&s->timer, timer_cb);
        s->timer.repeat = g.step_timeout;
        ev_timer_again(g.loop, &s->timer);
        s->t0 = now();
        if (g.t_first == 0)
            g.t_first = s->t0;
        advance(s);
    }
}

static void check_idle_ready(void)
{
    if (g.idle_ready || g.finished < g.n)
        return;
    g.idle_ready = 1;
    printf("{\"mode\":\"idle\",\"kind\":\"%s\",\"n\":%d,\"ok\":%d,\"failed\":%d,"
           "\"seconds\":%.3f,\"error\":\"%s\"}\n",
           g.kind, g.n, g.ok, g.failed, now() - g.t_first, g.error);
    fflush(stdout);
    ev_timer_stop(g.loop, &g.limit_timer); /* from now on: the hold limit */
    ev_timer_set(&g.limit_timer, g.hold, 0.);
    ev_timer_start(g.loop, &g.limit_timer);
}

static void stop_all(void)
{
    if (!g.error[0] && g.finished < g.n)
        snprintf(g.error, sizeof g.error, "stopped after %d of %d sessions", g.finished, g.n);
    g.stopping = 1;
    for (int i = 0; i < g.started; i++)
        if (!g.s[i].done && !g.s[i].held)
            finish(&g.s[i], 0);
    ev_break(g.loop, EVBREAK_ALL);
}

static void limit_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)t;
    (void)revents;
    if (g.idle_ready) { /* --hold expired */
        ev_break(g.loop, EVBREAK_ALL);
        return;
    }
    g.timed_out = 1;
    if (!g.error[0])
        snprintf(g.error, sizeof g.error, "time limit %.0f s reached", g.limit);
    if (!is_idle()) {
        stop_all();
        return;
    }
    /* idle: report (and hold) what was opened so far */
    g.stopping = 1;
    for (int i = 0; i < g.started; i++)
        if (!g.s[i].done && !g.s[i].held)
            finish(&g.s[i], 0);
    g.finished = g.n;
    check_idle_ready();
}

static void stdin_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    char buf[256];
    ssize_t n = read(w->fd, buf, sizeof buf);
    if (n <= 0 && !(n < 0 && errno == EINTR)) {
        ev_io_stop(loop, w);
        if (g.idle_ready)
            ev_break(loop, EVBREAK_ALL);
        else
            stop_all();
    }
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)w;
    (void)revents;
    if (g.idle_ready)
        ev_break(loop, EVBREAK_ALL);
    else
        stop_all();
}

/* A real ClientHello for the SNI, from OpenSSL through a memory BIO, with the
 * wanted size in its legacy_session_id (see the top of the file). */
static int make_hello(void)
{
    SSL *ssl = SSL_new(g.ctx);
    BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
    if (!ssl || !rbio || !wbio)
        return -1;
    SSL_set_bio(ssl, rbio, wbio);
    SSL_set_tlsext_host_name(ssl, g.sni);
    SSL_set_connect_state(ssl);
    SSL_do_handshake(ssl); /* wants to read: the ClientHello is in wbio */
    char *data;
    long len = BIO_get_mem_data(wbio, &data);
    int ok = len > 5 && len <= (long)sizeof g.hello && (unsigned char)data[0] == 0x16 &&
             len == 5 + ((unsigned char)data[3] << 8 | (unsigned char)data[4]);
    if (ok) {
        memcpy(g.hello, data, (size_t)len);
        g.hello_len = (size_t)len;
        if (g.hello[43] >= 16) { /* legacy_session_id: 32 bytes in TLS 1.3 */
            memcpy(g.hello + 44, "BENCHSZ:", 8);
            for (int i = 0; i < 8; i++)
                g.hello[52 + i] = (unsigned char)(g.bytes >> (56 - 8 * i));
        } else {
            ok = 0;
        }
    }
    SSL_free(ssl);
    ERR_clear_error();
    return ok ? 0 : -1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double q)
{
    if (n == 0)
        return -1;
    int i = (int)ceil(q * n) - 1;
    return v[i < 0 ? 0 : i >= n ? n - 1 : i];
}

static void print_pcts(const char *name, double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    printf(",\"%s_p50\":%.3f,\"%s_p90\":%.3f,\"%s_p99\":%.3f", name, pct(v, n, 0.5), name,
           pct(v, n, 0.9), name, pct(v, n, 0.99));
}

static void usage(void)
{
    fprintf(stderr, "usage: loadgen greeting|starttls|idle|bulk-raw|bulk-tls -p PORT [-H HOST]\n"
                    "       [-s SNI] [-n N] [-c CONC] [-b BYTES] [-t LIMIT_S] [-T STEP_S]\n"
                    "       [-k plain-greeted|tls-greeted] [--hold SECONDS]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    g.mode = argv[1];
    g.host = "127.0.0.1";
    g.sni = "bench.test";
    g.kind = "tls-greeted";
    g.n = 1;
    g.conc = 0;
    g.bytes = 1 << 20;
    g.limit = 60;
    g.step_timeout = 10;
    g.hold = 120;
    static const struct option longs[] = {{"hold", required_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};
    int opt;
    optind = 2;
    while ((opt = getopt_long(argc, argv, "p:H:s:n:c:b:t:T:k:", longs, NULL)) != -1) {
        switch (opt) {
        case 'p':
            g.port = atoi(optarg);
            break;
        case 'H':
            g.host = optarg;
            break;
        case 's':
            g.sni = optarg;
            break;
        case 'n':
            g.n = atoi(optarg);
            break;
        case 'c':
            g.conc = atoi(optarg);
            break;
        case 'b':
            g.bytes = strtoull(optarg, NULL, 10);
            break;
        case 't':
            g.limit = atof(optarg);
            break;
        case 'T':
            g.step_timeout = atof(optarg);
            break;
        case 'k':
            g.kind = optarg;
            break;
        case 'h':
            g.hold = atof(optarg);
            break;
        default:
            usage();
        }
    }
    int idle = 0;
    if (!strcmp(g.mode, "greeting")) {
        g.script = script_greeting;
    } else if (!strcmp(g.mode, "starttls")) {
        g.script = script_starttls;
    } else if (!strcmp(g.mode, "idle")) {
        idle = 1;
        if (!strcmp(g.kind, "plain-greeted"))
            g.script = script_plain_greeted;
        else if (!strcmp(g.kind, "tls-greeted"))
            g.script = script_tls_greeted;
        else
            usage();
    } else if (!strcmp(g.mode, "bulk-raw") || !strcmp(g.mode, "bulk-tls")) {
        g.script = g.mode[5] == 'r' ? script_bulk_raw : script_bulk_tls;
        if (g.conc <= 0)
            g.conc = 1;
        g.n = g.conc; /* one connection per stream */
    } else {
        usage();
    }
    if (g.conc <= 0)
        g.conc = idle ? 100 : 1;
    if (g.port <= 0 || g.n <= 0)
        usage();
    g.addr.sin_family = AF_INET;
    g.addr.sin_port = htons((uint16_t)g.port);
    if (inet_pton(AF_INET, g.host, &g.addr.sin_addr) != 1)
        usage();
    snprintf(g.bulk_cmd, sizeof g.bulk_cmd, "BULK %llu\r\n", (unsigned long long)g.bytes);

    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    g.ctx = SSL_CTX_new(TLS_client_method());
    if (!g.ctx || !SSL_CTX_set_min_proto_version(g.ctx, TLS1_2_VERSION) ||
        !SSL_CTX_set_ciphersuites(g.ctx, "TLS_AES_128_GCM_SHA256") ||
        !SSL_CTX_set_cipher_list(g.ctx, "ECDHE-ECDSA-AES128-GCM-SHA256")) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    SSL_CTX_set_verify(g.ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_options(g.ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(g.ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_cache_mode(g.ctx, SSL_SESS_CACHE_OFF);
    if (g.script == script_bulk_raw && make_hello() < 0) {
        fprintf(stderr, "loadgen: cannot make a ClientHello\n");
        return 1;
    }

    g.s = calloc((size_t)g.n, sizeof *g.s);
    g.m_hs = calloc((size_t)g.n, sizeof(double));
    g.m_greet = calloc((size_t)g.n, sizeof(double));
    g.m_total = calloc((size_t)g.n, sizeof(double));
    if (!g.s || !g.m_hs || !g.m_greet || !g.m_total)
        return 1;
    g.loop = ev_default_loop(EVBACKEND_EPOLL);
    ev_timer_init(&g.limit_timer, limit_cb, g.limit, 0.);
    ev_timer_start(g.loop, &g.limit_timer);
    ev_signal sigterm, sigint;
    ev_signal_init(&sigterm, signal_cb, SIGTERM);
    ev_signal_init(&sigint, signal_cb, SIGINT);
    ev_signal_start(g.loop, &sigterm);
    ev_signal_start(g.loop, &sigint);
    ev_io in;
    if (idle) {
        ev_io_init(&in, stdin_cb, 0, EV_READ);
        ev_io_start(g.loop, &in);
    }

    start_more();
    if (!(g.active == 0 && g.finished == g.n))
        ev_run(g.loop, 0);
    if (idle) {
        /* The loop ran until stdin closed, a signal or the hold limit. */
        if (!g.idle_ready) {
            g.finished = g.n;
            check_idle_ready();
        }
        int held = g.held;
        for (int i = 0; i < g.started; i++)
            if (g.s[i].held)
                sess_close(&g.s[i]);
        printf("{\"mode\":\"idle-end\",\"held\":%d,\"dropped\":%d}\n", held, g.dropped);
        return 0;
    }

    double secs = (g.t_last > g.t_first ? g.t_last : now()) - g.t_first;
    printf("{\"mode\":\"%s\",\"n\":%d,\"conc\":%d,\"ok\":%d,\"failed\":%d,\"seconds\":%.4f", g.mode,
           g.n, g.conc, g.ok, g.failed, secs);
    if (g.script == script_greeting || g.script == script_starttls) {
        printf(",\"rate\":%.1f", secs > 0 ? g.ok / secs : 0.0);
        if (g.script == script_greeting) {
            print_pcts("hs", g.m_hs, g.nm);
            print_pcts("greet", g.m_greet, g.nm);
        }
        print_pcts("total", g.m_total, g.nm);
    } else {
        uint64_t total = 0;
        for (int i = 0; i < g.n; i++)
            total += g.s[i].got;
        printf(",\"bytes\":%llu,\"bytes_per_stream\":%llu,\"MBps\":%.1f", (unsigned long long)total,
               (unsigned long long)g.bytes, secs > 0 ? (double)total / 1e6 / secs : 0.0);
    }
    printf(",\"timed_out\":%s,\"error\":\"%s\"}\n", g.timed_out ? "true" : "false", g.error);
    return g.ok > 0 ? 0 : 1;
}
