/* generation — what one load of the config produces, immutable once made:
 * the config, the certificate store, the backend TLS contexts, the
 * backends' health as this config names them, the mailboxes' users files,
 * and the listening sockets of every listener and mailbox.
 *
 * Reference counted. The server holds the current one; each worker holds
 * the one its listeners accept for; each session and each mailbox holds
 * the one it started on until it closes, so a reload (a new generation)
 * never changes what a session in flight sees. The last reference frees it.
 *
 * Sockets: an address that the previous generation already listens on is
 * taken over (the same descriptor, so no connection is refused in between;
 * the previous generation then no longer closes it), a new one is bound
 * here. Each socket exists once per worker; worker k is the only one
 * that touches column k: it takes what it listens on when it switches to a
 * generation and closes that column when it leaves it (closing an address
 * that the next generation dropped). What no worker ever took is closed
 * with the generation. */
#ifndef SALLYPORT_GENERATION_H
#define SALLYPORT_GENERATION_H

#include <openssl/ssl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "config.h"

struct health;
struct metrics_backend;
struct metrics_listener;
struct metrics_route;
struct tls_store;
struct tls_tickets;
struct userdb;

struct generation {
    atomic_uint refs;
    unsigned number; /* 1 at start-up, +1 per reload: "gen=N" in the log */
    unsigned nworkers;
    struct config *config;
    struct tls_store *store; /* server certificates; NULL when none are configured */
    SSL_CTX **backend_ctx;   /* per config->backends[i]; NULL if it has no TLS endpoint */
    struct health *health;   /* backends marked down, round-robin turns */
    /* [i * nworkers + k]: listener i's / mailbox i's socket for worker k, -1
     * once closed. */
    int *listener_fds;
    int *mailbox_fds;
    /* [i * nworkers + k]: mailbox i's users for worker k (crypt_rn's work
     * area is per database), NULL once taken or when it has no users file. */
    struct userdb **users;
    atomic_uint *mailbox_open; /* [i]: mailbox i's sessions, all workers */
    /* [i]: the metrics entries (metrics.h) of config->listeners[i],
     * routes[i], backends[i]: by name, so they outlive the generation. */
    struct metrics_listener **listener_metrics;
    struct metrics_route **route_metrics;
    struct metrics_backend **backend_metrics;
};

/* Builds a generation from `config` (taking it over: it is freed with the
 * generation, or here on failure). `previous` (NULL at start-up; main
 * thread, the current generation) hands over its sockets for addresses
 * that stay, on success only, and lends its backends' health, by name.
 * Everything that can fail is done here: TLS contexts, binding, users
 * files, maildirs. Returns a generation with one reference, or NULL after
 * logging each error with file, line and key. */
struct generation *generation_new(struct config *config, unsigned number, unsigned nworkers,
                                  struct generation *previous, struct tls_tickets *tickets);

/* Takes a reference (any thread). */
struct generation *generation_hold(struct generation *gen);

/* Drops a reference (any thread); the last one frees it. NULL is fine. */
void generation_release(struct generation *gen);

/* Worker `worker` leaves the generation: closes its column of the
 * listeners' sockets, and of the mailboxes' unless `keep_mailboxes`
 * (a graceful stop closes listeners only). Its watchers must be stopped. */
void generation_close_sockets(struct generation *gen, unsigned worker, bool keep_mailboxes);

/* The backend TLS client context for a backend of the generation's config. */
SSL_CTX *generation_backend_ctx(const struct generation *gen, const struct cfg_backend *backend);

#endif
