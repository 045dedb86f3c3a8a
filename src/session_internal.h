/* session_internal — what session.c (the client side, the relay, the
 * story of a session) and session_backend.c (choosing, connecting to and
 * preparing the backend) share: the session itself and the few steps each
 * calls in the other. Not for any other module: they see session.h. */
#ifndef SALLYPORT_SESSION_INTERNAL_H
#define SALLYPORT_SESSION_INTERNAL_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "client_table.h"
#include "config.h"
#include "conn.h"
#include "dialogue/dialogue.h"
#include "relay.h"
#include "sock.h"

struct worker;
struct server;
struct generation;
struct metrics_listener;

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

struct session {
    struct worker *worker;  /* the event loop it lives on */
    struct server *server;  /* what all workers share */
    struct generation *gen; /* held: the config it started on, until it closes */
    const struct cfg_listener *listener;
    struct metrics_listener *metrics; /* the listener's counters (metrics.h) */
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
    bool sni_refused;    /* the TLS handshake was refused: no route for the SNI */
    bool alpn_refused;   /* ... or the client offered ALPN, but not our protocol */
    bool acme_challenge; /* the handshake answers a CA's tls-alpn-01 check */
    char sni[256];

    union {                         /* one phase at a time: cleartext, then prelude, then relay */
        struct dialogue_server ds;  /* SESSION_CLEARTEXT */
        struct dialogue_backend db; /* SESSION_PRELUDE */
        struct relay relay;         /* from session_start_relay() on: relay_started */
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
    uint8_t outcome; /* enum metrics_outcome once known; OUTCOME_UNSET until then */

    struct session *prev, *next;
};

/* ---- session.c, for the backend side ---- */

/* Every state change goes through here (logged at debug level). */
void session_enter(struct session *s, enum session_state next);
/* (Re)arms the session's one timer. */
void session_arm_timer(struct session *s, double seconds);
/* The buffer in *slot, taken from the worker's pool if empty; NULL (and
 * the session failed) when the pool is out of memory. */
struct buf *session_held(struct session *s, struct buf **slot);
/* True once sallyport terminated the client's TLS. */
bool session_client_in_tls(const struct session *s);
/* Says how the session ends, for the metrics; the first word stands. */
void session_set_outcome(struct session *s, int outcome);
/* Closes after telling the client why, where the protocol allows a reply. */
void session_fail_with_reply(struct session *s, const char *reason);
/* The backend is ready: bytes flow both ways from now on. */
void session_start_relay(struct session *s);
struct buf_pool *session_bufs(const struct session *s);
struct pipe_pool *session_pipes(const struct session *s);

/* ---- session_backend.c, for the story ---- */

/* The route is known: choose a backend and connect (the first try). */
void backend_connect(struct session *s);
/* The backend failed before any client byte reached it: try the next. */
void backend_failed(struct session *s, const char *why);
/* The events of the backend states. */
void backend_on_connected(struct session *s);
void backend_on_prelude_io(struct session *s, int revents);
void backend_on_handshake_io(struct session *s);

#endif
