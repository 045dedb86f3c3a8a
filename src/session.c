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
#include "acme_challenge.h"
#include "client_table.h"
#include "clienthello.h"
#include "conn.h"
#include "dialogue/dialogue.h"
#include "health.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "overload.h"
#include "proxy_header.h"
#include "relay.h"
#include "route.h"
#include "generation.h"
#include "server.h"
#include "session.h"
#include "session_internal.h"
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
/* Log lines for clients turned away by the client limits, per second. */
#define REFUSALS_LOGGED_PER_SECOND 20

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

/* What the metrics call each state (enum metrics_phase). */
static const unsigned char state_phases[] = {
    [SESSION_PROXY_HEADER] = PHASE_HANDSHAKE,
    [SESSION_CLEARTEXT] = PHASE_CLEARTEXT,
    [SESSION_CLIENTHELLO] = PHASE_HANDSHAKE,
    [SESSION_CLIENT_HANDSHAKE] = PHASE_HANDSHAKE,
    [SESSION_CONNECTING] = PHASE_CONNECTING,
    [SESSION_PRELUDE] = PHASE_CONNECTING,
    [SESSION_BACKEND_HANDSHAKE] = PHASE_CONNECTING,
    [SESSION_RELAY] = PHASE_RELAY,
    [SESSION_DRAINING] = PHASE_CLOSING,
    [SESSION_LINGERING] = PHASE_CLOSING,
    [SESSION_CLOSED] = PHASE_NONE,
};

static void session_update(struct session *s);
static const char *refusal_reason(enum client_verdict verdict);
static void on_proxy_header_io(struct session *s);
static void session_close(struct session *s, enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void on_relay_io(struct session *s, int client_revents, int backend_revents);

/* ---- state and timers ----------------------------------------------------- */

void session_enter(struct session *s, enum session_state next)
{
    if (log_get_level() <= LOG_LEVEL_DEBUG) {
        char peer[64];
        log_debug("session %s: %s -> %s", sock_addr_format(&s->peer.sa, peer, sizeof peer),
                  state_names[s->state], state_names[next]);
    }
    metrics_phase_move(s->metrics, (enum metrics_phase)state_phases[s->state],
                       (enum metrics_phase)state_phases[next]);
    s->state = next;
}

void session_set_outcome(struct session *s, int outcome)
{
    if (s->outcome == OUTCOME_UNSET)
        s->outcome = (uint8_t)outcome;
}

/* The client's TLS did not come about, for `why`. */
static void tls_failed(struct session *s, enum metrics_tls_failure why)
{
    metrics_count(&s->metrics->tls_failures[why], 1);
}

/* Arms the session's single timer for the current phase. */
void session_arm_timer(struct session *s, double seconds)
{
    ev_timer_stop(s->worker->loop, &s->timer);
    ev_timer_set(&s->timer, seconds, seconds);
    ev_timer_start(s->worker->loop, &s->timer);
}

struct buf_pool *session_bufs(const struct session *s)
{
    return &s->worker->bufs;
}

struct pipe_pool *session_pipes(const struct session *s)
{
    return &s->worker->pipes;
}

/* The buffer in `slot`, taken from the pool if the slot holds none. Returns
 * NULL (and closes the session) when out of memory. */
struct buf *session_held(struct session *s, struct buf **slot)
{
    if (!*slot && !(*slot = buf_pool_take(session_bufs(s)))) {
        session_set_outcome(s, OUTCOME_INTERNAL_ERROR);
        session_close(s, LOG_LEVEL_ERROR, "out of memory for a buffer");
    }
    return *slot;
}

bool session_client_in_tls(const struct session *s)
{
    return s->client.ssl && SSL_is_init_finished(s->client.ssl);
}

/* Closes after telling the client why, if the protocol lets us: in the
 * cleartext phase, or inside a terminated TLS session. Otherwise closes. */
void session_fail_with_reply(struct session *s, const char *reason)
{
    bool can_reply = s->state == SESSION_CLEARTEXT || session_client_in_tls(s);
    if (!can_reply) {
        session_set_outcome(s, OUTCOME_BACKEND_FAILED);
        session_close(s, LOG_LEVEL_INFO, "%s", reason);
        return;
    }
    if (!session_held(s, &s->down))
        return;
    s->down->len = 0;
    session_set_outcome(s, OUTCOME_BACKEND_FAILED);
    s->dialogue->unavailable_reply(s->listener->hostname, s->down);
    snprintf(s->close_reason, sizeof s->close_reason, "%s", reason);
    s->close_level = LOG_LEVEL_WARN;
    session_enter(s, SESSION_DRAINING);
    session_arm_timer(s, DRAIN_TIMEOUT);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    struct session *s = w->data;
    switch (s->state) {
    case SESSION_PROXY_HEADER:
        session_set_outcome(s, OUTCOME_TIMEOUT);
        session_close(s, LOG_LEVEL_INFO, "PROXY header timeout");
        break;
    case SESSION_CLEARTEXT:
        if (!session_held(s, &s->down))
            break;
        s->down->len = 0;
        s->dialogue->timeout_reply(&s->ds, s->down);
        session_set_outcome(s, OUTCOME_TIMEOUT);
        snprintf(s->close_reason, sizeof s->close_reason, "cleartext phase timeout");
        session_enter(s, SESSION_DRAINING);
        session_arm_timer(s, DRAIN_TIMEOUT);
        break;
    case SESSION_CLIENTHELLO:
    case SESSION_CLIENT_HANDSHAKE:
        session_set_outcome(s, OUTCOME_TIMEOUT);
        tls_failed(s, TLSFAIL_TIMEOUT);
        session_close(s, LOG_LEVEL_INFO, "client TLS handshake timeout");
        break;
    case SESSION_CONNECTING:
    case SESSION_PRELUDE:
    case SESSION_BACKEND_HANDSHAKE:
        backend_failed(s, "backend timeout");
        break;
    case SESSION_RELAY:
        session_set_outcome(s, OUTCOME_TIMEOUT);
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

/* The closed session's outcome and bytes, for the metrics. */
static void count_session(const struct session *s, uint64_t in, uint64_t out)
{
    enum metrics_outcome outcome = s->outcome != OUTCOME_UNSET ? (enum metrics_outcome)s->outcome
                                   : s->relay_started          ? OUTCOME_RELAYED
                                                               : OUTCOME_CLIENT_CLOSED;
    metrics_count(&s->metrics->connections[outcome], 1);
    metrics_count(&s->metrics->bytes_in, in);
    metrics_count(&s->metrics->bytes_out, out);
    if (s->route) {
        struct metrics_route *r = s->gen->route_metrics[s->route - s->gen->config->routes];
        metrics_count(&r->bytes_in, in);
        metrics_count(&r->bytes_out, out);
    }
}

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
    count_session(s, in, out);
    log_msg(
        s->close_level,
        "session listener=%s client=%s worker=%u gen=%u sni=%s route=%s backend=%s backend_addr=%s "
        "failed=%s mode=%s tls=%s cipher=%s bytes_in=%llu bytes_out=%llu duration=%.3fs "
        "close=\"%s\"",
        s->listener->name, sock_addr_format(&s->peer.sa, peer, sizeof peer), s->worker->id,
        s->gen->number, sni, s->route ? s->route->name : "-", s->target ? s->target->name : "-",
        backend_addr, failed, s->mode == MODE_TERMINATE ? "terminate" : "passthrough", version,
        cipher, (unsigned long long)in, (unsigned long long)out,
        ev_now(s->worker->loop) - s->started, s->close_reason);
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
    generation_release(s->gen);
    free(s);
}

void session_abort(struct session *s, const char *reason)
{
    session_close(s, LOG_LEVEL_INFO, "%s", reason);
    session_update(s);
}

void session_goodbye(struct session *s)
{
    switch (s->state) {
    case SESSION_DRAINING:
    case SESSION_LINGERING:
    case SESSION_CLOSED:
        return; /* leaving already */
    default:
        break;
    }
    session_set_outcome(s, OUTCOME_SHUTDOWN);
    switch (s->state) {
    case SESSION_CLEARTEXT:
    case SESSION_CONNECTING:
    case SESSION_PRELUDE:
    case SESSION_BACKEND_HANDSHAKE:
        /* A reply where the client can take one, else a plain close. */
        session_fail_with_reply(s, "shutting down");
        break;
    default:
        session_close(s, LOG_LEVEL_INFO, "shutting down");
        break;
    }
    session_update(s);
}

/* A session that has done least: it has sent nothing at all for
 * OVERLOAD_IDLE_MIN seconds, and has not begun TLS (a PROXY header or
 * ClientHello still awaited, or the greeting of a STARTTLS listener sent
 * and no command back). */
static bool evictable(const struct session *s, double now)
{
    bool before_tls = s->state == SESSION_PROXY_HEADER || s->state == SESSION_CLIENTHELLO ||
                      s->state == SESSION_CLEARTEXT;
    /* A PROXY header's bytes sit in `up` without counting in bytes_in. */
    return before_tls && s->bytes_in == 0 && buf_slot_len(s->up) == 0 &&
           now - s->started >= OVERLOAD_IDLE_MIN;
}

size_t session_evict_idle(struct worker *w, size_t max)
{
    if (!overload_enabled(w->server))
        return 0;
    size_t evicted = 0;
    double now = ev_now(w->loop);
    struct session *s = w->sessions;
    while (s && s->next)
        s = s->next; /* the oldest: sessions are added at the head */
    while (s && evicted < max) {
        struct session *newer = s->prev;
        if (evictable(s, now)) {
            if (s->state == SESSION_CLEARTEXT) {
                /* The protocol's "try later", if the socket takes it now. */
                struct buf reply = {.len = 0};
                s->dialogue->unavailable_reply(s->listener->hostname, &reply);
                (void)send(s->client.fd, reply.data, reply.len, MSG_DONTWAIT | MSG_NOSIGNAL);
            }
            session_set_outcome(s, OUTCOME_EVICTED);
            session_abort(s, "evicted: overloaded, and it had said nothing");
            evicted++;
        }
        s = newer;
    }
    return evicted;
}

struct session *session_next(const struct session *s)
{
    return s->next;
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
    session_arm_timer(s, overload_timeout(s->server, s->gen->config->global.handshake_timeout));
    session_enter(s, SESSION_CLIENTHELLO);
}

/* Runs every complete line in `up` through the dialogue. */
static void run_dialogue(struct session *s)
{
    while (s->state == SESSION_CLEARTEXT && !s->starttls_pending && buf_slot_len(s->up) > 0) {
        struct buf *up = s->up, *down = session_held(s, &s->down);
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
            session_set_outcome(s, OUTCOME_PROTOCOL_ERROR);
            session_close(s, LOG_LEVEL_WARN,
                          "TLS handshake before STARTTLS (a client configured for implicit "
                          "TLS on a STARTTLS port?)");
            return;
        }
        size_t len = buf_line_length(up);
        size_t replies_before = down->len;
        const char *close_why = "refused in cleartext (a literal before STARTTLS)";
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
        case DIALOGUE_QUIT:
        case DIALOGUE_CLOSE:
            snprintf(s->close_reason, sizeof s->close_reason, "%s", close_why);
            if (action == DIALOGUE_QUIT)
                snprintf(s->close_reason, sizeof s->close_reason, "client quit in cleartext");
            else if (s->ds.errors >= s->ds.max_errors)
                snprintf(s->close_reason, sizeof s->close_reason, "too many errors");
            session_set_outcome(s, action == DIALOGUE_QUIT ? OUTCOME_CLIENT_CLOSED
                                                           : OUTCOME_PROTOCOL_ERROR);
            session_enter(s, SESSION_DRAINING);
            session_arm_timer(s, DRAIN_TIMEOUT);
            return;
        case DIALOGUE_STARTTLS:
            if (!buf_empty(up) || s->discarding_line) {
                /* CVE-2011-0411 class: bytes pipelined behind STARTTLS would
                 * be read as if they came inside TLS. Never answer them, and
                 * withdraw the go-ahead. */
                down->len = replies_before;
                session_set_outcome(s, OUTCOME_PROTOCOL_ERROR);
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
        struct buf *up = session_held(s, &s->up);
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
    s->route = route_lookup(s->gen->config->routes, s->gen->config->nroutes, sni);
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

/* A CA checking a name by tls-alpn-01 (RFC 8737): it offers acme-tls/1
 * alone, on an implicit-TLS port. True if this ClientHello is one. */
static bool is_acme_check(const struct session *s, const struct clienthello *hello)
{
    return s->service->tls == TLS_IMPLICIT && hello->alpn_count == 1 &&
           strcmp(hello->alpn[0], TLS_ACME_ALPN) == 0;
}

/* Answers the check with the challenge certificate of the name, when one
 * is pending; the session ends once the handshake is done. */
static void answer_acme_check(struct session *s, const struct clienthello *hello)
{
    SSL_CTX *ctx = hello->has_sni ? acme_challenge_alpn(hello->sni) : NULL;
    if (!ctx) {
        tls_failed(s, TLSFAIL_UNKNOWN_SNI);
        session_set_outcome(s, OUTCOME_NO_ROUTE);
        session_close(s, LOG_LEVEL_INFO,
                      "acme-tls/1 handshake for %s, which has no challenge "
                      "pending",
                      hello->has_sni ? hello->sni : "no name");
        return;
    }
    struct buf *up = s->up;
    SSL *ssl = tls_acme_accept(ctx);
    SSL_CTX_free(ctx); /* the SSL holds its own reference */
    if (!ssl || !conn_start_tls_replay(&s->client, ssl, up->data, up->len)) {
        session_set_outcome(s, OUTCOME_INTERNAL_ERROR);
        session_close(s, LOG_LEVEL_ERROR, "out of memory for TLS");
        return;
    }
    snprintf(s->sni, sizeof s->sni, "%s", hello->sni);
    s->has_sni = true;
    s->bytes_in -= up->len;
    up->len = 0;
    s->mode = MODE_TERMINATE;
    s->acme_challenge = true;
    s->client_hs_wait = EV_READ;
    session_enter(s, SESSION_CLIENT_HANDSHAKE);
    on_client_handshake_io(s);
}

/* An https listener: every connection but a CA's check goes, untouched, to
 * the web server (the listener's backend = NAME). */
static void pass_to_web_server(struct session *s, const struct clienthello *hello)
{
    s->has_sni = hello->has_sni;
    if (hello->has_sni)
        snprintf(s->sni, sizeof s->sni, "%s", hello->sni);
    if (s->listener->web_route == CONFIG_NO_ROUTE) {
        tls_failed(s, TLSFAIL_UNKNOWN_SNI);
        session_set_outcome(s, OUTCOME_NO_ROUTE);
        session_close(s, LOG_LEVEL_INFO,
                      "https listener without a backend: it answers only ACME checks");
        return;
    }
    s->route = &s->gen->config->routes[s->listener->web_route];
    s->mode = MODE_PASSTHROUGH;
    metrics_count(&s->metrics->tls_starts[TLS_START_IMPLICIT], 1);
    backend_connect(s);
}

/* Every TLS connection starts here: its ClientHello names the route, and
 * the route says whether sallyport terminates the TLS or passes it on. */
static void on_clienthello_io(struct session *s)
{
    struct buf *up = session_held(s, &s->up);
    if (!up)
        return;
    ssize_t n = conn_read(&s->client, up->data + up->len, buf_space(up));
    if (n == CONN_WANT_READ)
        return;
    if (n <= 0) {
        tls_failed(s, TLSFAIL_CLIENT_CLOSED);
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
        tls_failed(s, TLSFAIL_NOT_TLS);
        session_set_outcome(s, s->client_greeted ? OUTCOME_PROTOCOL_ERROR : OUTCOME_TLS_FAILED);
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
        tls_failed(s, TLSFAIL_BAD_CLIENTHELLO);
        session_set_outcome(s, OUTCOME_TLS_FAILED);
        session_close(
            s, LOG_LEVEL_INFO, "bad ClientHello: %s",
            clienthello_result_name(r == CLIENTHELLO_NEED_MORE ? CLIENTHELLO_TOO_LARGE : r));
        return;
    }
    if (is_acme_check(s, &hello)) {
        answer_acme_check(s, &hello);
        return;
    }
    if (s->listener->service == SERVICE_HTTPS) {
        pass_to_web_server(s, &hello);
        return;
    }
    if (!route_session(s, hello.has_sni ? hello.sni : NULL)) {
        /* A terminating listener refuses with alert unrecognized_name. */
        if (s->listener->mode == MODE_TERMINATE) {
            terminate_client_tls(s);
        } else {
            tls_failed(s, TLSFAIL_UNKNOWN_SNI);
            session_set_outcome(s, OUTCOME_NO_ROUTE);
            session_close(s, LOG_LEVEL_INFO, "no route for this SNI");
        }
        return;
    }
    s->mode = route_mode(s->listener, s->route);
    if (s->mode == MODE_TERMINATE) {
        terminate_client_tls(s);
    } else {
        metrics_count(&s->metrics->tls_starts[s->service->tls == TLS_STARTTLS ? TLS_START_STARTTLS
                                                                              : TLS_START_IMPLICIT],
                      1);
        backend_connect(s);
    }
}

/* ---- terminate: the client's TLS handshake --------------------------------- */

/* Hands the client's TLS to OpenSSL, which reads the bytes the ClientHello
 * state already took from the socket before the socket itself. */
static void terminate_client_tls(struct session *s)
{
    struct buf *up = s->up;
    SSL *ssl = tls_store_accept(s->gen->store, s);
    if (!ssl || !conn_start_tls_replay(&s->client, ssl, up->data, up->len)) {
        session_set_outcome(s, OUTCOME_INTERNAL_ERROR);
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
        if (s->sni_refused) {
            tls_failed(s, TLSFAIL_UNKNOWN_SNI);
            session_set_outcome(s, OUTCOME_NO_ROUTE);
            session_close(s, LOG_LEVEL_INFO, "no route for this SNI (alert unrecognized_name)");
        } else if (s->alpn_refused) {
            tls_failed(s, TLSFAIL_NO_ALPN);
            session_set_outcome(s, OUTCOME_NO_ROUTE);
            session_close(s, LOG_LEVEL_WARN,
                          "client offered ALPN without '%s' (alert no_application_protocol)",
                          s->dialogue->alpn);
        } else {
            tls_failed(s, metrics_tls_failure_of(conn_error_reason()));
            session_set_outcome(s, OUTCOME_TLS_FAILED);
            session_close(s, LOG_LEVEL_INFO, "client TLS handshake failed: %s", conn_error());
        }
        return;
    }
    if (s->acme_challenge) {
        session_set_outcome(s, OUTCOME_ACME_CHALLENGE);
        session_close(s, LOG_LEVEL_INFO, "answered the tls-alpn-01 challenge for %s", s->sni);
        return;
    }
    metrics_count(&s->metrics->tls_starts[s->service->tls == TLS_STARTTLS ? TLS_START_STARTTLS
                                                                          : TLS_START_IMPLICIT],
                  1);
    metrics_count(&s->metrics->tls_versions[metrics_tls_version_of(SSL_version(s->client.ssl))], 1);
    if (!s->route &&
        !session_route_by_sni(s, SSL_get_servername(s->client.ssl, TLSEXT_NAMETYPE_host_name))) {
        session_set_outcome(s, OUTCOME_NO_ROUTE);
        session_close(s, LOG_LEVEL_INFO, "no route for this SNI");
        return;
    }
    backend_connect(s);
}

/* ---- relay ---------------------------------------------------------------- */

void session_start_relay(struct session *s)
{
    health_served(s->gen->health, HEALTH_SESSION, s->target, s->listener->service, s->target_addr,
                  ev_now(s->worker->loop));
    s->relay_preloaded = buf_slot_len(s->up);
    relay_init(&s->relay, &s->client, &s->backend, &s->up, &s->down, session_bufs(s),
               session_pipes(s));
    s->relay_started = true;
    metrics_count(&s->gen->backend_metrics[s->target - s->gen->config->backends]->sessions, 1);
    metrics_count(&s->gen->route_metrics[s->route - s->gen->config->routes]->sessions, 1);
    session_enter(s, SESSION_RELAY);
    session_arm_timer(s, s->listener->idle_timeout);
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
    session_arm_timer(s, LINGER_TIMEOUT);
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
            backend_on_connected(s);
        break;
    case SESSION_PRELUDE:
        backend_on_prelude_io(s, backend_revents);
        break;
    case SESSION_BACKEND_HANDSHAKE:
        backend_on_handshake_io(s);
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

/* The counters of the listener a connection came to. */
static struct metrics_listener *listener_metrics(const struct listener *l)
{
    const struct generation *gen = l->worker->gen;
    return gen->listener_metrics[l->cfg - gen->config->listeners];
}

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
    struct generation *gen = listener->worker->gen;
    struct metrics_listener *m = listener_metrics(listener);
    metrics_count(&m->connections[OUTCOME_REFUSED], 1);
    metrics_count(
        &m->refusals[verdict == CLIENT_TOO_MANY ? LIMIT_CLIENT_CONNECTIONS : LIMIT_CLIENT_RATE], 1);
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
    log_warn("session listener=%s client=%s worker=%u gen=%u sni=- route=- backend=- "
             "backend_addr=- mode=%s tls=- cipher=- bytes_in=0 bytes_out=0 duration=0.000s "
             "close=\"%s\"",
             cfg->name, addr, worker->id, gen->number,
             cfg->mode == MODE_TERMINATE ? "terminate" : "passthrough", refusal_reason(verdict));
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
    if (first) {
        metrics_phase_move(s->metrics, (enum metrics_phase)state_phases[s->state],
                           (enum metrics_phase)state_phases[next]);
        s->state = next; /* the initial state: nothing to log */
    } else {
        session_enter(s, next);
    }
}

static void session_begin(struct session *s, bool first)
{
    const struct cfg_global *global = &s->gen->config->global;
    if (s->service->tls == TLS_STARTTLS) {
        dialogue_server_init(&s->ds, s->listener->hostname, global->max_errors);
        if (!session_held(s, &s->down))
            return;
        s->dialogue->greet(&s->ds, s->down);
        s->client_greeted = true;
        enter(s, SESSION_CLEARTEXT, first);
        session_arm_timer(s, overload_timeout(s->server, global->plaintext_timeout));
    } else {
        enter(s, SESSION_CLIENTHELLO, first);
        session_arm_timer(s, overload_timeout(s->server, global->handshake_timeout));
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
    struct buf *head = session_held(s, &s->up);
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
            session_set_outcome(s, OUTCOME_PROTOCOL_ERROR);
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
    session_set_outcome(s, OUTCOME_REFUSED);
    metrics_count(&s->metrics->refusals[verdict == CLIENT_TOO_MANY ? LIMIT_CLIENT_CONNECTIONS
                                                                   : LIMIT_CLIENT_RATE],
                  1);
    if (s->service->tls != TLS_STARTTLS || !session_held(s, &s->down)) {
        session_close(s, LOG_LEVEL_WARN, "%s", refusal_reason(verdict));
        return;
    }
    s->dialogue->busy_reply(s->listener->hostname, s->down);
    snprintf(s->close_reason, sizeof s->close_reason, "%s", refusal_reason(verdict));
    s->close_level = LOG_LEVEL_WARN;
    session_enter(s, SESSION_DRAINING);
    session_arm_timer(s, DRAIN_TIMEOUT);
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
            metrics_count(&listener_metrics(listener)->connections[OUTCOME_REFUSED], 1);
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
        metrics_count(&listener_metrics(listener)->connections[OUTCOME_INTERNAL_ERROR], 1);
        server_release_client(server, slot);
        server_release_session(server);
        close(fd);
        return;
    }
    sock_set_nodelay(fd);
    sock_set_keepalive(fd);
    s->client_slot = slot;
    s->worker = worker;
    s->server = server;
    s->gen = generation_hold(worker->gen);
    s->listener = cfg;
    s->metrics = s->gen->listener_metrics[cfg - s->gen->config->listeners];
    s->outcome = OUTCOME_UNSET;
    metrics_phase_move(s->metrics, PHASE_NONE, (enum metrics_phase)state_phases[s->state]);
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
        session_arm_timer(s, overload_timeout(server, s->gen->config->global.handshake_timeout));
    } else {
        session_begin(s, true);
    }
    session_update(s);
}
