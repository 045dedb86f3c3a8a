/* session_backend — a session's backend side: choosing a backend and an
 * address (the route's list, order or round robin, passive health), the
 * connect, the PROXY header, the prelude (greeting, STARTTLS dance, naming
 * the client), the backend's TLS handshake, and moving on to the next
 * backend when one fails before any client byte reached it. */
#include <errno.h>
#include <ev.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "buf.h"
#include "dialogue/dialogue.h"
#include "generation.h"
#include "metrics.h"
#include "overload.h"
#include "health.h"
#include "log.h"
#include "proxy_header.h"
#include "server.h"
#include "session.h"
#include "session_internal.h"
#include "sock.h"
#include "tls.h"
#include "worker.h"

/* Backend addresses one session tries at most before it gives up, and the
 * time it may spend on them all, in connect_timeouts (each try gets at most
 * one, and what is left). */
#define BACKEND_ATTEMPTS_MAX 8
#define BACKEND_TIMEOUTS_MAX 3

static void on_prelude_line(struct session *s, const char *line, size_t line_len);
static bool read_prelude(struct session *s);
static void greet_after_backend_starttls(struct session *s);

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
                (pass == 0 && health_is_down(s->gen->health, b, s->listener->service, addr, now)))
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
        session_fail_with_reply(s, why);
        return;
    }
    s->attempts++;
    double timeout = s->gen->config->global.connect_timeout;
    session_arm_timer(s, timeout < left ? timeout : left);
    session_enter(s, SESSION_CONNECTING);
    int fd = sock_connect(&s->endpoint->addrs[s->target_addr]);
    if (fd < 0 && errno == EMFILE && overload_enabled(s->server)) {
        /* Idle clients that have not begun TLS make room (overload.h). */
        overload_pressure(s->server, OVERLOAD_DESCRIPTORS);
        if (overload_release_reserve(s->server) > 0 ||
            session_evict_idle(s->worker, OVERLOAD_EVICT_BATCH) > 0)
            fd = sock_connect(&s->endpoint->addrs[s->target_addr]);
    }
    if (fd < 0) {
        char reason[160];
        snprintf(reason, sizeof reason, "backend connect failed: %s", strerror(errno));
        if (sock_error_is_local(errno))
            session_fail_with_reply(s, reason); /* our trouble: no backend is to blame */
        else
            backend_failed(s, reason);
        return;
    }
    conn_init(&s->backend, fd);
    ev_io_set(&s->backend_w, fd, 0);
}

/* Choosing a backend is a step: the first try of a routed session. */
void backend_connect(struct session *s)
{
    if (s->route->balance == BALANCE_ROUNDROBIN)
        s->turn = (uint8_t)(health_next_turn(s->gen->health, s->route) % s->route->nbackends);
    s->backend_deadline = ev_now(s->worker->loop) +
                          BACKEND_TIMEOUTS_MAX * (double)s->gen->config->global.connect_timeout;
    try_backend(s, "no backend address to try");
}

/* The backend failed before any client byte reached it: it is marked down
 * (logged when that is news), its connection and whatever it sent are
 * dropped, and the next one is tried. */
void backend_failed(struct session *s, const char *why)
{
    metrics_count(&s->gen->backend_metrics[s->target - s->gen->config->backends]->connect_failures,
                  1);
    health_failed(s->gen->health, HEALTH_SESSION, s->target, s->listener->service, s->target_addr,
                  ev_now(s->worker->loop), why);
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
        if (session_held(s, &s->prelude))
            dialogue_backend_identify(&s->db, s->dialogue, &who, s->prelude);
    }
}

static void start_backend_tls(struct session *s)
{
    const struct cfg_backend *backend = s->target;
    SSL_CTX *ctx = generation_backend_ctx(s->gen, backend);
    SSL *ssl =
        ctx ? tls_client_new(ctx, backend->tls_name ? backend->tls_name : s->endpoint->host) : NULL;
    if (!ssl) {
        session_set_outcome(s, OUTCOME_INTERNAL_ERROR);
        session_fail_with_reply(s, "cannot create backend TLS session");
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
        if (session_client_in_tls(s)) {
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
void backend_on_connected(struct session *s)
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
        session_set_outcome(s, OUTCOME_INTERNAL_ERROR);
        session_fail_with_reply(s, "internal error: passthrough of a terminated session");
        return;
    }
    if (s->mode == MODE_PASSTHROUGH) {
        /* Config validation guarantees implicit->implicit, starttls->starttls. */
        if (flavour == TLS_STARTTLS)
            start_prelude(s, BACKEND_STARTTLS);
        else
            session_start_relay(s);
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
    if (!session_held(s, &s->prelude))
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
        session_start_relay(s);
        return;
    case BACKEND_TLS_READY:
        if (!backend_said_nothing_more(s))
            return;
        s->down->len = 0;
        if (s->mode == MODE_PASSTHROUGH)
            session_start_relay(s);
        else
            start_backend_tls(s);
        return;
    }
}

void backend_on_prelude_io(struct session *s, int revents)
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
    struct buf *down = session_held(s, &s->down);
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

void backend_on_handshake_io(struct session *s)
{
    int r = conn_handshake(&s->backend);
    if (r == CONN_WANT_READ || r == CONN_WANT_WRITE) {
        s->backend_hs_wait = r == CONN_WANT_READ ? EV_READ : EV_WRITE;
        return;
    }
    if (r != CONN_DONE) {
        char why[200];
        conn_handshake_failure(&s->backend, "backend ", why, sizeof why);
        backend_failed(s, why);
        return;
    }
    if (s->endpoint->tls == TLS_IMPLICIT) {
        start_prelude(s, BACKEND_GREETING_ONLY); /* its greeting comes inside TLS */
        backend_on_prelude_io(s, EV_READ);       /* it may already be decrypted */
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
        if (!session_held(s, &s->down))
            return;
        s->dialogue->fresh_greeting(s->listener->hostname, s->down);
    }
    session_start_relay(s);
}
