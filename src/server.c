#include <stdlib.h>
#include <string.h>

#include "client_table.h"
#include "health.h"
#include "listener.h"
#include "log.h"
#include "mailbox.h"
#include "probe.h"
#include "server.h"
#include "session.h"
#include "tls.h"
#include "worker.h"

/* Addresses the client table remembers at most (about 3 MiB). */
#define CLIENT_TABLE_MAX 65536

static bool backend_uses_tls(const struct cfg_backend *b)
{
    for (int i = 0; i < SERVICE_COUNT; i++) {
        if (b->endpoints[i].set && b->endpoints[i].tls != TLS_PLAIN)
            return true;
    }
    return false;
}

static int load_tls(struct server *server, struct config *config)
{
    char err[256];
    if (config->ncertificates > 0) {
        server->store = tls_store_new();
        if (!server->store)
            return -1;
        for (size_t i = 0; i < config->ncertificates; i++) {
            struct cfg_certificate *c = &config->certificates[i];
            if (!tls_store_add(server->store, c->ctx, c->is_default))
                return -1;
            c->ctx = NULL; /* the store owns it now */
        }
        tls_store_set_sni_check(server->store, session_route_by_sni);
        tls_store_set_alpn_check(server->store, session_check_alpn);
    }
    server->backend_ctx = calloc(config->nbackends ? config->nbackends : 1, sizeof(SSL_CTX *));
    if (!server->backend_ctx)
        return -1;
    for (size_t i = 0; i < config->nbackends; i++) {
        const struct cfg_backend *b = &config->backends[i];
        if (!backend_uses_tls(b))
            continue;
        server->backend_ctx[i] = tls_client_ctx_new(b->ca, b->verify, err, sizeof err);
        if (!server->backend_ctx[i]) {
            log_error("%s:%d: backend %s: %s", config->file, b->line, b->name, err);
            return -1;
        }
    }
    return 0;
}

static void log_sockets(const struct config *config)
{
    for (size_t i = 0; i < config->nmailboxes; i++) {
        const struct cfg_mailbox *m = &config->mailboxes[i];
        log_info("mailbox %s: accepting on %s (%s), storing in %s", m->name, m->address,
                 tls_flavour_name(m->tls), m->maildir);
    }
    for (size_t i = 0; i < config->nlisteners; i++) {
        const struct cfg_listener *l = &config->listeners[i];
        log_info("listener %s: accepting on %s (%s, %s, idle timeout %us)", l->name, l->address,
                 service_info(l->service)->name,
                 l->mode == MODE_TERMINATE ? "terminate" : "passthrough", l->idle_timeout);
    }
}

int server_start(struct server *server, struct config *config)
{
    memset(server, 0, sizeof *server);
    server->config = config;
    pthread_mutex_init(&server->clients_lock, NULL);
    atomic_init(&server->nsessions, 0);
    atomic_init(&server->running, false);
    atomic_init(&server->draining, false);
    atomic_init(&server->ending, false);
    if (load_tls(server, config) < 0) {
        log_error("cannot set up TLS");
        return -1;
    }
    /* Room for every open connection's address and as many recent ones. */
    size_t capacity = 2 * (size_t)config->global.max_connections + 256;
    if (capacity > CLIENT_TABLE_MAX)
        capacity = CLIENT_TABLE_MAX;
    server->clients = client_table_new(
        capacity, config->global.max_client_connections, config->global.client_connection_rate,
        config->global.limit_exceptions, config->global.nlimit_exceptions);
    server->mailbox_sessions =
        calloc(config->nmailboxes ? config->nmailboxes : 1, sizeof *server->mailbox_sessions);
    server->health = health_new(config);
    unsigned nworkers = config->global.workers ? config->global.workers : worker_count_auto();
    server->workers = calloc(nworkers, sizeof *server->workers);
    if (!server->clients || !server->mailbox_sessions || !server->health || !server->workers) {
        log_error("out of memory");
        return -1;
    }
    server->nworkers = nworkers;
    for (unsigned i = 0; i < nworkers; i++) {
        if (worker_init(&server->workers[i], server, i) < 0)
            return -1;
    }
    log_sockets(config);
    return 0;
}

int server_run(struct server *server)
{
    unsigned started = 1;
    atomic_store(&server->running, true);
    while (started < server->nworkers && worker_start(&server->workers[started]) == 0)
        started++;
    if (started < server->nworkers) {
        /* The config asked for every worker: not starting is safer than
         * leaving bound sockets that nobody accepts on. */
        log_error("cannot start worker %u of %u: stopping", started, server->nworkers);
        atomic_store(&server->running, false);
        for (unsigned i = 1; i < started; i++)
            worker_join(&server->workers[i]);
        return -1;
    }
    worker_start(&server->workers[0]);
    const struct config *c = server->config;
    log_info("sallyport ready (%zu listener%s, %zu mailbox%s, %u worker%s)", c->nlisteners,
             c->nlisteners == 1 ? "" : "s", c->nmailboxes, c->nmailboxes == 1 ? "" : "es", started,
             started == 1 ? "" : "s");
    struct prober *prober = prober_start(server, server->workers[0].loop);
    ev_run(server->workers[0].loop, 0);
    prober_stop(prober);
    atomic_store(&server->running, false); /* no more wake-ups: the loops are ending */
    for (unsigned i = 1; i < started; i++)
        worker_join(&server->workers[i]);
    return 0;
}

void server_drain(struct server *server)
{
    atomic_store(&server->draining, true);
    for (unsigned i = 0; i < server->nworkers; i++)
        worker_wake(&server->workers[i]);
}

void server_end_sessions(struct server *server)
{
    atomic_store(&server->ending, true);
    for (unsigned i = 0; i < server->nworkers; i++)
        worker_wake(&server->workers[i]);
}

void server_stop(struct server *server)
{
    for (unsigned i = 0; i < server->nworkers; i++)
        worker_free(&server->workers[i]);
    if (server->backend_ctx) {
        for (size_t i = 0; i < server->config->nbackends; i++)
            SSL_CTX_free(server->backend_ctx[i]);
    }
    free(server->backend_ctx);
    free(server->workers);
    free((void *)server->mailbox_sessions);
    tls_store_free(server->store);
    client_table_free(server->clients);
    health_free(server->health);
    pthread_mutex_destroy(&server->clients_lock);
    memset(server, 0, sizeof *server);
}

bool server_reserve_session(struct server *server)
{
    unsigned max = server->config->global.max_connections;
    unsigned n = atomic_load(&server->nsessions);
    do {
        if (n >= max)
            return false;
    } while (!atomic_compare_exchange_weak(&server->nsessions, &n, n + 1));
    return true;
}

void server_release_session(struct server *server)
{
    unsigned before = atomic_fetch_sub(&server->nsessions, 1);
    if (before < server->config->global.max_connections || !atomic_load(&server->running))
        return;
    /* This freed a slot at the limit: wake the workers waiting for one.
     * A worker sets its flag before it checks the count again, so either
     * it sees this slot or this sees its flag. */
    for (unsigned i = 0; i < server->nworkers; i++) {
        if (atomic_load(&server->workers[i].paused_at_limit))
            worker_wake(&server->workers[i]);
    }
}

enum client_verdict server_admit_client(struct server *server, const struct sockaddr *peer,
                                        int *slot)
{
    pthread_mutex_lock(&server->clients_lock);
    enum client_verdict verdict = client_table_admit(server->clients, peer, ev_time(), slot);
    pthread_mutex_unlock(&server->clients_lock);
    return verdict;
}

void server_release_client(struct server *server, int slot)
{
    if (slot < 0)
        return;
    pthread_mutex_lock(&server->clients_lock);
    client_table_release(server->clients, slot);
    pthread_mutex_unlock(&server->clients_lock);
}

SSL_CTX *server_backend_ctx(const struct server *server, const struct cfg_backend *backend)
{
    size_t index = (size_t)(backend - server->config->backends);
    return index < server->config->nbackends ? server->backend_ctx[index] : NULL;
}
