/* server — the running daemon: the event loop, the loaded config, TLS
 * contexts, listeners, mailboxes and the list of live sessions. */
#ifndef SALLYPORT_SERVER_H
#define SALLYPORT_SERVER_H

#include <ev.h>
#include <openssl/ssl.h>
#include <stddef.h>

#include "buf_pool.h"
#include "config.h"
#include "pipe_pool.h"

struct session;
struct listener;
struct mailbox;

struct server {
    struct ev_loop *loop;
    const struct config *config;
    struct tls_store *store; /* server certificates; NULL when none are configured */
    SSL_CTX **backend_ctx;   /* per config->backends[i]; NULL if it has no TLS endpoint */
    struct listener *listeners;
    size_t nlisteners;
    struct mailbox **mailboxes;
    size_t nmailboxes;
    struct client_table *clients;    /* per-address counts and rates (the client limits) */
    long long refusal_second;        /* the second refusals_logged counts in */
    unsigned refusals_logged;        /* refusal log lines written in that second */
    unsigned long refusals_unlogged; /* refusals beyond that, reported in one line */
    struct buf_pool bufs;            /* buffers for bytes in flight */
    struct pipe_pool pipes;          /* splice pipes for bytes in flight */
    struct session *sessions;        /* live sessions, a doubly linked list */
    unsigned nsessions;
};

/* Binds every listener and mailbox of `config`, loads TLS contexts (taking
 * ownership of the config's certificate contexts) and starts accepting on
 * `loop`. Returns 0, or -1 after logging what failed. */
int server_start(struct server *server, struct ev_loop *loop, struct config *config);

/* Closes every session, listener and mailbox and frees the TLS contexts. */
void server_stop(struct server *server);

/* Called by sessions when one ends: listeners paused at the connection limit
 * start accepting again. */
void server_session_ended(struct server *server);

/* The backend TLS client context for a backend of the config. */
SSL_CTX *server_backend_ctx(const struct server *server, const struct cfg_backend *backend);

#endif
