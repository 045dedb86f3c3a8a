#include <openssl/ssl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "health.h"
#include "log.h"
#include "metrics.h"
#include "sock.h"

/* ---- the registry ---------------------------------------------------------- */

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct metrics_listener *listeners[METRICS_ENTRIES_MAX];
static struct metrics_route *routes[METRICS_ENTRIES_MAX];
static struct metrics_backend *backends[METRICS_ENTRIES_MAX];
static size_t nlisteners, nroutes, nbackends;
/* Where names past the bound (or out of memory) are counted, unseen. */
static struct metrics_listener spare_listener;
static struct metrics_route spare_route;
static struct metrics_backend spare_backend;

static atomic_uint_fast64_t reloads[2]; /* [0] refused, [1] done */

/* ACME certificates, by name (under registry_lock). */
struct metrics_certificate {
    char name[256];
    uint64_t orders[2]; /* [0] failed, [1] done */
    int64_t not_after;
};
static struct metrics_certificate *certificates[METRICS_ENTRIES_MAX];
static size_t ncertificates;

static void *full_registry(const char *kind, const char *name, void *spare)
{
    log_warn("metrics: more than %d %ss named since start; '%s' is not counted",
             METRICS_ENTRIES_MAX, kind, name);
    return spare;
}

struct metrics_listener *metrics_listener(const char *name, enum service service)
{
    struct metrics_listener *m = NULL;
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < nlisteners && !m; i++)
        if (listeners[i]->service == service && strcmp(listeners[i]->name, name) == 0)
            m = listeners[i];
    if (!m && nlisteners < METRICS_ENTRIES_MAX && (m = calloc(1, sizeof *m))) {
        snprintf(m->name, sizeof m->name, "%s", name);
        m->service = service;
        listeners[nlisteners++] = m;
    }
    pthread_mutex_unlock(&registry_lock);
    return m ? m : full_registry("listener", name, &spare_listener);
}

struct metrics_route *metrics_route(const char *name)
{
    struct metrics_route *m = NULL;
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < nroutes && !m; i++)
        if (strcmp(routes[i]->name, name) == 0)
            m = routes[i];
    if (!m && nroutes < METRICS_ENTRIES_MAX && (m = calloc(1, sizeof *m))) {
        snprintf(m->name, sizeof m->name, "%s", name);
        routes[nroutes++] = m;
    }
    pthread_mutex_unlock(&registry_lock);
    return m ? m : full_registry("route", name, &spare_route);
}

struct metrics_backend *metrics_backend(const char *name)
{
    struct metrics_backend *m = NULL;
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < nbackends && !m; i++)
        if (strcmp(backends[i]->name, name) == 0)
            m = backends[i];
    if (!m && nbackends < METRICS_ENTRIES_MAX && (m = calloc(1, sizeof *m))) {
        snprintf(m->name, sizeof m->name, "%s", name);
        backends[nbackends++] = m;
    }
    pthread_mutex_unlock(&registry_lock);
    return m ? m : full_registry("backend", name, &spare_backend);
}

void metrics_certificate(const char *name, int got, int64_t not_after)
{
    struct metrics_certificate *m = NULL;
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < ncertificates && !m; i++)
        if (strcmp(certificates[i]->name, name) == 0)
            m = certificates[i];
    if (!m && ncertificates < METRICS_ENTRIES_MAX && (m = calloc(1, sizeof *m))) {
        snprintf(m->name, sizeof m->name, "%s", name);
        certificates[ncertificates++] = m;
    }
    if (m && got >= 0)
        m->orders[got > 0]++;
    if (m && not_after)
        m->not_after = not_after;
    pthread_mutex_unlock(&registry_lock);
}

void metrics_free_all(void)
{
    pthread_mutex_lock(&registry_lock);
    for (size_t i = 0; i < ncertificates; i++)
        free(certificates[i]);
    ncertificates = 0;
    for (size_t i = 0; i < nlisteners; i++)
        free(listeners[i]);
    for (size_t i = 0; i < nroutes; i++)
        free(routes[i]);
    for (size_t i = 0; i < nbackends; i++)
        free(backends[i]);
    nlisteners = nroutes = nbackends = 0;
    pthread_mutex_unlock(&registry_lock);
}

/* ---- counting ---------------------------------------------------------------- */

void metrics_count(atomic_uint_fast64_t *counter, uint64_t n)
{
    atomic_fetch_add_explicit(counter, n, memory_order_relaxed);
}

void metrics_phase_move(struct metrics_listener *m, enum metrics_phase from, enum metrics_phase to)
{
    if (from == to)
        return;
    if (from < PHASE_COUNT)
        atomic_fetch_sub_explicit(&m->sessions[from], 1, memory_order_relaxed);
    if (to < PHASE_COUNT)
        atomic_fetch_add_explicit(&m->sessions[to], 1, memory_order_relaxed);
}

void metrics_reloaded(bool ok)
{
    metrics_count(&reloads[ok], 1);
}

/* OpenSSL's reason codes, grouped; what is not here is "other". */
static const struct {
    int reason;
    enum metrics_tls_failure failure;
} tls_reasons[] = {
    {SSL_R_NO_SHARED_CIPHER, TLSFAIL_NO_SHARED_CIPHER},
    {SSL_R_NO_SHARED_GROUPS, TLSFAIL_NO_SHARED_CIPHER},
    {SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM, TLSFAIL_NO_SHARED_CIPHER},
    {SSL_R_UNSUPPORTED_PROTOCOL, TLSFAIL_PROTOCOL_VERSION},
    {SSL_R_VERSION_TOO_LOW, TLSFAIL_PROTOCOL_VERSION},
    {SSL_R_TLSV1_ALERT_PROTOCOL_VERSION, TLSFAIL_PROTOCOL_VERSION},
    {SSL_R_WRONG_VERSION_NUMBER, TLSFAIL_PROTOCOL_VERSION},
    {SSL_R_TLSV1_ALERT_UNKNOWN_CA, TLSFAIL_CERTIFICATE_REJECTED},
    {SSL_R_SSLV3_ALERT_BAD_CERTIFICATE, TLSFAIL_CERTIFICATE_REJECTED},
    {SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN, TLSFAIL_CERTIFICATE_REJECTED},
    {SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED, TLSFAIL_CERTIFICATE_REJECTED},
    {SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE, TLSFAIL_CERTIFICATE_REJECTED},
    {SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED, TLSFAIL_CERTIFICATE_REJECTED},
    {SSL_R_TLSV1_ALERT_DECRYPT_ERROR, TLSFAIL_CERTIFICATE_REJECTED},
};

enum metrics_tls_failure metrics_tls_failure_of(int reason)
{
    if (reason < 0)
        return TLSFAIL_CLIENT_CLOSED;
    for (size_t i = 0; i < sizeof tls_reasons / sizeof tls_reasons[0]; i++)
        if (tls_reasons[i].reason == reason)
            return tls_reasons[i].failure;
    return TLSFAIL_OTHER;
}

enum metrics_tls_version metrics_tls_version_of(int version)
{
    return version == TLS1_3_VERSION ? TLSV_1_3 : version == TLS1_2_VERSION ? TLSV_1_2 : TLSV_OTHER;
}

/* ---- the exposition ------------------------------------------------------------ */

static const char *const outcome_names[OUTCOME_COUNT] = {
    [OUTCOME_RELAYED] = "relayed",
    [OUTCOME_CLIENT_CLOSED] = "client_closed",
    [OUTCOME_TIMEOUT] = "timeout",
    [OUTCOME_TLS_FAILED] = "tls_failed",
    [OUTCOME_NO_ROUTE] = "no_route",
    [OUTCOME_PROTOCOL_ERROR] = "protocol_error",
    [OUTCOME_BACKEND_FAILED] = "backend_failed",
    [OUTCOME_REFUSED] = "refused",
    [OUTCOME_SHUTDOWN] = "shutdown",
    [OUTCOME_EVICTED] = "evicted",
    [OUTCOME_ACME_CHALLENGE] = "acme_challenge",
    [OUTCOME_INTERNAL_ERROR] = "internal_error",
};

static const char *const phase_names[PHASE_COUNT] = {
    [PHASE_HANDSHAKE] = "handshake",   [PHASE_CLEARTEXT] = "cleartext",
    [PHASE_CONNECTING] = "connecting", [PHASE_RELAY] = "relay",
    [PHASE_CLOSING] = "closing",
};

static const char *const tls_failure_names[TLSFAIL_COUNT] = {
    [TLSFAIL_TIMEOUT] = "timeout",
    [TLSFAIL_NOT_TLS] = "not_tls",
    [TLSFAIL_BAD_CLIENTHELLO] = "bad_clienthello",
    [TLSFAIL_UNKNOWN_SNI] = "unknown_sni",
    [TLSFAIL_NO_ALPN] = "no_alpn",
    [TLSFAIL_PROTOCOL_VERSION] = "protocol_version",
    [TLSFAIL_NO_SHARED_CIPHER] = "no_shared_cipher",
    [TLSFAIL_CERTIFICATE_REJECTED] = "certificate_rejected",
    [TLSFAIL_CLIENT_CLOSED] = "client_closed",
    [TLSFAIL_OTHER] = "other",
};

static const char *const tls_start_names[TLS_START_COUNT] = {
    [TLS_START_IMPLICIT] = "implicit",
    [TLS_START_STARTTLS] = "starttls",
};

static const char *const tls_version_names[TLSV_COUNT] = {
    [TLSV_1_2] = "TLSv1.2",
    [TLSV_1_3] = "TLSv1.3",
    [TLSV_OTHER] = "other",
};

static const char *const limit_names[LIMIT_COUNT] = {
    [LIMIT_CLIENT_CONNECTIONS] = "max_client_connections",
    [LIMIT_CLIENT_RATE] = "client_connection_rate",
};

__attribute__((format(printf, 2, 3))) static void put(struct metrics_text *out, const char *fmt,
                                                      ...)
{
    if (out->full)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out->data + out->len, out->cap - out->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= out->cap - out->len) {
        out->full = true;
        return;
    }
    out->len += (size_t)n;
}

static void family(struct metrics_text *out, const char *name, const char *type, const char *help)
{
    put(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static uint64_t get(atomic_uint_fast64_t *counter)
{
    return atomic_load_explicit(counter, memory_order_relaxed);
}

/* The labels every listener series starts with. Names are config names
 * ([A-Za-z0-9._-]), so they need no escaping. */
#define LISTENER_LABELS  "listener=\"%s\",service=\"%s\""
#define LISTENER_ARGS(m) (m)->name, service_info((m)->service)->name

/* One family with a series per listener and per value of one label. */
static void listener_family(struct metrics_text *out, size_t count, const char *name,
                            const char *type, const char *help, const char *label,
                            const char *const *values, size_t nvalues,
                            atomic_uint_fast64_t *(*counter)(struct metrics_listener *, size_t))
{
    family(out, name, type, help);
    for (size_t i = 0; i < count; i++)
        for (size_t v = 0; v < nvalues; v++)
            put(out, "%s{" LISTENER_LABELS ",%s=\"%s\"} %llu\n", name, LISTENER_ARGS(listeners[i]),
                label, values[v], (unsigned long long)get(counter(listeners[i], v)));
}

static atomic_uint_fast64_t *connections_of(struct metrics_listener *m, size_t v)
{
    return &m->connections[v];
}
static atomic_uint_fast64_t *tls_failures_of(struct metrics_listener *m, size_t v)
{
    return &m->tls_failures[v];
}
static atomic_uint_fast64_t *tls_starts_of(struct metrics_listener *m, size_t v)
{
    return &m->tls_starts[v];
}
static atomic_uint_fast64_t *tls_versions_of(struct metrics_listener *m, size_t v)
{
    return &m->tls_versions[v];
}
static atomic_uint_fast64_t *refusals_of(struct metrics_listener *m, size_t v)
{
    return &m->refusals[v];
}
static atomic_uint_fast64_t *bytes_of(struct metrics_listener *m, size_t v)
{
    return v == 0 ? &m->bytes_in : &m->bytes_out;
}

static const char *const direction_names[] = {"in", "out"};

static void render_listeners(struct metrics_text *out)
{
    size_t n = nlisteners;
    listener_family(out, n, "sallyport_connections_total", "counter",
                    "Client connections closed, by how they ended.", "outcome", outcome_names,
                    OUTCOME_COUNT, connections_of);
    family(out, "sallyport_sessions", "gauge", "Client sessions open, by phase.");
    for (size_t i = 0; i < n; i++)
        for (size_t p = 0; p < PHASE_COUNT; p++)
            put(out, "sallyport_sessions{" LISTENER_LABELS ",phase=\"%s\"} %d\n",
                LISTENER_ARGS(listeners[i]), phase_names[p],
                atomic_load_explicit(&listeners[i]->sessions[p], memory_order_relaxed));
    listener_family(out, n, "sallyport_tls_handshake_failures_total", "counter",
                    "Client connections whose TLS did not come about, by reason.", "reason",
                    tls_failure_names, TLSFAIL_COUNT, tls_failures_of);
    listener_family(out, n, "sallyport_tls_connections_total", "counter",
                    "Client TLS begun (terminated: handshake done; passthrough: ClientHello "
                    "routed), by how: implicit TLS (RFC 8314) or STARTTLS.",
                    "start", tls_start_names, TLS_START_COUNT, tls_starts_of);
    listener_family(out, n, "sallyport_tls_versions_total", "counter",
                    "Client TLS handshakes sallyport completed, by protocol version.", "version",
                    tls_version_names, TLSV_COUNT, tls_versions_of);
    listener_family(out, n, "sallyport_client_bytes_total", "counter",
                    "Bytes from (in) and to (out) clients, counted when a session closes.",
                    "direction", direction_names, 2, bytes_of);
    listener_family(out, n, "sallyport_limit_refusals_total", "counter",
                    "Connections turned away by a per-client limit.", "limit", limit_names,
                    LIMIT_COUNT, refusals_of);
    family(out, "sallyport_accept_paused_total", "counter",
           "Times accepting paused because max_connections sessions were open.");
    for (size_t i = 0; i < n; i++)
        put(out, "sallyport_accept_paused_total{" LISTENER_LABELS "} %llu\n",
            LISTENER_ARGS(listeners[i]), (unsigned long long)get(&listeners[i]->accept_paused));
}

static void render_routes_and_backends(struct metrics_text *out)
{
    family(out, "sallyport_route_sessions_total", "counter",
           "Sessions that reached the relay, by route.");
    for (size_t i = 0; i < nroutes; i++)
        put(out, "sallyport_route_sessions_total{route=\"%s\"} %llu\n", routes[i]->name,
            (unsigned long long)get(&routes[i]->sessions));
    family(out, "sallyport_route_bytes_total", "counter",
           "Bytes from (in) and to (out) clients, by route, counted when a session closes.");
    for (size_t i = 0; i < nroutes; i++) {
        put(out, "sallyport_route_bytes_total{route=\"%s\",direction=\"in\"} %llu\n",
            routes[i]->name, (unsigned long long)get(&routes[i]->bytes_in));
        put(out, "sallyport_route_bytes_total{route=\"%s\",direction=\"out\"} %llu\n",
            routes[i]->name, (unsigned long long)get(&routes[i]->bytes_out));
    }
    family(out, "sallyport_backend_sessions_total", "counter",
           "Sessions that reached the relay, by backend.");
    for (size_t i = 0; i < nbackends; i++)
        put(out, "sallyport_backend_sessions_total{backend=\"%s\"} %llu\n", backends[i]->name,
            (unsigned long long)get(&backends[i]->sessions));
    family(out, "sallyport_backend_connect_failures_total", "counter",
           "Backend tries that failed before any client byte reached the backend.");
    for (size_t i = 0; i < nbackends; i++)
        put(out, "sallyport_backend_connect_failures_total{backend=\"%s\"} %llu\n",
            backends[i]->name, (unsigned long long)get(&backends[i]->connect_failures));
}

/* Each address of each backend endpoint of the running config: 1 while
 * its health says up. */
static void render_health(struct metrics_text *out, const struct config *config,
                          struct health *health, double now)
{
    family(out, "sallyport_backend_up", "gauge",
           "1 while a backend address is up, 0 while it is marked down (failed sessions or "
           "checks).");
    for (size_t i = 0; config && health && i < config->nbackends; i++) {
        const struct cfg_backend *b = &config->backends[i];
        for (int s = 0; s < SERVICE_COUNT; s++) {
            const struct endpoint *ep = &b->endpoints[s];
            for (size_t k = 0; ep->set && k < ep->naddrs; k++) {
                char addr[64];
                sock_addr_format((const struct sockaddr *)&ep->addrs[k].ss, addr, sizeof addr);
                put(out, "sallyport_backend_up{backend=\"%s\",service=\"%s\",address=\"%s\"} %d\n",
                    b->name, service_info((enum service)s)->name, addr,
                    !health_is_down(health, b, (enum service)s, k, now));
            }
        }
    }
}

static void render_server(struct metrics_text *out, const struct metrics_server_view *view)
{
    family(out, "sallyport_reloads_total", "counter",
           "Reloads (SIGHUP), by result: done, or refused (the running config kept serving).");
    put(out, "sallyport_reloads_total{result=\"done\"} %llu\n",
        (unsigned long long)get(&reloads[1]));
    put(out, "sallyport_reloads_total{result=\"refused\"} %llu\n",
        (unsigned long long)get(&reloads[0]));
    family(out, "sallyport_generation", "gauge",
           "The generation new connections get: 1 at start, one more per reload done.");
    put(out, "sallyport_generation %u\n", view->generation);
    family(out, "sallyport_workers", "gauge", "Event loops (the workers setting).");
    put(out, "sallyport_workers %u\n", view->workers);
    family(out, "sallyport_client_sessions", "gauge",
           "Client sessions open, all listeners (counted against max_connections).");
    put(out, "sallyport_client_sessions %u\n", view->sessions);
    family(out, "sallyport_max_connections", "gauge", "The max_connections setting.");
    put(out, "sallyport_max_connections %u\n", view->max_connections);
    family(out, "sallyport_mailbox_sessions", "gauge", "Embedded mailbox sessions open.");
    put(out, "sallyport_mailbox_sessions %u\n", view->mailbox_sessions);
    family(out, "sallyport_overload", "gauge",
           "1 while overloaded: short cleartext and handshake timeouts, clients that have not "
           "begun TLS closed to admit new ones.");
    put(out, "sallyport_overload %d\n", view->overloaded);
    family(out, "sallyport_overload_entered_total", "counter", "Times the overload state began.");
    put(out, "sallyport_overload_entered_total %llu\n", (unsigned long long)view->overload_entered);
    family(out, "sallyport_log_lines_dropped_total", "counter",
           "Log lines dropped because the log reader was too slow.");
    put(out, "sallyport_log_lines_dropped_total %llu\n",
        (unsigned long long)view->log_lines_dropped);
    family(out, "sallyport_start_time_seconds", "gauge", "When sallyport started (Unix time).");
    put(out, "sallyport_start_time_seconds %.3f\n", view->start_time);
}

static void render_certificates(struct metrics_text *out)
{
    if (ncertificates == 0)
        return;
    family(out, "sallyport_acme_orders_total", "counter",
           "ACME orders of each certificate, by result: done (installed) or failed (retried).");
    for (size_t i = 0; i < ncertificates; i++)
        for (int r = 1; r >= 0; r--)
            put(out, "sallyport_acme_orders_total{certificate=\"%s\",result=\"%s\"} %llu\n",
                certificates[i]->name, r ? "done" : "failed",
                (unsigned long long)certificates[i]->orders[r]);
    family(out, "sallyport_certificate_expiry_seconds", "gauge",
           "When each ACME certificate on disk expires (Unix time).");
    for (size_t i = 0; i < ncertificates; i++)
        if (certificates[i]->not_after)
            put(out, "sallyport_certificate_expiry_seconds{certificate=\"%s\"} %lld\n",
                certificates[i]->name, (long long)certificates[i]->not_after);
}

void metrics_render(struct metrics_text *out, const struct metrics_server_view *view,
                    const struct config *config, struct health *health, double now)
{
    pthread_mutex_lock(&registry_lock); /* entries may be added by a reload meanwhile */
    render_listeners(out);
    render_routes_and_backends(out);
    render_certificates(out);
    pthread_mutex_unlock(&registry_lock);
    render_health(out, config, health, now);
    render_server(out, view);
}
