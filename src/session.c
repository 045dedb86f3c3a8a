/* session — one client connection, read top to bottom as its life:
 *
 *   accept -> [starttls listener: cleartext dialogue until STARTTLS]
 *          -> ClientHello -> SNI -> route, which says terminate or passthrough
 *             terminate: TLS handshake, OpenSSL reading the ClientHello again
 *          -> connect backend -> prelude (greeting, STARTTLS dance) -> [backend TLS]
 *          -> relay both ways -> close, one log line
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <ev.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buf.h"
#include "buf_pool.h"
#include "client_table.h"
#include "clienthello.h"
#include "conn.h"
#include "dialogue/dialogue.h"
#include "health.h"
#include "listener.h"
#include "log.h"
#include "proxy_header.h"
#include "relay.h"
#include "route.h"
#include "server.h"
#include "session.h"
#include "sock.h"
#include "tls.h"
#include "worker.h"

/* TLS record content type of a handshake: the only first byte a TLS client sends. */
#define TLS_HANDSHAKE_RECORD 0x16
/* The cleartext dialogue stops reading while this much reply is unsent. */
#define REPLY_BACKLOG_MAX 4096
/* Seconds allowed to flush a final reply before the socket is closed anyway. */
#define DRAIN_TIMEOUT 5.0
/* After a final reply, client input is discarded for at most this long (and
 * this many bytes) before the close: closing a socket with unread input makes
 * the kernel send a reset, which can destroy the reply before the client
 * reads it (the "lingering close" of nginx and Apache). */
#define LINGER_TIMEOUT   2.0
#define LINGER_BYTES_MAX (64 * 1024)
/* Backend addresses one session tries at most before it gives up, and the
 * time it may spend on them all, in connect_timeouts (each try gets at most
 * one, and what is left). */
#define BACKEND_ATTEMPTS_MAX 8
#define BACKEND_TIMEOUTS_MAX 3
/* Log lines for clients turned away by the client limits, per second. */
#define REFUSALS_LOGGED_PER_SECOND 20

enum session_state {
    SESSION_PROXY_HEADER,      /* proxy_protocol listener: the load balancer's header first */
    SESSION_CLEARTEXT,         /* starttls listener: cleartext commands until STARTTLS */
    SESSION_CLIENTHELLO,       /* collecting the ClientHello to learn the SNI and route */
    SESSION_CLIENT_HANDSHAKE,  /* terminate: TLS handshake with the client */
    SESSION_CONNECTING,        /* non-blocking connect to the backend */
    SESSION_PRELUDE,           /* the backend's cleartext greeting and STARTTLS dance */
    SESSION_BACKEND_HANDSHAKE, /* terminate: TLS handshake with a TLS backend */
    SESSION_RELAY,             /* bytes both ways until both directions end */
    SESSION_DRAINING,          /* a last reply is queued for the client; close once sent */
    SESSION_LINGERING,         /* reply sent, write side shut: discarding input until EOF */
    SESSION_CLOSED,            /* done; freed when the current callback returns */
};

static const char *const state_names[] = {
    [SESSION_PROXY_HEADER] = "proxy-header",
    [SESSION_CLEARTEXT] = "cleartext",
    [SESSION_CLIENTHELLO] = "clienthello",
    [SESSION_CLIENT_HANDSHAKE] = "client-handshake",
    [SESSION_CONNECTING] = "connecting",
    [SESSION_PRELUDE] = "prelude",
    [SESSION_BACKEND_HANDSHAKE] = "backend-handshake",
    [SESSION_RELAY] = "relay",
    [SESSION_DRAINING] = "draining",
    [SESSION_LINGERING] = "lingering",
    [SESSION_CLOSED] = "closed",
};

struct session {
    struct worker *worker; /* the event loop it lives on */
    struct server *server; /* what all workers share */
    const struct cfg_listener *listener;
    const struct service_info *service;
    const struct dialogue *dialogue;
    enum session_state state;

    struct conn client;
    struct conn backend;
    ev_io client_w;
    ev_io backend_w;
    ev_timer timer;
    int client_events; /* events client_w currently waits for */
    int backend_events;

    /* Buffers are held only while they hold bytes (NULL otherwise): taken
     * from the worker's pool when needed, given back in session_update(). */
    struct buf *up;      /* client -> backend; the cleartext phase's input */
    struct buf *down;    /* backend -> client; replies to the client */
    struct buf *prelude; /* commands sallyport sends the backend itself */
    size_t prelude_seen; /* bytes of `down` the prelude has parsed */

    bool discarding_line;  /* skipping the rest of an over-long line */
    bool starttls_pending; /* go-ahead queued; TLS starts once it is sent */
    bool client_greeted;   /* the client already has a greeting from us */
    int client_hs_wait;    /* events the client handshake is blocked on */
    int backend_hs_wait;
    int drain_wait;        /* events the final flush is blocked on */
    int client_slot;       /* this client's entry in server->clients, or -1 */
    size_t lingered_bytes; /* client input discarded while lingering */

    const struct cfg_route *route;
    enum listen_mode mode; /* the listener's until routed, then the route's (route_mode()) */
    /* The backend being tried (or serving), its endpoint for this service
     * and which of the endpoint's addresses. */
    const struct cfg_backend *target;
    const struct endpoint *endpoint;
    uint8_t target_addr;
    uint8_t attempts; /* addresses tried so far */
    uint8_t turn;     /* round robin: the route's backend tried first */
    uint8_t nfailed;  /* route->backends[] indices that failed, each once */
    uint8_t failed[ROUTE_MAX_BACKENDS];
    uint32_t tried;             /* candidate bits: rank * ENDPOINT_MAX_ADDRS + address */
    ev_tstamp backend_deadline; /* no more tries after this */
    bool has_sni;
    bool sni_refused;  /* the TLS handshake was refused: no route for the SNI */
    bool alpn_refused; /* ... or the client offered ALPN, but not our protocol */
    char sni[256];

    union {                         /* one phase at a time: cleartext, then prelude, then relay */
        struct dialogue_server ds;  /* SESSION_CLEARTEXT */
        struct dialogue_backend db; /* SESSION_PRELUDE */
        struct relay relay;         /* from start_relay() on: relay_started */
    };
    bool relay_started;
    bool relay_more;        /* relay_step() hit its round limit: run it again soon */
    size_t relay_preloaded; /* bytes in `up` when the relay started (already counted) */

    uint64_t bytes_in, bytes_out;
    ev_tstamp started;
    union sock_any peer;  /* the client (as a PROXY header named it, if any) */
    union sock_any local; /* the address it reached, when a PROXY header named it */
    bool has_local;
    char close_reason[200];
    enum log_level close_level;

    struct session *prev, *next;
};

static void session_update(struct session *s);
static const char *refusal_reason(enum client_verdict verdict);
static void on_proxy_header_io(struct session *s);
static bool send_proxy_header(struct session *s);
static void session_close(struct session *s, enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void connect_backend(struct session *s);
static void backend_failed(struct session *s, const char *why);
static void start_relay(struct session *s);
static void on_relay_io(struct session *s, int client_revents, int backend_revents);
static void on_prelude_io(struct session *s, int revents);
static void greet_after_backend_starttls(struct session *s);
static bool read_prelude(struct session *s);

/* ---- state and timers ----------------------------------------------------- */

static void session_enter(struct session *s, enum session_state next)
{
    if (log_get_level() <= LOG_LEVEL_DEBUG) {
        char peer[64];
        log_debug("session %s: %s -> %s", sock_addr_format(&s->peer.sa, peer, sizeof peer),
                  state_names[s->state], state_names[next]);
    }
    s->state = next;
}

/* Arms the session's single timer for the current phase. */
static void arm_timer(struct session *s, double seconds)
{
    ev_timer_stop(s->worker->loop, &s->timer);
    ev_timer_set(&s->timer, seconds, seconds);
    ev_timer_start(s->worker->loop, &s->timer);
}

static struct buf_pool *session_bufs(const struct session *s)
{
    return &s->worker->bufs;
}

static struct pipe_pool *session_pipes(const struct session *s)
{
    return &s->worker->pipes;
}

/* The buffer in `slot`, taken from the pool if the slot holds none. Returns
 * NULL (and closes the session) when out of memory. */
static struct buf *held(struct session *s, struct buf **slot)
{
    if (!*slot && !(*slot = buf_pool_take(session_bufs(s))))
        session_close(s, LOG_LEVEL_ERROR, "out of memory for a buffer");
    return *slot;
}

static bool client_in_tls(const struct session *s)
{
    return s->client.ssl && SSL_is_init_finished(s->client.ssl);
}

/* Closes after telling the client why, if the protocol lets us: in the
 * cleartext phase, or inside a terminated TLS session. Otherwise closes. */
static void fail_with_reply(struct session *s, const char *reason)
{
    bool can_reply = s->state == SESSION_CLEARTEXT || client_in_tls(s);
    if (!can_reply) {
        session_close(s, LOG_LEVEL_INFO, "%s", reason);
        return;
    }
    if (!held(s, &s->down))
        return;
    s->down->len = 0;
    s->dialogue->unavailable_reply(s->listener->hostname, s->down);
    snprintf(s->close_reason, sizeof s->close_reason, "%s", reason);
    s->close_level = LOG_LEVEL_WARN;
    session_enter(s, SESSION_DRAINING);
    arm_timer(s, DRAIN_TIMEOUT);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    struct session *s = w->data;
    switch (s->state) {
    case SESSION_PROXY_HEADER:
        session_close(s, LOG_LEVEL_INFO, "PROXY header timeout");
        break;
    case SESSION_CLEARTEXT:
        if (!held(s, &s->down))
            break;
        s->down->len = 0;
        s->dialogue->timeout_reply(&s->ds, s->down);
        snprintf(s->close_reason, sizeof s->close_reason, "cleartext phase timeout");
        session_enter(s, SESSION_DRAINING);
        arm_timer(s, DRAIN_TIMEOUT);
        break;
    case SESSION_CLIENTHELLO:
    case SESSION_CLIENT_HANDSHAKE:
        session_close(s, LOG_LEVEL_INFO, "client TLS handshake timeout");
        break;
    case SESSION_CONNECTING:
    case SESSION_PRELUDE:
    case SESSION_BACKEND_HANDSHAKE:
        backend_failed(s, "backend timeout");
        break;
    case SESSION_RELAY:
        session_close(s, LOG_LEVEL_INFO, "idle timeout");
        break;
    case SESSION_DRAINING: {
        char reason[sizeof s->close_reason];
        snprintf(reason, sizeof reason, "%s", s->close_reason);
        session_close(s, s->close_level, "%s (final reply not delivered)", reason);
        break;
    }
    case SESSION_LINGERING:
        session_enter(s, SESSION_CLOSED); /* close_reason was set on the way in */
        break;
    case SESSION_CLOSED:
        break;
    }
    session_update(s);
}

/* ---- closing and the one log line ----------------------------------------- */

static void log_session(const struct session *s)
{
    char sni[300] = "-";
    if (s->has_sni)
        log_escape(sni, sizeof sni, s->sni, strlen(s->sni));
    const char *version = "-", *cipher = "-";
    if (s->client.ssl && SSL_is_init_finished(s->client.ssl)) {
        version = SSL_get_version(s->client.ssl);
        cipher = SSL_get_cipher_name(s->client.ssl);
    } else if (s->mode == MODE_PASSTHROUGH && s->relay_started) {
        version = "passthrough";
    }
    char peer[64], backend_addr[64] = "-", failed[ROUTE_MAX_BACKENDS * 70] = "-";
    if (s->endpoint)
        sock_addr_format((const struct sockaddr *)&s->endpoint->addrs[s->target_addr].ss,
                         backend_addr, sizeof backend_addr);
    for (size_t i = 0, n = 0; i < s->nfailed && n < sizeof failed; i++)
        n += (size_t)snprintf(failed + n, sizeof failed - n, "%s%s", i ? "," : "",
                              s->route->backends[s->failed[i]]->name);
    uint64_t in = s->bytes_in, out = s->bytes_out;
    if (s->relay_started) {
        in += s->relay.up.bytes - s->relay_preloaded;
        out += s->relay.down.bytes;
    }
    log_msg(s->close_level,
            "session listener=%s client=%s worker=%u sni=%s route=%s backend=%s backend_addr=%s "
            "failed=%s mode=%s tls=%s cipher=%s bytes_in=%llu bytes_out=%llu duration=%.3fs "
            "close=\"%s\"",
            s->listener->name, sock_addr_format(&s->peer.sa, peer, sizeof peer), s->worker->id, sni,
            s->route ? s->route->name : "-", s->target ? s->target->name : "-", backend_addr,
            failed, s->mode == MODE_TERMINATE ? "terminate" : "passthrough", version, cipher,
            (unsigned long long)in, (unsigned long long)out, ev_now(s->worker->loop) - s->started,
            s->close_reason);
}

static void session_close(struct session *s, enum log_level level, const char *fmt, ...)
{
    if (s->state == SESSION_CLOSED)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->close_reason, sizeof s->close_reason, fmt, ap);
    va_end(ap);
    if (level > s->close_level)
        s->close_level = level;
    session_enter(s, SESSION_CLOSED);
}

static void session_free(struct session *s)
{
    struct worker *worker = s->worker;
    log_session(s);
    ev_io_stop(worker->loop, &s->client_w);
    ev_io_stop(worker->loop, &s->backend_w);
    ev_timer_stop(worker->loop, &s->timer);
    if (s->relay_started)
        relay_free(&s->relay);
    buf_pool_give(session_bufs(s), s->up);
    buf_pool_give(session_bufs(s), s->down);
    buf_pool_give(session_bufs(s), s->prelude);
    conn_close(&s->client);
    conn_close(&s->backend);
    if (s->prev)
        s->prev->next = s->next;
    else
        worker->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    worker->nsessions--;
    server_release_client(s->server, s->client_slot);
    server_release_session(s->server);
    free(s);
}

void session_abort(struct session *s, const char *reason)
{
    session_close(s, LOG_LEVEL_INFO, "%s", reason);
    session_update(s);
}

/* ---- writing to the client ------------------------------------------------ */

/* Writes queued replies to the client. Returns false if the session closed. */
static bool flush_client(struct session *s, int *wait)
{
    *wait = 0;
    while (buf_slot_len(s->down) > 0) {
        ssize_t n = conn_write(&s->client, s->down->data, s->down->len);
        if (n > 0) {
            buf_consume(s->down, (size_t)n);
            s->bytes_out += (uint64_t)n;
            continue;
        }
        if (n == CONN_WANT_READ || n == CONN_WANT_WRITE) {
            *wait = n == CONN_WANT_READ ? EV_READ : EV_WRITE;
            return true;
        }
        session_close(s, LOG_LEVEL_INFO, "client write failed: %s",
                      n == CONN_EOF ? "closed" : conn_error());
        return false;
    }
    return true;
}

/* ---- the cleartext dialogue (starttls listeners) --------------------------- */

/* Handles the STARTTLS go-ahead once it has been written. */
static void begin_client_tls(struct session *s)
{
    s->starttls_pending = false;
    arm_timer(s, s->server->config->global.handshake_timeout);
    session_enter(s, SESSION_CLIENTHELLO);
}

/* Runs every complete line in `up` through the dialogue. */
static void run_dialogue(struct session *s)
{
    while (s->state == SESSION_CLEARTEXT && !s->starttls_pending && buf_slot_len(s->up) > 0) {
        struct buf *up = s->up, *down = held(s, &s->down);
        if (!down)
            return;
        if (buf_space(down) < REPLY_BACKLOG_MAX)
            return; /* let the client read its replies first */
        if (s->discarding_line) {
            size_t end = buf_line_length(up);
            buf_consume(up, end ? end : up->len);
            s->discarding_line = end == 0;
            continue;
        }
        if (up->data[0] == TLS_HANDSHAKE_RECORD) {
            /* No command starts with 0x16: this is a TLS client on the wrong
             * port (or one that skipped STARTTLS). Its bytes are not lines. */
            session_close(s, LOG_LEVEL_WARN,
                          "TLS handshake before STARTTLS (a client configured for implicit "
                          "TLS on a STARTTLS port?)");
            return;
        }
        size_t len = buf_line_length(up);
        size_t replies_before = down->len;
        const char *close_why = "client quit in cleartext";
        enum dialogue_action action;
        if (len == 0 && up->len <= DIALOGUE_LINE_MAX)
            return; /* wait for the rest of the line */
        if (len == 0 || len > DIALOGUE_LINE_MAX) {
            s->discarding_line = len == 0;
            buf_consume(up, len ? len : up->len);
            action = s->dialogue->on_long_line(&s->ds, down);
            close_why = "line too long in cleartext";
        } else {
            char line[DIALOGUE_LINE_MAX + 1];
            size_t n = len - 1;
            if (n > 0 && up->data[n - 1] == '\r')
                n--;
            memcpy(line, up->data, n);
            line[n] = '\0';
            buf_consume(up, len);
            action = s->dialogue->on_line(&s->ds, line, n, down);
        }
        switch (action) {
        case DIALOGUE_CONTINUE:
            break;
        case DIALOGUE_CLOSE:
            snprintf(s->close_reason, sizeof s->close_reason, "%s", close_why);
            if (s->ds.errors >= s->ds.max_errors)
                snprintf(s->close_reason, sizeof s->close_reason, "too many errors");
            session_enter(s, SESSION_DRAINING);
            arm_timer(s, DRAIN_TIMEOUT);
            return;
        case DIALOGUE_STARTTLS:
            if (!buf_empty(up) || s->discarding_line) {
                /* CVE-2011-0411 class: bytes pipelined behind STARTTLS would
                 * be read as if they came inside TLS. Never answer them, and
                 * withdraw the go-ahead. */
                down->len = replies_before;
                session_close(s, LOG_LEVEL_WARN,
                              "command injection: %zu bytes after STARTTLS before TLS", up->len);
                return;
            }
            s->starttls_pending = true;
            return;
        }
    }
}

static void on_cleartext_io(struct session *s, int revents)
{
    if (revents & EV_READ) {
        struct buf *up = held(s, &s->up);
        if (!up)
            return;
        ssize_t n = conn_read(&s->client, up->data + up->len, buf_space(up));
        if (n > 0) {
            up->len += (size_t)n;
            s->bytes_in += (uint64_t)n;
        } else if (n == CONN_EOF || n == CONN_ERROR) {
            session_close(s, LOG_LEVEL_INFO, "client closed in cleartext");
            return;
        }
        run_dialogue(s);
    }
    int wait;
    if (s->state == SESSION_CLOSED || !flush_client(s, &wait))
        return;
    run_dialogue(s); /* replies drained: buffered commands may proceed */
    if (s->state == SESSION_CLOSED || !flush_client(s, &wait))
        return;
    if (s->state == SESSION_CLEARTEXT && s->starttls_pending && buf_slot_len(s->down) == 0)
        begin_client_tls(s);
}

/* ---- passthrough: the ClientHello ----------------------------------------- */

/* Routes by SNI. Returns false when no route matches. The mode is not
 * touched: only the ClientHello state decides it, once. */
static bool route_session(struct session *s, const char *sni)
{
    s->has_sni = sni != NULL;
    if (sni)
        snprintf(s->sni, sizeof s->sni, "%s", sni);
    s->route = route_lookup(s->server->config->routes, s->server->config->nroutes, sni);
    return s->route != NULL;
}

/* OpenSSL's SNI callback, in a handshake sallyport already terminates: a
 * name whose route passes TLS through is refused (alert unrecognized_name)
 * rather than followed, since the TLS is sallyport's by now and its
 * plaintext must never be relayed as if it were the client's TLS. */
bool session_route_by_sni(void *session, const char *sni)
{
    struct session *s = session;
    bool found = route_session(s, sni) && route_mode(s->listener, s->route) == MODE_TERMINATE;
    if (!found)
        s->route = NULL;
    s->sni_refused = !found;
    return found;
}

int session_check_alpn(void *session, const unsigned char *list, unsigned len)
{
    struct session *s = session;
    int at = tls_alpn_find(list, len, s->dialogue->alpn);
    s->alpn_refused = at < 0;
    return at;
}

static void terminate_client_tls(struct session *s);
static void on_client_handshake_io(struct session *s);

/* Every TLS connection starts here: its ClientHello names the route, and
 * the route says whether sallyport terminates the TLS or passes it on. */
static void on_clienthello_io(struct session *s)
{
    struct buf *up = held(s, &s->up);
    if (!up)
        return;
    ssize_t n = conn_read(&s->client, up->data + up->len, buf_space(up));
    if (n == CONN_WANT_READ)
        return;
    if (n <= 0) {
        session_close(s, LOG_LEVEL_INFO, "client closed before its ClientHello");
        return;
    }
    up->len += (size_t)n;
    s->bytes_in += (uint64_t)n;

    struct clienthello hello;
    enum clienthello_result r = clienthello_parse(up->data, up->len, &hello);
    if (r == CLIENTHELLO_NEED_MORE && buf_space(up) > 0)
        return;
    if (r == CLIENTHELLO_NOT_TLS) {
        session_close(s, LOG_LEVEL_WARN, "%s",
                      s->client_greeted ? "command injection: cleartext after STARTTLS instead "
                                          "of a TLS handshake"
                                        : "cleartext on an implicit-TLS port");
        return;
    }
    if (r != CLIENTHELLO_OK) {
        /* A terminating listener lets OpenSSL judge (and answer with an
         * alert) what this parser, stricter than it, refuses. */
        if (s->listener->mode == MODE_TERMINATE) {
            terminate_client_tls(s);
            return;
        }
        session_close(
            s, LOG_LEVEL_INFO, "bad ClientHello: %s",
            clienthello_result_name(r == CLIENTHELLO_NEED_MORE ? CLIENTHELLO_TOO_LARGE : r));
        return;
    }
    if (!route_session(s, hello.has_sni ? hello.sni : NULL)) {
        /* A terminating listener refuses with alert unrecognized_name. */
        if (s->listener->mode == MODE_TERMINATE)
            terminate_client_tls(s);
        else
            session_close(s, LOG_LEVEL_INFO, "no route for this SNI");
        return;
    }
    s->mode = route_mode(s->listener, s->route);
    if (s->mode == MODE_TERMINATE)
        terminate_client_tls(s);
    else
        connect_backend(s);
}

/* ---- terminate: the client's TLS handshake --------------------------------- */

/* Hands the client's TLS to OpenSSL, which reads the bytes the ClientHello
 * state already took from the socket before the socket itself. */
static void terminate_client_tls(struct session *s)
{
    struct buf *up = s->up;
    SSL *ssl = tls_store_accept(s->server->store, s);
    if (!ssl || !conn_start_tls_replay(&s->client, ssl, up->data, up->len)) {
        session_close(s, LOG_LEVEL_ERROR, "out of memory for TLS");
        return;
    }
    s->bytes_in -= up->len; /* handshake bytes: only what TLS carries counts, as before */
    up->len = 0;
    s->mode = MODE_TERMINATE;
    s->client_hs_wait = EV_READ;
    session_enter(s, SESSION_CLIENT_HANDSHAKE);
    on_client_handshake_io(s); /* the ClientHello is in hand: no event will say so */
}

static void on_client_handshake_io(struct session *s)
{
    int r = conn_handshake(&s->client);
    if (r == CONN_WANT_READ || r == CONN_WANT_WRITE) {
        s->client_hs_wait = r == CONN_WANT_READ ? EV_READ : EV_WRITE;
        return;
    }
    if (r != CONN_DONE) {
        if (s->sni_refused)
            session_close(s, LOG_LEVEL_INFO, "no route for this SNI (alert unrecognized_name)");
        else if (s->alpn_refused)
            session_close(s, LOG_LEVEL_WARN,
                          "client offered ALPN without '%s' (alert no_application_protocol)",
                          s->dialogue->alpn);
        else
            session_close(s, LOG_LEVEL_INFO, "client TLS handshake failed: %s", conn_error());
        return;
    }
    if (!s->route &&
        !session_route_by_sni(s, SSL_get_servername(s->client.ssl, TLSEXT_NAMETYPE_host_name))) {
        session_close(s, LOG_LEVEL_INFO, "no route for this SNI");
        return;
    }
    connect_backend(s);
}

/* ---- the backend ---------------------------------------------------------- */

/* Picks the next backend address to try: the route's backends from its
 * turn on (in order, or round robin), each one's addresses in DNS order,
 * skipping those tried already and, while any other is left, those marked
 * down. Returns false when none is left. */
static bool choose_backend(struct session *s)
{
    const struct cfg_route *r = s->route;
    double now = ev_now(s->worker->loop);
    /* Pass 0: those up, each backend's addresses together. Pass 1: those
     * marked down, each backend's first address before any second one, so
     * the try limit reaches every backend. */
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < r->nbackends * ENDPOINT_MAX_ADDRS; i++) {
            size_t rank = pass == 0 ? i / ENDPOINT_MAX_ADDRS : i % r->nbackends;
            size_t addr = pass == 0 ? i % ENDPOINT_MAX_ADDRS : i / r->nbackends;
            const struct cfg_backend *b = r->backends[(s->turn + rank) % r->nbackends];
            const struct endpoint *ep = &b->endpoints[s->listener->service];
            uint32_t bit = 1u << (rank * ENDPOINT_MAX_ADDRS + addr);
            if (addr >= ep->naddrs || (s->tried & bit) ||
                (pass == 0 &&
                 health_is_down(s->server->health, b, s->listener->service, addr, now)))
                continue;
            s->tried |= bit;
            s->target = b;
            s->endpoint = ep;
            s->target_addr = (uint8_t)addr;
            return true;
        }
    }
    return false;
}

/* Connects to the next backend address; when none is left, the session
 * fails with `why` (the last failure). */
static void try_backend(struct session *s, const char *why)
{
    double left = s->backend_deadline - ev_now(s->worker->loop);
    if (s->attempts >= BACKEND_ATTEMPTS_MAX || left <= 0 || !choose_backend(s)) {
        fail_with_reply(s, why);
        return;
    }
    s->attempts++;
    double timeout = s->server->config->global.connect_timeout;
    arm_timer(s, timeout < left ? timeout : left);
    session_enter(s, SESSION_CONNECTING);
    int fd = sock_connect(&s->endpoint->addrs[s->target_addr]);
    if (fd < 0) {
        char reason[160];
        snprintf(reason, sizeof reason, "backend connect failed: %s", strerror(errno));
        if (sock_error_is_local(errno))
            fail_with_reply(s, reason); /* our trouble: no backend is to blame */
        else
            backend_failed(s, reason);
        return;
    }
    conn_init(&s->backend, fd);
    ev_io_set(&s->backend_w, fd, 0);
}

/* Choosing a backend is a step: the first try of a routed session. */
static void connect_backend(struct session *s)
{
    if (s->route->balance == BALANCE_ROUNDROBIN)
        s->turn = (uint8_t)(health_next_turn(s->server->health, s->route) % s->route->nbackends);
    s->backend_deadline = ev_now(s->worker->loop) +
                          BACKEND_TIMEOUTS_MAX * (double)s->server->config->global.connect_timeout;
    try_backend(s, "no backend address to try");
}

/* The backend failed before any client byte reached it: it is marked down
 * (logged when that is news), its connection and whatever it sent are
 * dropped, and the next one is tried. */
static void backend_failed(struct session *s, const char *why)
{
    health_failed(s->server->health, HEALTH_SESSION, s->target, s->listener->service,
                  s->target_addr, ev_now(s->worker->loop), why);
    size_t k = 0;
    while (k < s->route->nbackends && s->route->backends[k] != s->target)
        k++;
    size_t i = 0;
    while (i < s->nfailed && s->failed[i] != k)
        i++;
    if (i == s->nfailed && s->nfailed < ROUTE_MAX_BACKENDS)
        s->failed[s->nfailed++] = (uint8_t)k;
    ev_io_stop(s->worker->loop, &s->backend_w);
    s->backend_events = 0;
    conn_close(&s->backend);
    ev_io_set(&s->backend_w, -1, 0);
    if (s->down)
        s->down->len = 0; /* only the backend's bytes are here before the relay */
    if (s->prelude)
        s->prelude->len = 0;
    s->prelude_seen = 0;
    try_backend(s, why);
}

/* What an xclient backend is told about the client (db->who). */
static void describe_client(const struct session *s, struct client_identity *who)
{
    memset(who, 0, sizeof *who);
    who->ipv6 = sock_addr_numeric(&s->peer.sa, who->addr, sizeof who->addr, &who->port) == AF_INET6;
    union sock_any local = s->local;
    socklen_t len = sizeof local;
    if (s->has_local || getsockname(s->client.fd, &local.sa, &len) == 0)
        if (!sock_addr_numeric(&local.sa, who->local_addr, sizeof who->local_addr,
                               &who->local_port))
            who->local_addr[0] = '\0';
}

/* Starts the backend's cleartext part. An xclient backend is told who the
 * client is once its greeting was read, inside TLS where there is TLS:
 * after the greeting (plain, implicit TLS) or after STARTTLS (IDENTIFY). */
static void start_prelude(struct session *s, enum backend_mode mode)
{
    dialogue_backend_init(&s->db, s->dialogue, mode, s->listener->hostname);
    s->prelude_seen = 0;
    session_enter(s, SESSION_PRELUDE);
    if (s->target->xclient && mode != BACKEND_STARTTLS && s->mode == MODE_TERMINATE) {
        struct client_identity who;
        describe_client(s, &who);
        if (held(s, &s->prelude))
            dialogue_backend_identify(&s->db, s->dialogue, &who, s->prelude);
    }
}

static void start_backend_tls(struct session *s)
{
    const struct cfg_backend *backend = s->target;
    SSL_CTX *ctx = server_backend_ctx(s->server, backend);
    SSL *ssl =
        ctx ? tls_client_new(ctx, backend->tls_name ? backend->tls_name : s->endpoint->host) : NULL;
    if (!ssl) {
        fail_with_reply(s, "cannot create backend TLS session");
        return;
    }
    conn_start_tls(&s->backend, ssl);
    s->backend_hs_wait = EV_WRITE;
    session_enter(s, SESSION_BACKEND_HANDSHAKE);
}

/* The PROXY header is the first thing on a backend connection that wants
 * one, before a STARTTLS backend's greeting, a TLS handshake or a relayed
 * ClientHello: it names the client and the address the client reached,
 * and in v2 the SNI and, when sallyport terminated TLS, the negotiated ALPN
 * protocol, TLS version and cipher. The connection is fresh, so its empty
 * send buffer takes the whole header in one write. Returns false (and
 * fails the session) if it could not be sent. */
static bool send_proxy_header(struct session *s)
{
    enum proxy_version version = s->target->proxy_protocol;
    if (version == PROXY_NONE)
        return true;
    union sock_any local = s->local;
    socklen_t len = sizeof local;
    if (!s->has_local && getsockname(s->client.fd, &local.sa, &len) < 0)
        local.sa.sa_family = AF_UNSPEC; /* sent as UNKNOWN / UNSPEC */
    uint8_t header[PROXY_HEADER_MAX];
    size_t n;
    if (version == PROXY_V1) {
        n = proxy_header_v1(&s->peer.sa, &local.sa, (char *)header, sizeof header);
    } else {
        char alpn[256] = "";
        struct proxy_tlvs tlvs = {.authority = s->has_sni ? s->sni : NULL};
        if (client_in_tls(s)) {
            const unsigned char *selected = NULL;
            unsigned selected_len = 0;
            SSL_get0_alpn_selected(s->client.ssl, &selected, &selected_len);
            if (selected_len > 0 && selected_len < sizeof alpn) {
                memcpy(alpn, selected, selected_len);
                alpn[selected_len] = '\0';
                tlvs.alpn = alpn;
            }
            tlvs.ssl = true;
            tlvs.ssl_version = SSL_get_version(s->client.ssl);
            tlvs.ssl_cipher = SSL_get_cipher_name(s->client.ssl);
        }
        n = proxy_header_v2(&s->peer.sa, &local.sa, &tlvs, header, sizeof header);
    }
    if (n == 0 || send(s->backend.fd, header, n, MSG_NOSIGNAL) != (ssize_t)n) {
        backend_failed(s, "cannot send the PROXY header to the backend");
        return false;
    }
    return true;
}

/* The connect finished: take the path the listener/backend pair calls for. */
static void on_connected(struct session *s)
{
    int err = sock_connect_result(s->backend.fd);
    if (err) {
        char why[160];
        snprintf(why, sizeof why, "backend connect failed: %s", strerror(err));
        backend_failed(s, why);
        return;
    }
    if (!send_proxy_header(s))
        return;
    enum tls_flavour flavour = s->endpoint->tls;
    if (s->mode == MODE_PASSTHROUGH && s->client.ssl) {
        /* Never: what sallyport decrypted must not pass for the client's TLS. */
        fail_with_reply(s, "internal error: passthrough of a terminated session");
        return;
    }
    if (s->mode == MODE_PASSTHROUGH) {
        /* Config validation guarantees implicit->implicit, starttls->starttls. */
        if (flavour == TLS_STARTTLS)
            start_prelude(s, BACKEND_STARTTLS);
        else
            start_relay(s);
        return;
    }
    switch (flavour) {
    case TLS_PLAIN:
        start_prelude(s, BACKEND_GREETING_ONLY);
        break;
    case TLS_IMPLICIT:
        start_backend_tls(s);
        break;
    case TLS_STARTTLS:
        start_prelude(s, BACKEND_STARTTLS);
        break;
    }
}

/* The prelude is over: anything the backend sent beyond what was asked is
 * response injection. Returns false (and fails the session) if so. */
static bool backend_said_nothing_more(struct session *s)
{
    if (buf_slot_len(s->down) == s->prelude_seen)
        return true;
    backend_failed(s, "response injection: backend sent bytes after its go-ahead");
    return false;
}

/* One line from the backend (its '\n' included in line_len). */
static void on_prelude_line(struct session *s, const char *line, size_t line_len)
{
    size_t n = line_len - 1;
    if (n > 0 && line[n - 1] == '\r')
        n--;
    if (!held(s, &s->prelude))
        return;
    enum backend_step step = s->dialogue->on_backend_line(&s->db, line, n, s->prelude);
    switch (step) {
    case BACKEND_NEED_MORE:
        return;
    case BACKEND_FAILED:
        backend_failed(s, s->db.reason);
        return;
    case BACKEND_GREETED:
        if (!backend_said_nothing_more(s))
            return;
        if (s->db.mode == BACKEND_IDENTIFY) {
            greet_after_backend_starttls(s);
            return;
        }
        /* A client greeted by us must not see a second greeting, unless
         * the protocol greets again after STARTTLS (ManageSieve). */
        if (s->client_greeted && !s->dialogue->greets_after_starttls)
            buf_consume(s->down, s->prelude_seen);
        start_relay(s);
        return;
    case BACKEND_TLS_READY:
        if (!backend_said_nothing_more(s))
            return;
        s->down->len = 0;
        if (s->mode == MODE_PASSTHROUGH)
            start_relay(s);
        else
            start_backend_tls(s);
        return;
    }
}

static void on_prelude_io(struct session *s, int revents)
{
    if (buf_slot_len(s->prelude) > 0) {
        ssize_t n = conn_write(&s->backend, s->prelude->data, s->prelude->len);
        if (n > 0)
            buf_consume(s->prelude, (size_t)n);
        else if (n != CONN_WANT_WRITE && n != CONN_WANT_READ) {
            backend_failed(s, "backend closed during the prelude");
            return;
        }
    }
    if (!(revents & EV_READ) && !conn_pending(&s->backend))
        return;
    /* TLS may hold more records than one read returns (read-ahead): no
     * socket event would announce them, so read on while it does. */
    while (read_prelude(s) && s->state == SESSION_PRELUDE && conn_pending(&s->backend))
        ;
}

/* Reads once from the backend and feeds every complete line to the
 * prelude dialogue. Returns whether bytes arrived. */
static bool read_prelude(struct session *s)
{
    struct buf *down = held(s, &s->down);
    if (!down)
        return false;
    ssize_t n = conn_read(&s->backend, down->data + down->len, buf_space(down));
    if (n == CONN_WANT_READ || n == CONN_WANT_WRITE)
        return false;
    if (n <= 0) {
        backend_failed(s, "backend closed during the prelude");
        return false;
    }
    down->len += (size_t)n;
    /* Feed complete lines, bounded by the dialogue's line limit. */
    while (s->state == SESSION_PRELUDE && s->prelude_seen < down->len) {
        const uint8_t *start = down->data + s->prelude_seen;
        size_t avail = down->len - s->prelude_seen;
        const uint8_t *nl = memchr(start, '\n', avail);
        if (!nl) {
            if (avail > DIALOGUE_LINE_MAX)
                backend_failed(s, "backend line too long in the prelude");
            return true;
        }
        size_t len = (size_t)(nl - start) + 1;
        if (len > DIALOGUE_LINE_MAX) {
            backend_failed(s, "backend line too long in the prelude");
            return true;
        }
        /* The client gets the greeting of a GREETING_ONLY backend; any
         * other line (the STARTTLS dance, naming the client) is taken out
         * of the buffer before it is parsed, which then holds only what
         * is forwarded and what is not parsed yet. */
        if (s->db.mode == BACKEND_GREETING_ONLY && !s->db.greeted) {
            s->prelude_seen += len;
            on_prelude_line(s, (const char *)start, len);
        } else {
            char line[DIALOGUE_LINE_MAX];
            memcpy(line, start, len);
            memmove(down->data + s->prelude_seen, down->data + s->prelude_seen + len,
                    down->len - s->prelude_seen - len);
            down->len -= len;
            on_prelude_line(s, line, len);
        }
    }
    return true;
}

static void on_backend_handshake_io(struct session *s)
{
    int r = conn_handshake(&s->backend);
    if (r == CONN_WANT_READ || r == CONN_WANT_WRITE) {
        s->backend_hs_wait = r == CONN_WANT_READ ? EV_READ : EV_WRITE;
        return;
    }
    if (r != CONN_DONE) {
        char why[200];
        long verify = SSL_get_verify_result(s->backend.ssl);
        if (verify != X509_V_OK)
            snprintf(why, sizeof why, "backend certificate rejected: %s",
                     X509_verify_cert_error_string(verify));
        else
            snprintf(why, sizeof why, "backend TLS handshake failed: %s", conn_error());
        backend_failed(s, why);
        return;
    }
    if (s->endpoint->tls == TLS_IMPLICIT) {
        start_prelude(s, BACKEND_GREETING_ONLY); /* its greeting comes inside TLS */
        on_prelude_io(s, EV_READ);               /* it may already be decrypted */
        return;
    }
    if (s->target->xclient) {
        start_prelude(s, BACKEND_IDENTIFY); /* name the client inside TLS first */
        return;
    }
    greet_after_backend_starttls(s);
}

/* STARTTLS backend, TLS up (and the client named): its greeting went to
 * the dance, so a client not yet greeted gets one from sallyport. A
 * protocol that greets after STARTTLS gets that from the backend itself. */
static void greet_after_backend_starttls(struct session *s)
{
    if (!s->client_greeted && !s->dialogue->greets_after_starttls) {
        if (!held(s, &s->down))
            return;
        s->dialogue->fresh_greeting(s->listener->hostname, s->down);
    }
    start_relay(s);
}

/* ---- relay ---------------------------------------------------------------- */

static void start_relay(struct session *s)
{
    health_served(s->server->health, HEALTH_SESSION, s->target, s->listener->service,
                  s->target_addr, ev_now(s->worker->loop));
    s->relay_preloaded = buf_slot_len(s->up);
    relay_init(&s->relay, &s->client, &s->backend, &s->up, &s->down, session_bufs(s),
               session_pipes(s));
    s->relay_started = true;
    session_enter(s, SESSION_RELAY);
    arm_timer(s, s->server->config->global.idle_timeout);
    on_relay_io(s, 0, 0); /* bytes buffered before the relay go out now */
}

static void on_relay_io(struct session *s, int client_revents, int backend_revents)
{
    uint64_t before = s->relay.up.bytes + s->relay.down.bytes;
    switch (relay_step(&s->relay, client_revents, backend_revents)) {
    case RELAY_OPEN:
        break;
    case RELAY_MORE: /* fed in session_update(), after the watchers are set */
        s->relay_more = true;
        break;
    case RELAY_DONE:
        session_close(s, LOG_LEVEL_INFO, "closed");
        return;
    case RELAY_ERROR:
        session_close(s, LOG_LEVEL_INFO, "%s", relay_error());
        return;
    }
    if (s->relay.up.bytes + s->relay.down.bytes != before)
        ev_timer_again(s->worker->loop, &s->timer);
}

/* ---- event dispatch ------------------------------------------------------- */

/* The final reply is out: say goodbye (close_notify, FIN) and discard what
 * the client still sends, so that the close is not a reset. */
static void begin_lingering(struct session *s)
{
    conn_shutdown_write(&s->client);
    s->lingered_bytes = 0;
    session_enter(s, SESSION_LINGERING);
    arm_timer(s, LINGER_TIMEOUT);
}

static void on_draining_io(struct session *s)
{
    if (!flush_client(s, &s->drain_wait))
        return;
    if (buf_slot_len(s->down) == 0)
        begin_lingering(s);
}

/* Client input after the final reply is never interpreted: it is read from
 * the socket (raw, even under TLS) and dropped, until EOF, an error, the
 * byte bound or the linger timer. close_reason was set on the way in. */
static void on_lingering_io(struct session *s)
{
    unsigned char scratch[4096];
    for (;;) {
        ssize_t n = recv(s->client.fd, scratch, sizeof scratch, 0);
        if (n > 0) {
            s->lingered_bytes += (size_t)n;
            if (s->lingered_bytes <= LINGER_BYTES_MAX)
                continue;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        }
        session_enter(s, SESSION_CLOSED);
        return;
    }
}

/* Advances the session after any event, whichever side it came from. */
static void session_advance(struct session *s, int client_revents, int backend_revents)
{
    switch (s->state) {
    case SESSION_PROXY_HEADER:
        on_proxy_header_io(s);
        break;
    case SESSION_CLEARTEXT:
        on_cleartext_io(s, client_revents);
        break;
    case SESSION_CLIENTHELLO:
        on_clienthello_io(s);
        break;
    case SESSION_CLIENT_HANDSHAKE:
        on_client_handshake_io(s);
        break;
    case SESSION_CONNECTING:
        if (backend_revents)
            on_connected(s);
        break;
    case SESSION_PRELUDE:
        on_prelude_io(s, backend_revents);
        break;
    case SESSION_BACKEND_HANDSHAKE:
        on_backend_handshake_io(s);
        break;
    case SESSION_RELAY:
        on_relay_io(s, client_revents, backend_revents);
        break;
    case SESSION_DRAINING:
        on_draining_io(s);
        break;
    case SESSION_LINGERING:
        on_lingering_io(s);
        break;
    case SESSION_CLOSED:
        break;
    }
}

static void on_client_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct session *s = w->data;
    session_advance(s, revents, 0);
    session_update(s);
}

static void on_backend_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct session *s = w->data;
    session_advance(s, 0, revents);
    session_update(s);
}

/* Events each side must wait for, derived from the state and the buffers. */
static void wanted_events(const struct session *s, int *client, int *backend)
{
    *client = *backend = 0;
    switch (s->state) {
    case SESSION_PROXY_HEADER:
        *client = EV_READ;
        break;
    case SESSION_CLEARTEXT:
        if (buf_slot_len(s->down) > 0)
            *client |= EV_WRITE;
        if (!s->starttls_pending && buf_slot_space(s->up) > 0 &&
            buf_slot_space(s->down) >= REPLY_BACKLOG_MAX)
            *client |= EV_READ;
        break;
    case SESSION_CLIENTHELLO:
        *client = EV_READ;
        break;
    case SESSION_CLIENT_HANDSHAKE:
        *client = s->client_hs_wait;
        break;
    case SESSION_CONNECTING:
        *backend = EV_WRITE;
        break;
    case SESSION_PRELUDE:
        *backend = EV_READ | (buf_slot_len(s->prelude) > 0 ? EV_WRITE : 0);
        break;
    case SESSION_BACKEND_HANDSHAKE:
        *backend = s->backend_hs_wait;
        break;
    case SESSION_RELAY:
        *client = relay_events(&s->relay, &s->client);
        *backend = relay_events(&s->relay, &s->backend);
        break;
    case SESSION_DRAINING:
        *client = s->drain_wait ? s->drain_wait : EV_WRITE;
        break;
    case SESSION_LINGERING:
        *client = EV_READ;
        break;
    case SESSION_CLOSED:
        break;
    }
}

static void set_watcher(struct ev_loop *loop, ev_io *w, int fd, int *current, int wanted)
{
    if (fd < 0 || wanted == *current)
        return;
    ev_io_stop(loop, w);
    ev_io_set(w, fd, wanted);
    if (wanted)
        ev_io_start(loop, w);
    *current = wanted;
}

static void session_update(struct session *s)
{
    if (s->state == SESSION_CLOSED) {
        session_free(s);
        return;
    }
    /* An idle session holds no buffer. */
    buf_pool_give_if_empty(session_bufs(s), &s->up);
    buf_pool_give_if_empty(session_bufs(s), &s->down);
    buf_pool_give_if_empty(session_bufs(s), &s->prelude);
    int client, backend;
    wanted_events(s, &client, &backend);
    struct ev_loop *loop = s->worker->loop;
    set_watcher(loop, &s->client_w, s->client.fd, &s->client_events, client);
    set_watcher(loop, &s->backend_w, s->backend.fd, &s->backend_events, backend);
    if (s->relay_more) {
        /* The relay stopped at its round limit with bytes still moving: go
         * on after the loop's other watchers (bytes TLS holds would get no
         * socket event). Fed after set_watcher(), whose ev_io_stop() would
         * drop a pending event. */
        s->relay_more = false;
        ev_feed_event(loop, &s->client_w, 0);
    }
}

/* ---- accept --------------------------------------------------------------- */

/* Turns away a client over its address's limits, before any session exists:
 * one non-blocking write of the protocol's refusal where the client expects
 * a cleartext greeting (an implicit-TLS client just sees the close, as a TLS
 * handshake would cost more than the refusal is worth), then one log line. */
static void refuse_client(struct listener *listener, int fd, const struct sockaddr *peer,
                          enum client_verdict verdict)
{
    const struct cfg_listener *cfg = listener->cfg;
    const struct service_info *service = service_info(cfg->service);
    if (service->tls == TLS_STARTTLS) {
        struct buf reply = {.len = 0};
        dialogue_for(service->proto)->busy_reply(cfg->hostname, &reply);
        (void)send(fd, reply.data, reply.len, MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    close(fd);
    /* Refusals are cheap, their log lines are not: at most
     * REFUSALS_LOGGED_PER_SECOND a second, then one line with the count. */
    struct worker *worker = listener->worker;
    long long second = (long long)ev_now(worker->loop);
    if (second != worker->refusal_second) {
        if (worker->refusals_unlogged)
            log_warn("refused %lu more connections over the client limits (not logged one by "
                     "one)",
                     worker->refusals_unlogged);
        worker->refusal_second = second;
        worker->refusals_logged = 0;
        worker->refusals_unlogged = 0;
    }
    if (worker->refusals_logged >= REFUSALS_LOGGED_PER_SECOND) {
        worker->refusals_unlogged++;
        return;
    }
    worker->refusals_logged++;
    char addr[64];
    sock_addr_format(peer, addr, sizeof addr);
    log_warn("session listener=%s client=%s worker=%u sni=- route=- backend=- backend_addr=- "
             "mode=%s tls=- cipher=- bytes_in=0 bytes_out=0 duration=0.000s close=\"%s\"",
             cfg->name, addr, worker->id, cfg->mode == MODE_TERMINATE ? "terminate" : "passthrough",
             refusal_reason(verdict));
}

/* Why a client over its address's limits was turned away. */
static const char *refusal_reason(enum client_verdict verdict)
{
    return verdict == CLIENT_TOO_MANY ? "refused: max_client_connections reached"
                                      : "refused: client_connection_rate exceeded";
}

/* The session's client is known (the peer, or the client a PROXY header
 * named) and admitted: greet it, or wait for its TLS. */
static void enter(struct session *s, enum session_state next, bool first)
{
    if (first)
        s->state = next; /* the initial state: nothing to log */
    else
        session_enter(s, next);
}

static void session_begin(struct session *s, bool first)
{
    const struct cfg_global *global = &s->server->config->global;
    if (s->service->tls == TLS_STARTTLS) {
        dialogue_server_init(&s->ds, s->listener->hostname, global->max_errors);
        if (!held(s, &s->down))
            return;
        s->dialogue->greet(&s->ds, s->down);
        s->client_greeted = true;
        enter(s, SESSION_CLEARTEXT, first);
        arm_timer(s, global->plaintext_timeout);
    } else {
        enter(s, SESSION_CLIENTHELLO, first);
        arm_timer(s, global->handshake_timeout);
    }
}

/* How many more bytes surely belong to a PROXY header whose first `len`
 * bytes are in `data`, so that reading them never takes a byte of what
 * follows (a ClientHello, say, that OpenSSL must read itself). 0 means the
 * end is not known yet: a v1 line ends at its LF. */
static size_t proxy_bytes_wanted(const uint8_t *data, size_t len)
{
    if (len == 0)
        return 1;
    if (data[0] != '\r') /* v1 (or no header at all, which the parser refuses) */
        return 0;
    if (len < PROXY_V2_FIXED)
        return PROXY_V2_FIXED - len;
    size_t total = PROXY_V2_FIXED + ((size_t)data[14] << 8 | data[15]);
    return total > len ? total - len : 0;
}

/* Reads more of the PROXY header into `head`, never past its end. Returns
 * the bytes read, or a conn_result. */
static ssize_t read_proxy_header(int fd, struct buf *head)
{
    size_t want = proxy_bytes_wanted(head->data, head->len);
    ssize_t n;
    if (want == 0) {
        /* v1: up to its LF, or everything there is (all of it header). The
         * parser refuses a line without LF within PROXY_V1_MAX bytes. */
        uint8_t peek[PROXY_V1_MAX];
        n = recv(fd, peek, PROXY_V1_MAX - head->len, MSG_PEEK);
        if (n > 0) {
            const uint8_t *lf = memchr(peek, '\n', (size_t)n);
            want = lf ? (size_t)(lf - peek) + 1 : (size_t)n;
        }
    }
    if (want > 0)
        n = recv(fd, head->data + head->len, want, 0);
    if (n > 0) {
        head->len += (size_t)n;
        return n;
    }
    if (n == 0)
        return CONN_EOF;
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? CONN_WANT_READ : CONN_ERROR;
}

/* A load balancer's PROXY header comes before anything else. Once it is
 * whole, the client it names (or, for LOCAL, the balancer itself) is the
 * session's client from here on: the limits, the log line and the backend
 * see that address. */
static void on_proxy_header_io(struct session *s)
{
    struct buf *head = held(s, &s->up);
    if (!head)
        return;
    struct proxy_header header;
    const char *why = NULL;
    for (;;) {
        enum proxy_parse_result r = proxy_header_parse(head->data, head->len, &header, &why);
        if (r == PROXY_PARSE_OK)
            break;
        if (r == PROXY_PARSE_BAD) {
            /* No reply (the protocol has not begun), but a FIN, not a reset. */
            snprintf(s->close_reason, sizeof s->close_reason, "bad PROXY header: %s", why);
            s->close_level = LOG_LEVEL_WARN;
            begin_lingering(s);
            return;
        }
        ssize_t n = read_proxy_header(s->client.fd, head);
        if (n == CONN_WANT_READ)
            return;
        if (n < 0) {
            session_close(s, LOG_LEVEL_INFO, "client closed before its PROXY header");
            return;
        }
    }
    head->len = 0; /* all of it was header */
    if (header.has_addresses) {
        char via[64];
        sock_addr_format(&s->peer.sa, via, sizeof via);
        sock_any_set(&s->peer, (const struct sockaddr *)&header.src);
        sock_any_set(&s->local, (const struct sockaddr *)&header.dst);
        s->has_local = true;
        if (log_get_level() <= LOG_LEVEL_DEBUG) {
            char client[64];
            log_debug("session %s: PROXY v%d header from %s",
                      sock_addr_format(&s->peer.sa, client, sizeof client), header.version, via);
        }
    }
    enum client_verdict verdict = server_admit_client(s->server, &s->peer.sa, &s->client_slot);
    if (verdict == CLIENT_ADMITTED) {
        session_begin(s, false);
        return;
    }
    s->client_slot = -1;
    if (s->service->tls != TLS_STARTTLS || !held(s, &s->down)) {
        session_close(s, LOG_LEVEL_WARN, "%s", refusal_reason(verdict));
        return;
    }
    s->dialogue->busy_reply(s->listener->hostname, s->down);
    snprintf(s->close_reason, sizeof s->close_reason, "%s", refusal_reason(verdict));
    s->close_level = LOG_LEVEL_WARN;
    session_enter(s, SESSION_DRAINING);
    arm_timer(s, DRAIN_TIMEOUT);
}

void session_start(struct listener *listener, int fd, const struct sockaddr *peer)
{
    struct worker *worker = listener->worker;
    struct server *server = worker->server;
    const struct cfg_listener *cfg = listener->cfg;
    int slot = -1;
    if (cfg->proxy_protocol) {
        /* Only a trusted balancer may say who the client is; the client's
         * own limits apply once its header has said so. */
        if (!client_prefix_match(cfg->proxy_trusted, cfg->nproxy_trusted, peer)) {
            char addr[64];
            log_warn("listener %s: connection from %s, which is not in proxy_trusted: closed",
                     cfg->name, sock_addr_format(peer, addr, sizeof addr));
            close(fd);
            server_release_session(server);
            return;
        }
    } else {
        enum client_verdict verdict = server_admit_client(server, peer, &slot);
        if (verdict != CLIENT_ADMITTED) {
            refuse_client(listener, fd, peer, verdict);
            server_release_session(server);
            return;
        }
    }
    struct session *s = calloc(1, sizeof *s);
    if (!s) {
        log_error("out of memory: refusing a connection");
        server_release_client(server, slot);
        server_release_session(server);
        close(fd);
        return;
    }
    sock_set_nodelay(fd);
    s->client_slot = slot;
    s->worker = worker;
    s->server = server;
    s->listener = cfg;
    s->mode = cfg->mode;
    s->service = service_info(cfg->service);
    s->dialogue = dialogue_for(s->service->proto);
    s->started = ev_now(worker->loop);
    s->close_level = LOG_LEVEL_INFO;
    sock_any_set(&s->peer, peer);
    conn_init(&s->client, fd);
    conn_init(&s->backend, -1);
    ev_io_init(&s->client_w, on_client_io, fd, 0);
    ev_io_init(&s->backend_w, on_backend_io, -1, 0);
    ev_init(&s->timer, on_timer);
    s->client_w.data = s->backend_w.data = s->timer.data = s;

    s->next = worker->sessions;
    if (worker->sessions)
        worker->sessions->prev = s;
    worker->sessions = s;
    worker->nsessions++;

    if (cfg->proxy_protocol) {
        s->state = SESSION_PROXY_HEADER; /* the initial state: nothing to log */
        arm_timer(s, server->config->global.handshake_timeout);
    } else {
        session_begin(s, true);
    }
    session_update(s);
}
