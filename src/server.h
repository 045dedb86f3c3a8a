/* server — the running daemon: what its workers share. The current
 * generation (the loaded config and what was made from it, swapped by a
 * reload), the session ticket keys, the client table behind a lock, and
 * the count of open client sessions of all workers (max_connections),
 * kept with atomics so a limit holds for the whole process, not per
 * worker. */
#ifndef SALLYPORT_SERVER_H
#define SALLYPORT_SERVER_H

#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "client_table.h"
#include "config.h"
#include "overload.h"

struct worker;
struct generation;
struct prober;
struct httpd;
struct acme;
struct tls_tickets;

struct server {
    const char *config_path; /* read again at a reload */
    bool log_level_fixed;    /* -d: a reload keeps logging at debug level */
    /* The generation new connections get; a reload swaps it under the lock.
     * Workers compare `current_number` with their own to notice a swap. */
    pthread_mutex_t generation_lock;
    struct generation *current;
    atomic_uint current_number;
    struct tls_tickets *tickets; /* session ticket keys, the same across reloads */
    ev_timer ticket_rotation;    /* worker 0's loop: a fresh ticket key now and then */
    struct prober *prober;       /* the current generation's active checks (worker 0) */
    struct httpd *metrics_httpd; /* the [metrics] endpoint (worker 0), or NULL */
    struct httpd *acme_httpd;    /* [acme] http_address: http-01 answers (worker 0), or NULL */
    struct acme *acme;           /* the ACME thread, while a certificate says acme = yes */
    ev_async acme_installed;     /* worker 0's loop: the ACME thread wrote a certificate */
    ev_timer refresh_retry;      /* worker 0's loop: a refresh that failed, tried again */
    double start_time;           /* Unix time */
    struct worker *workers;
    unsigned nworkers;

    pthread_mutex_t clients_lock; /* guards `clients` */
    struct client_table *clients; /* per-address counts and rates (the client limits) */
    atomic_uint nsessions;        /* client sessions open or reserved, all workers */
    atomic_uint max_connections;  /* the current generation's max_connections */
    atomic_uint mailbox_sessions; /* mailbox sessions open, all workers and generations */
    atomic_bool running;          /* workers run their loops: they may be woken */
    /* A graceful stop (SIGTERM): `draining` closes every listener and lets
     * sessions finish; `ending` (after shutdown_timeout) ends the rest with
     * the protocol's goodbye where one can be said. */
    atomic_bool draining;
    atomic_bool ending;
    /* The stress-adaptive state (overload.h): on, when a sign of it was
     * last seen (ms, ev_time()), and how often it began. */
    atomic_bool overload_adapt; /* overload = adapt (the current generation's) */
    atomic_bool overloaded;
    atomic_llong overload_seen_ms; /* CLOCK_MONOTONIC */
    atomic_uint_fast64_t overload_entered;
    ev_timer overload_check; /* worker 0's loop: ends the state once calm */
    pthread_mutex_t reserve_lock;
    int reserve[OVERLOAD_RESERVE_FDS]; /* held-back descriptors, -1 when not held */
};

/* Builds generation 1 from `config` (taking it over; `path` is where a
 * reload reads it again): TLS contexts, bound sockets, the shared state
 * and every worker: loops and pools. Nothing accepts yet. Returns 0, or -1
 * after logging what failed; call server_stop() either way. */
int server_start(struct server *server, struct config *config, const char *path);

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

/* SIGHUP, from worker 0's loop: reads the config file again and checks it
 * as -t does, loads its certificates, keys and users files, and binds its
 * new addresses. If any of that fails, it is logged and nothing changes.
 * Otherwise the new generation serves every new connection (each worker
 * switches when woken) while sessions finish on the one they started
 * with. `workers` and `user` keep their running values (a restart changes
 * them). Returns 0, or -1 when the reload was refused. */
int server_reload(struct server *server);

/* The ACME thread wrote a certificate, from worker 0's loop: builds a new
 * generation from the running config's own text (an edit of the file
 * since waits for SIGHUP) with the certificates as they are on disk now.
 * Not counted as a reload. Returns 0, or -1 when it could not be built
 * (logged; the running generation goes on). */
int server_refresh_certificates(struct server *server);

/* SIGUSR1, from worker 0's loop: every ACME certificate is ordered anew
 * now (acme_renew_all()); without any, logs that there is nothing to do. */
void server_renew_certificates(struct server *server);

/* The current generation, with a reference the caller releases. Any thread. */
struct generation *server_generation(struct server *server);

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

#endif
