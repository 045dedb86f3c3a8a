/* benchd — the backend server of `make bench`.
 *
 * One thread, one libev (epoll) loop, several listening ports at once, one
 * per role:
 *
 *   plain     "220 bench ESMTP" on accept, then line commands (below).
 *   implicit  TLS handshake first, then the plain protocol inside TLS.
 *   starttls  greeting; EHLO offers STARTTLS; "STARTTLS" -> "220 ready", TLS
 *             handshake, then the plain protocol inside TLS (no new greeting).
 *   rawbulk   reads exactly one TLS record (a ClientHello: 5-byte header plus
 *             its length), then sends N raw bytes and closes. N is the default
 *             from --rawbulk-bytes, unless the ClientHello's legacy_session_id
 *             starts with the 8 bytes "BENCHSZ:" followed by N as 8 bytes big
 *             endian (bench/loadgen.c does that): the passthrough proxy under
 *             test only reads the ClientHello and forwards it untouched.
 *   stats     writes one JSON line of counters and closes (run.py uses it to
 *             check that a proxy really carried the traffic).
 *
 * Line commands (case-insensitive verbs, CRLF or LF):
 *   EHLO x -> "250-bench" "250 8BITMIME" (or "250 STARTTLS" before TLS on the
 *   starttls port); HELO, MAIL, RCPT, RSET, NOOP -> 250; DATA -> 354, then the
 *   message up to "." -> 250 (enough for a real client such as swaks through
 *   nginx); QUIT -> 221 and close; BULK <n> -> n bytes of 'x' then close
 *   (download); SINK <n> -> reads n bytes then "250 got <n>" (upload).
 *
 *   benchd --cert C --key K [--plain P] [--implicit P] [--starttls P]
 *          [--rawbulk P] [--stats P] [--rawbulk-bytes N]
 *
 * Listens on 127.0.0.1 only. Prints "ready" on stdout once every port is
 * listening; SIGTERM/SIGINT stop it.
 */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench_io.h"

enum role { R_PLAIN, R_IMPLICIT, R_STARTTLS, R_RAWBULK, R_STATS, R_COUNT };
static const char *const role_names[R_COUNT] = {"plain", "implicit", "starttls", "rawbulk",
                                                "stats"};

enum state {
    S_HANDSHAKE, /* TLS accept in progress */
    S_LINES,     /* reading commands */
    S_DATA,      /* reading a message after DATA, up to "." */
    S_SINK,      /* reading n bytes after SINK */
    S_BULK,      /* sending n bytes after BULK or for rawbulk */
    S_RAWHELLO,  /* rawbulk: reading one TLS record */
    S_CLOSING,   /* output flushed: wait for the peer's EOF, then close */
};

#define IN_MAX  2048
#define OUT_MAX 1024
#define CHUNK   65536

struct conn {
    ev_io io;
    int fd;
    enum role role;
    enum state state;
    SSL *ssl;
    int starttls_pending; /* starttls role: TLS starts once "220 ready" is out */
    size_t inlen;
    size_t outlen, outoff;
    uint64_t remaining; /* bytes to send (S_BULK) or to read (S_SINK) */
    uint64_t sink_total;
    int close_after_out; /* after the reply is flushed: close (QUIT) */
    unsigned char in[IN_MAX];
    char out[OUT_MAX];
};

struct counters {
    unsigned long long accepted[R_COUNT];
    unsigned long long greetings, handshakes, handshake_failures, commands;
    unsigned long long bulk_bytes, raw_bytes, sink_bytes, open_now, max_open;
};

static struct counters stats;

/* Handshakes per negotiated cipher suite (the proxies' backend legs). */
#define CIPHERS_MAX 8
static struct {
    const char *name;
    unsigned long long count;
} ciphers[CIPHERS_MAX];

static void count_cipher(const SSL *ssl)
{
    const char *name = SSL_get_cipher_name(ssl);
    for (int i = 0; i < CIPHERS_MAX && name; i++) {
        if (!ciphers[i].name)
            ciphers[i].name = name; /* static strings inside OpenSSL */
        if (!strcmp(ciphers[i].name, name)) {
            ciphers[i].count++;
            return;
        }
    }
}
static SSL_CTX *ssl_ctx;
static uint64_t rawbulk_default = 1ULL << 30;
static unsigned char filler[CHUNK];

static void conn_cb(struct ev_loop *loop, ev_io *w, int revents);

static void conn_free(struct ev_loop *loop, struct conn *c)
{
    ev_io_stop(loop, &c->io);
    if (c->ssl)
        SSL_free(c->ssl);
    close(c->fd);
    stats.open_now--;
    free(c);
}

static void want(struct ev_loop *loop, struct conn *c, int events)
{
    if (c->io.events == events && ev_is_active(&c->io))
        return;
    ev_io_stop(loop, &c->io);
    ev_io_set(&c->io, c->fd, events);
    ev_io_start(loop, &c->io);
}

static ssize_t c_read(struct conn *c, void *buf, size_t len, int *ev)
{
    return io_read(c->fd, c->ssl, buf, len, ev);
}

static ssize_t c_write(struct conn *c, const void *buf, size_t len, int *ev)
{
    return io_write(c->fd, c->ssl, buf, len, ev);
}

static void reply(struct conn *c, const char *s)
{
    size_t n = strlen(s);
    if (c->outlen + n <= OUT_MAX) {
        memcpy(c->out + c->outlen, s, n);
        c->outlen += n;
    }
}

static int start_tls(struct conn *c)
{
    c->ssl = SSL_new(ssl_ctx);
    if (!c->ssl || !SSL_set_fd(c->ssl, c->fd))
        return -1;
    SSL_set_accept_state(c->ssl);
    c->state = S_HANDSHAKE;
    return 0;
}

/* Enters the closing phase: FIN (after close_notify under TLS), then wait for
 * the peer to close so that no unread input turns our close into a reset. */
static void begin_close(struct conn *c)
{
    if (c->ssl)
        SSL_shutdown(c->ssl);
    shutdown(c->fd, SHUT_WR);
    c->state = S_CLOSING;
}

/* One command line (without its line end). */
static void on_line(struct conn *c, char *line)
{
    stats.commands++;
    if (c->state == S_DATA) {
        if (!strcmp(line, ".")) {
            reply(c, "250 ok queued\r\n");
            c->state = S_LINES;
        }
        return;
    }
    char *arg = strchr(line, ' ');
    if (arg)
        *arg++ = '\0';
    if (!strcasecmp(line, "EHLO")) {
        if (c->role == R_STARTTLS && !c->ssl)
            reply(c, "250-bench\r\n250 STARTTLS\r\n");
        else
            reply(c, "250-bench\r\n250 8BITMIME\r\n");
    } else if (!strcasecmp(line, "STARTTLS") && c->role == R_STARTTLS && !c->ssl) {
        reply(c, "220 ready\r\n");
        c->starttls_pending = 1;
    } else if (!strcasecmp(line, "QUIT")) {
        reply(c, "221 bye\r\n");
        c->close_after_out = 1;
    } else if (!strcasecmp(line, "BULK") && arg) {
        c->remaining = strtoull(arg, NULL, 10);
        c->state = S_BULK;
    } else if (!strcasecmp(line, "SINK") && arg) {
        c->remaining = c->sink_total = strtoull(arg, NULL, 10);
        c->state = S_SINK;
    } else if (!strcasecmp(line, "DATA")) {
        reply(c, "354 go ahead\r\n");
        c->state = S_DATA;
    } else if (!strcasecmp(line, "HELO") || !strcasecmp(line, "MAIL") ||
               !strcasecmp(line, "RCPT") || !strcasecmp(line, "RSET") ||
               !strcasecmp(line, "NOOP")) {
        reply(c, "250 ok\r\n");
    } else {
        reply(c, "500 unknown command\r\n");
    }
}

/* Takes one complete line out of c->in and handles it. Returns 1 if a line
 * was consumed, 0 if more input is needed. */
static int take_line(struct conn *c)
{
    unsigned char *nl = memchr(c->in, '\n', c->inlen);
    if (!nl)
        return 0;
    size_t len = (size_t)(nl - c->in) + 1;
    char line[IN_MAX + 1];
    size_t n = len - 1;
    if (n > 0 && c->in[n - 1] == '\r')
        n--;
    memcpy(line, c->in, n);
    line[n] = '\0';
    memmove(c->in, c->in + len, c->inlen - len);
    c->inlen -= len;
    on_line(c, line);
    if (c->starttls_pending)
        c->inlen = 0; /* nothing may follow STARTTLS before TLS */
    return 1;
}

/* rawbulk: the size asked for in the ClientHello's legacy_session_id (record
 * header 5, handshake header 4, version 2, random 32, id length 1, id). */
static uint64_t rawbulk_size(const struct conn *c)
{
    const unsigned char *p = c->in;
    if (c->inlen >= 44 + 16 && p[43] >= 16 && !memcmp(p + 44, "BENCHSZ:", 8)) {
        uint64_t n = 0;
        for (int i = 0; i < 8; i++)
            n = n << 8 | p[52 + i];
        return n;
    }
    return rawbulk_default;
}

/* Runs the connection as far as it can go without blocking. */
static void drive(struct ev_loop *loop, struct conn *c)
{
    static unsigned char scratch[CHUNK];
    int ev = 0;
    for (;;) {
        ssize_t n;
        if (c->outoff < c->outlen) {
            n = c_write(c, c->out + c->outoff, c->outlen - c->outoff, &ev);
            if (n == -1)
                goto wait;
            if (n < 0)
                goto drop;
            c->outoff += (size_t)n;
            if (c->outoff == c->outlen)
                c->outoff = c->outlen = 0;
            continue;
        }
        if (c->close_after_out) {
            c->close_after_out = 0;
            begin_close(c);
            continue;
        }
        if (c->starttls_pending) {
            c->starttls_pending = 0;
            if (start_tls(c) < 0)
                goto drop;
            continue;
        }
        switch (c->state) {
        case S_HANDSHAKE: {
            int r = SSL_do_handshake(c->ssl);
            if (r == 1) {
                stats.handshakes++;
                count_cipher(c->ssl);
                c->state = S_LINES;
                if (c->role == R_IMPLICIT) {
                    reply(c, "220 bench ESMTP\r\n");
                    stats.greetings++;
                }
                continue;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                ev = e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE;
                goto wait;
            }
            ERR_clear_error();
            stats.handshake_failures++;
            goto drop;
        }
        case S_LINES:
        case S_DATA:
            if (take_line(c))
                continue;
            if (c->inlen == IN_MAX)
                goto drop; /* line too long */
            n = c_read(c, c->in + c->inlen, IN_MAX - c->inlen, &ev);
            if (n == -1)
                goto wait;
            if (n <= 0)
                goto drop;
            c->inlen += (size_t)n;
            continue;
        case S_SINK:
            if (c->inlen) {
                size_t take = c->inlen < c->remaining ? c->inlen : (size_t)c->remaining;
                memmove(c->in, c->in + take, c->inlen - take);
                c->inlen -= take;
                c->remaining -= take;
                stats.sink_bytes += take;
            }
            if (c->remaining == 0) {
                snprintf(c->out + c->outlen, OUT_MAX - c->outlen, "250 got %llu\r\n",
                         (unsigned long long)c->sink_total);
                c->outlen += strlen(c->out + c->outlen);
                c->state = S_LINES;
                continue;
            }
            n = c_read(c, scratch, c->remaining < CHUNK ? (size_t)c->remaining : CHUNK, &ev);
            if (n == -1)
                goto wait;
            if (n <= 0)
                goto drop;
            c->remaining -= (uint64_t)n;
            stats.sink_bytes += (uint64_t)n;
            continue;
        case S_BULK: {
            if (c->remaining == 0) {
                begin_close(c);
                continue;
            }
            /* Under TLS one full record at a time; the same length on retry. */
            size_t max = c->ssl ? 16384 : CHUNK;
            n = c_write(c, filler, c->remaining < max ? (size_t)c->remaining : max, &ev);
            if (n == -1)
                goto wait;
            if (n < 0)
                goto drop;
            c->remaining -= (uint64_t)n;
            if (c->role == R_RAWBULK)
                stats.raw_bytes += (uint64_t)n;
            else
                stats.bulk_bytes += (uint64_t)n;
            continue;
        }
        case S_RAWHELLO: {
            size_t need = 5;
            if (c->inlen >= 5)
                need = 5 + ((size_t)c->in[3] << 8 | c->in[4]);
            if (c->in[0] != 0x16 && c->inlen > 0)
                goto drop; /* not a TLS handshake record */
            if (c->inlen >= need) {
                c->remaining = rawbulk_size(c);
                c->state = S_BULK;
                continue;
            }
            if (need > IN_MAX)
                goto drop;
            /* Read exactly the record, never beyond it. */
            n = c_read(c, c->in + c->inlen, need - c->inlen, &ev);
            if (n == -1)
                goto wait;
            if (n <= 0)
                goto drop;
            c->inlen += (size_t)n;
            continue;
        }
        case S_CLOSING:
            n = c_read(c, scratch, sizeof scratch, &ev);
            if (n == -1)
                goto wait;
            if (n > 0)
                continue;
            goto drop;
        }
    }
wait:
    want(loop, c, ev);
    return;
drop:
    conn_free(loop, c);
}

static void conn_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    drive(loop, (struct conn *)w);
}

static int stats_json(char *out, size_t cap)
{
    int n = snprintf(out, cap, "{\"accepted\":{");
    for (int r = 0; r < R_COUNT; r++)
        n += snprintf(out + n, cap - (size_t)n, "%s\"%s\":%llu", r ? "," : "", role_names[r],
                      stats.accepted[r]);
    n += snprintf(out + n, cap - (size_t)n,
                  "},\"greetings\":%llu,\"handshakes\":%llu,\"handshake_failures\":%llu,"
                  "\"commands\":%llu,\"bulk_bytes\":%llu,\"raw_bytes\":%llu,"
                  "\"sink_bytes\":%llu,\"open\":%llu,\"max_open\":%llu}\n",
                  stats.greetings, stats.handshakes, stats.handshake_failures, stats.commands,
                  stats.bulk_bytes, stats.raw_bytes, stats.sink_bytes, stats.open_now - 1,
                  stats.max_open);
    /* The cipher counts go in before the final "}". */
    n -= 2;
    n += snprintf(out + n, cap - (size_t)n, ",\"ciphers\":{");
    for (int i = 0; i < CIPHERS_MAX && ciphers[i].name; i++)
        n += snprintf(out + n, cap - (size_t)n, "%s\"%s\":%llu", i ? "," : "", ciphers[i].name,
                      ciphers[i].count);
    n += snprintf(out + n, cap - (size_t)n, "}}\n");
    return n;
}

struct listener {
    ev_io io;
    ev_timer pause; /* out of descriptors: stop accepting for a moment */
    enum role role;
};

static void resume_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct listener *l = (struct listener *)((char *)t - offsetof(struct listener, pause));
    ev_io_start(loop, &l->io);
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct listener *l = (struct listener *)w;
    for (int i = 0; i < 64; i++) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                fprintf(stderr, "benchd: accept: %s; pausing\n", strerror(errno));
                ev_io_stop(loop, &l->io);
                ev_timer_set(&l->pause, 0.1, 0.);
                ev_timer_start(loop, &l->pause);
            }
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            return;
        }
        c->fd = fd;
        c->role = l->role;
        stats.accepted[l->role]++;
        if (++stats.open_now > stats.max_open)
            stats.max_open = stats.open_now;
        ev_io_init(&c->io, conn_cb, fd, EV_READ);
        switch (l->role) {
        case R_PLAIN:
        case R_STARTTLS:
            c->state = S_LINES;
            reply(c, "220 bench ESMTP\r\n");
            stats.greetings++;
            break;
        case R_IMPLICIT:
            if (start_tls(c) < 0) {
                conn_free(loop, c);
                continue;
            }
            break;
        case R_RAWBULK:
            c->state = S_RAWHELLO;
            break;
        case R_STATS:
            c->state = S_LINES;
            c->outlen = (size_t)stats_json(c->out, OUT_MAX);
            c->close_after_out = 1;
            break;
        case R_COUNT:
            break;
        }
        drive(loop, c);
    }
}

static int listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4096) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void stop_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

static void usage(void)
{
    fprintf(stderr, "usage: benchd --cert C --key K [--plain P] [--implicit P] [--starttls P]\n"
                    "              [--rawbulk P] [--stats P] [--rawbulk-bytes N]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *cert = NULL, *key = NULL;
    int ports[R_COUNT] = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--cert"))
            cert = v;
        else if (!strcmp(a, "--key"))
            key = v;
        else if (!strcmp(a, "--rawbulk-bytes"))
            rawbulk_default = strtoull(v, NULL, 10);
        else {
            int r;
            for (r = 0; r < R_COUNT; r++)
                if (!strncmp(a, "--", 2) && !strcmp(a + 2, role_names[r]))
                    break;
            if (r == R_COUNT)
                usage();
            ports[r] = atoi(v);
        }
    }
    if (!cert || !key)
        usage();
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    memset(filler, 'x', sizeof filler);

    ssl_ctx = SSL_CTX_new(TLS_server_method());
    if (!ssl_ctx || !SSL_CTX_set_min_proto_version(ssl_ctx, TLS1_2_VERSION) ||
        SSL_CTX_use_certificate_chain_file(ssl_ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ssl_ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ssl_ctx) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    /* The client chooses among the default suites (TLS_AES_128_GCM_SHA256
     * among them). No tickets and no session cache: every handshake is full. */
    SSL_CTX_set_mode(ssl_ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_session_cache_mode(ssl_ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ssl_ctx, 0);

    struct ev_loop *loop = ev_default_loop(EVBACKEND_EPOLL);
    if (!loop) {
        fprintf(stderr, "benchd: no epoll loop\n");
        return 1;
    }
    static struct listener listeners[R_COUNT];
    for (int r = 0; r < R_COUNT; r++) {
        if (!ports[r])
            continue;
        int fd = listen_on(ports[r]);
        if (fd < 0) {
            fprintf(stderr, "benchd: listen %s 127.0.0.1:%d: %s\n", role_names[r], ports[r],
                    strerror(errno));
            return 1;
        }
        listeners[r].role = (enum role)r;
        ev_io_init(&listeners[r].io, accept_cb, fd, EV_READ);
        ev_timer_init(&listeners[r].pause, resume_cb, 0.1, 0.);
        ev_io_start(loop, &listeners[r].io);
    }
    ev_signal sigterm, sigint;
    ev_signal_init(&sigterm, stop_cb, SIGTERM);
    ev_signal_init(&sigint, stop_cb, SIGINT);
    ev_signal_start(loop, &sigterm);
    ev_signal_start(loop, &sigint);
    printf("ready\n");
    fflush(stdout);
    ev_run(loop, 0);
    SSL_CTX_free(ssl_ctx);
    return 0;
}
