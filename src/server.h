/* server — the running daemon: what its workers share. The loaded config,
 * the TLS contexts, the client table behind a lock, and the count of open
 * client sessions of all workers (max_connections), kept with atomics so a
 * limit holds for the whole process, not per worker. */
#ifndef SALLYPORT_SERVER_H
#define SALLYPORT_SERVER_H

#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "client_table.h"
#include "config.h"

struct worker;

struct server {
    const struct config *config;
    struct tls_store *store; /* server certificates; NULL when none are configured */
    SSL_CTX **backend_ctx;   /* per config->backends[i]; NULL if it has no TLS endpoint */
    struct health *health;   /* backends marked down, round-robin turns */
    struct worker *workers;
    unsigned nworkers;

    pthread_mutex_t clients_lock;  /* guards `clients` */
    struct client_table *clients;  /* per-address counts and rates (the client limits) */
    atomic_uint nsessions;         /* client sessions open or reserved, all workers */
    atomic_uint *mailbox_sessions; /* per config->mailboxes[i], all workers */
    atomic_bool running;           /* workers run their loops: they may be woken */
    /* A graceful stop (SIGTERM): `draining` closes every listener and lets
     * sessions finish; `ending` (after shutdown_timeout) ends the rest with
     * the protocol's goodbye where one can be said. */
    atomic_bool draining;
    atomic_bool ending;
};

/* Loads TLS contexts (taking ownership of the config's certificate
 * contexts), sets up the shared state and every worker: loops, pools and
 * bound sockets. Nothing accepts yet. Returns 0, or -1 after logging what
 * failed; call server_stop() either way. */
int server_start(struct server *server, struct config *config);

/* Starts every worker, runs worker 0's loop on the calling thread until it
 * is broken (a stop signal), then stops and joins the other workers.
 * Returns 0, or -1 (logged) when a worker's thread could not start. */
int server_run(struct server *server);

/* From worker 0's loop (the signal handler): stop accepting everywhere and
 * let sessions finish; worker 0's loop returns once every worker is idle.
 * server_end_sessions() then says goodbye to those still open. */
void server_drain(struct server *server);
void server_end_sessions(struct server *server);

/* Ends every session, closes every socket, frees everything server_start()
 * made. The workers' loops must not be running. */
void server_stop(struct server *server);

/* Reserves one of max_connections for a connection about to be accepted.
 * Returns false when all are taken. */
bool server_reserve_session(struct server *server);

/* Gives a reserved or used slot back, and wakes workers that paused at the
 * limit when this frees one. Any thread. */
void server_release_session(struct server *server);

/* client_table_admit() and client_table_release() under the lock, at the
 * current time. Any thread. */
enum client_verdict server_admit_client(struct server *server, const struct sockaddr *peer,
                                        int *slot);
void server_release_client(struct server *server, int slot);

/* The backend TLS client context for a backend of the config. */
SSL_CTX *server_backend_ctx(const struct server *server, const struct cfg_backend *backend);

#endif
