/* metrics — what sallyport counts for its operator, and the Prometheus
 * text it is shown in (scrape.c serves it over HTTP).
 *
 * A process-wide registry of entries keyed by name: one per listener
 * (name and service), route and backend that any generation ever named.
 * A generation looks its entries up once when it is built, so the
 * counters of a listener that a reload keeps go on from where they were,
 * and those of a removed one stay (a counter never goes back). Every
 * counter and gauge is a relaxed atomic: any worker adds, the scrape on
 * worker 0 reads. The registry is bounded (METRICS_ENTRIES_MAX per kind);
 * past it, a name shares one uncounted entry and a warning is logged. */
#ifndef SALLYPORT_METRICS_H
#define SALLYPORT_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define METRICS_ENTRIES_MAX 512

struct health;

/* How a client connection ended, grouped from its close reason. */
enum metrics_outcome {
    OUTCOME_RELAYED,        /* the relay ran; either side closed it */
    OUTCOME_CLIENT_CLOSED,  /* the client left before the relay */
    OUTCOME_TIMEOUT,        /* a PROXY header, cleartext, handshake or idle timeout */
    OUTCOME_TLS_FAILED,     /* no TLS with the client (see metrics_tls_failure) */
    OUTCOME_NO_ROUTE,       /* no route for its SNI, or no ALPN we speak */
    OUTCOME_PROTOCOL_ERROR, /* bad PROXY header, too many errors, injection, ... */
    OUTCOME_BACKEND_FAILED, /* no backend could take it */
    OUTCOME_REFUSED,        /* over a per-client limit */
    OUTCOME_SHUTDOWN,       /* ended by a graceful stop */
    OUTCOME_EVICTED,        /* closed before TLS to admit others (overload.h) */
    OUTCOME_ACME_CHALLENGE, /* a CA's tls-alpn-01 check, answered (acme_challenge.h) */
    OUTCOME_INTERNAL_ERROR, /* out of memory or the like */
    OUTCOME_COUNT,
    OUTCOME_UNSET = OUTCOME_COUNT,
};

/* Where an open session is: a gauge per listener. */
enum metrics_phase {
    PHASE_HANDSHAKE,  /* PROXY header, ClientHello, the client's TLS handshake */
    PHASE_CLEARTEXT,  /* commands before STARTTLS */
    PHASE_CONNECTING, /* backend connect, prelude, backend handshake */
    PHASE_RELAY,
    PHASE_CLOSING, /* a last reply going out, lingering */
    PHASE_COUNT,
    PHASE_NONE = PHASE_COUNT, /* closed */
};

/* Why a client's TLS did not come about. */
enum metrics_tls_failure {
    TLSFAIL_TIMEOUT,
    TLSFAIL_NOT_TLS,              /* cleartext where TLS was due */
    TLSFAIL_BAD_CLIENTHELLO,      /* passthrough: a ClientHello the parser refused */
    TLSFAIL_UNKNOWN_SNI,          /* no route for the name it asked for */
    TLSFAIL_NO_ALPN,              /* it offered ALPN, but not the service's protocol */
    TLSFAIL_PROTOCOL_VERSION,     /* no TLS version in common (TLS 1.2 is the least) */
    TLSFAIL_NO_SHARED_CIPHER,     /* no cipher or group in common */
    TLSFAIL_CERTIFICATE_REJECTED, /* the client refused our certificate (an alert) */
    TLSFAIL_CLIENT_CLOSED,        /* it closed or reset during the handshake */
    TLSFAIL_OTHER,
    TLSFAIL_COUNT,
};

/* How the client's TLS began: RFC 8314's implicit TLS, or STARTTLS. */
enum metrics_tls_start { TLS_START_IMPLICIT, TLS_START_STARTTLS, TLS_START_COUNT };

/* The TLS version a terminated session negotiated. */
enum metrics_tls_version { TLSV_1_2, TLSV_1_3, TLSV_OTHER, TLSV_COUNT };

/* A client limit that turned a connection away. */
enum metrics_limit { LIMIT_CLIENT_CONNECTIONS, LIMIT_CLIENT_RATE, LIMIT_COUNT };

struct metrics_listener {
    char name[64];
    enum service service;
    atomic_uint_fast64_t connections[OUTCOME_COUNT];
    atomic_int sessions[PHASE_COUNT];
    atomic_uint_fast64_t tls_failures[TLSFAIL_COUNT];
    atomic_uint_fast64_t tls_starts[TLS_START_COUNT];
    atomic_uint_fast64_t tls_versions[TLSV_COUNT];
    atomic_uint_fast64_t bytes_in, bytes_out; /* from and to the client */
    atomic_uint_fast64_t refusals[LIMIT_COUNT];
    atomic_uint_fast64_t accept_paused; /* accepting paused at max_connections */
};

struct metrics_route {
    char name[64];
    atomic_uint_fast64_t sessions; /* routed here: relays started */
    atomic_uint_fast64_t bytes_in, bytes_out;
};

struct metrics_backend {
    char name[64];
    atomic_uint_fast64_t sessions;         /* relays started through it */
    atomic_uint_fast64_t connect_failures; /* tries that failed before any client byte */
};

/* The entries for a listener, route or backend; never NULL (past the
 * bound, a shared entry that is not shown). Main thread or worker 0,
 * while a generation is built. */
struct metrics_listener *metrics_listener(const char *name, enum service service);
struct metrics_route *metrics_route(const char *name);
struct metrics_backend *metrics_backend(const char *name);

/* Counting, from any worker. */
/* An ACME certificate's outcome (acme.c): `got` 1 when an order was done,
 * 0 when one failed, -1 for neither; `not_after` (Unix time) when known,
 * else 0. Any thread. */
void metrics_certificate(const char *name, int got, int64_t not_after);

void metrics_phase_move(struct metrics_listener *m, enum metrics_phase from, enum metrics_phase to);
void metrics_count(atomic_uint_fast64_t *counter, uint64_t n);

/* The reason label of an OpenSSL handshake failure (conn_error_reason()). */
enum metrics_tls_failure metrics_tls_failure_of(int reason);
enum metrics_tls_version metrics_tls_version_of(int version);

/* Reloads, counted by worker 0. */
void metrics_reloaded(bool ok);

/* What the server knows at scrape time, besides the registry. */
struct metrics_server_view {
    unsigned generation;
    unsigned workers;
    unsigned sessions; /* client sessions open (or reserved) */
    unsigned max_connections;
    unsigned mailbox_sessions;
    double start_time; /* Unix time */
    bool overloaded;
    uint64_t overload_entered;
    uint64_t log_lines_dropped;
};

/* A bounded output buffer: text past `cap` sets `full` and is dropped. */
struct metrics_text {
    char *data;
    size_t len, cap;
    bool full;
};

/* Appends the whole exposition (Prometheus text format 0.0.4) to out:
 * the registry, the server view, and each backend address's health as
 * `gen` sees it at time `now` (ev_now of the caller's loop). */
void metrics_render(struct metrics_text *out, const struct metrics_server_view *view,
                    const struct config *config, struct health *health, double now);

/* Frees the registry (at exit). */
void metrics_free_all(void);

#endif
