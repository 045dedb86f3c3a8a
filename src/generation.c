#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "generation.h"
#include "health.h"
#include "log.h"
#include "maildir.h"
#include "metrics.h"
#include "session.h"
#include "tls.h"
#include "userdb.h"

static bool backend_uses_tls(const struct cfg_backend *b)
{
    for (int i = 0; i < SERVICE_COUNT; i++) {
        if (b->endpoints[i].set && b->endpoints[i].tls != TLS_PLAIN)
            return true;
    }
    return false;
}

static int load_tls(struct generation *gen, struct tls_tickets *tickets)
{
    struct config *config = gen->config;
    char err[256];
    if (config->ncertificates > 0) {
        gen->store = tls_store_new(tickets);
        if (!gen->store)
            return -1;
        for (size_t i = 0; i < config->ncertificates; i++) {
            struct cfg_certificate *c = &config->certificates[i];
            if (!tls_store_add(gen->store, c->ctx, c->is_default))
                return -1;
            c->ctx = NULL; /* the store owns it now */
        }
        tls_store_set_sni_check(gen->store, session_route_by_sni);
        tls_store_set_alpn_check(gen->store, session_check_alpn);
    }
    for (size_t i = 0; tickets && i < config->nmailboxes; i++) {
        if (config->mailboxes[i].ctx)
            tls_ctx_use_tickets(config->mailboxes[i].ctx, tickets);
    }
    gen->backend_ctx = calloc(config->nbackends ? config->nbackends : 1, sizeof(SSL_CTX *));
    if (!gen->backend_ctx)
        return -1;
    for (size_t i = 0; i < config->nbackends; i++) {
        const struct cfg_backend *b = &config->backends[i];
        if (!backend_uses_tls(b))
            continue;
        gen->backend_ctx[i] = tls_client_ctx_new(b->ca, b->verify, err, sizeof err);
        if (!gen->backend_ctx[i]) {
            log_error("%s:%d: backend %s: %s", config->file, b->line, b->name, err);
            return -1;
        }
    }
    return 0;
}

static bool same_address(const struct sock_addr *a, const struct sock_addr *b)
{
    return a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0;
}

/* The previous generation's sockets for `addr` (listener or mailbox), a
 * row of nworkers descriptors, or NULL when it did not listen there. */
static int *previous_sockets(struct generation *prev, const struct sock_addr *addr)
{
    if (!prev)
        return NULL;
    for (size_t i = 0; i < prev->config->nlisteners; i++) {
        if (same_address(&prev->config->listeners[i].addr, addr))
            return &prev->listener_fds[i * prev->nworkers];
    }
    for (size_t i = 0; i < prev->config->nmailboxes; i++) {
        if (same_address(&prev->config->mailboxes[i].addr, addr))
            return &prev->mailbox_fds[i * prev->nworkers];
    }
    return NULL;
}

/* Sockets being built: [0] the listeners', [1] the mailboxes'; for each,
 * where in the previous generation it was taken over from (NULL: bound
 * here). The same descriptor is handed over, not a dup(): the epoll set
 * of its worker keeps one registration per descriptor and open socket, so
 * a closed duplicate would leave a stale one behind. */
struct handover {
    int **from[2];
    size_t count[2];
};

static bool taken_already(const struct handover *h, const int *slot)
{
    for (int kind = 0; kind < 2; kind++)
        for (size_t i = 0; i < h->count[kind]; i++)
            if (h->from[kind][i] == slot)
                return true;
    return false;
}

/* Fills row[0..nworkers) with sockets on `addr`: the previous generation's
 * (noted in `from`), or new ones. Returns 0, or -1 with the reason in err. */
static int open_row(struct generation *gen, struct generation *prev, const struct handover *h,
                    const struct sock_addr *addr, int *row, int **from, char *err, size_t errlen)
{
    int *old = previous_sockets(prev, addr);
    bool shared = gen->nworkers > 1;
    for (unsigned k = 0; k < gen->nworkers; k++) {
        if (old && old[k] >= 0 && !taken_already(h, &old[k])) {
            row[k] = old[k];
            from[k] = &old[k];
        } else {
            row[k] = sock_listen(addr, shared, err, errlen);
            if (row[k] < 0)
                return -1;
        }
    }
    return 0;
}

static int open_sockets(struct generation *gen, struct generation *prev, struct handover *h)
{
    const struct config *config = gen->config;
    unsigned n = gen->nworkers;
    size_t rows[2] = {config->nlisteners * n, config->nmailboxes * n};
    char err[256];
    gen->listener_fds = malloc((rows[0] ? rows[0] : 1) * sizeof(int));
    gen->mailbox_fds = malloc((rows[1] ? rows[1] : 1) * sizeof(int));
    h->from[0] = calloc(rows[0] ? rows[0] : 1, sizeof(int *));
    h->from[1] = calloc(rows[1] ? rows[1] : 1, sizeof(int *));
    for (size_t i = 0; gen->listener_fds && i < rows[0]; i++)
        gen->listener_fds[i] = -1;
    for (size_t i = 0; gen->mailbox_fds && i < rows[1]; i++)
        gen->mailbox_fds[i] = -1;
    if (!gen->listener_fds || !gen->mailbox_fds || !h->from[0] || !h->from[1]) {
        log_error("out of memory");
        return -1;
    }
    h->count[0] = rows[0];
    h->count[1] = rows[1];
    for (size_t i = 0; i < config->nmailboxes; i++) {
        const struct cfg_mailbox *m = &config->mailboxes[i];
        if (open_row(gen, prev, h, &m->addr, &gen->mailbox_fds[i * n], &h->from[1][i * n], err,
                     sizeof err) < 0) {
            log_error("%s:%d: mailbox %s: %s", config->file, m->line, m->name, err);
            return -1;
        }
    }
    for (size_t i = 0; i < config->nlisteners; i++) {
        const struct cfg_listener *l = &config->listeners[i];
        if (open_row(gen, prev, h, &l->addr, &gen->listener_fds[i * n], &h->from[0][i * n], err,
                     sizeof err) < 0) {
            log_error("%s:%d: listener %s: %s", config->file, l->line, l->name, err);
            return -1;
        }
    }
    return 0;
}

/* Done: the taken-over sockets are the new generation's (the previous one
 * no longer closes them); failed: they stay the previous one's (the new
 * one must not close them). */
static void end_handover(struct generation *gen, struct handover *h, bool done)
{
    int *fds[2] = {gen->listener_fds, gen->mailbox_fds};
    for (int kind = 0; kind < 2; kind++) {
        for (size_t i = 0; h->from[kind] && i < h->count[kind]; i++) {
            if (!h->from[kind][i])
                continue;
            if (done)
                *h->from[kind][i] = -1;
            else
                fds[kind][i] = -1;
        }
        free(h->from[kind]);
    }
}

/* The mailboxes' maildirs (created if missing) and users files, one
 * database per worker. */
static int prepare_mailboxes(struct generation *gen)
{
    const struct config *config = gen->config;
    unsigned n = gen->nworkers;
    char err[256];
    gen->users = calloc((config->nmailboxes ? config->nmailboxes : 1) * n, sizeof *gen->users);
    gen->mailbox_open =
        calloc(config->nmailboxes ? config->nmailboxes : 1, sizeof *gen->mailbox_open);
    if (!gen->users || !gen->mailbox_open) {
        log_error("out of memory");
        return -1;
    }
    for (size_t i = 0; i < config->nmailboxes; i++) {
        const struct cfg_mailbox *m = &config->mailboxes[i];
        atomic_init(&gen->mailbox_open[i], 0);
        if (maildir_create(m->maildir, err, sizeof err) < 0) {
            log_error("%s:%d: mailbox %s: %s", config->file, m->line, m->name, err);
            return -1;
        }
        for (unsigned k = 0; m->users && k < n; k++) {
            gen->users[i * n + k] = userdb_load(m->users, err, sizeof err);
            if (!gen->users[i * n + k]) {
                log_error("%s:%d: mailbox %s: %s", config->file, m->line, m->name, err);
                return -1;
            }
        }
        if (m->users && userdb_count(gen->users[i * n]) == 0)
            log_warn("mailbox %s: users file %s lists nobody: no one can send", m->name, m->users);
    }
    return 0;
}

/* The metrics entries of every listener, route and backend, by name. */
static int find_metrics(struct generation *gen)
{
    const struct config *config = gen->config;
    gen->listener_metrics =
        calloc(config->nlisteners ? config->nlisteners : 1, sizeof *gen->listener_metrics);
    gen->route_metrics = calloc(config->nroutes ? config->nroutes : 1, sizeof *gen->route_metrics);
    gen->backend_metrics =
        calloc(config->nbackends ? config->nbackends : 1, sizeof *gen->backend_metrics);
    if (!gen->listener_metrics || !gen->route_metrics || !gen->backend_metrics) {
        log_error("out of memory");
        return -1;
    }
    for (size_t i = 0; i < config->nlisteners; i++)
        gen->listener_metrics[i] =
            metrics_listener(config->listeners[i].name, config->listeners[i].service);
    for (size_t i = 0; i < config->nroutes; i++)
        gen->route_metrics[i] = metrics_route(config->routes[i].name);
    for (size_t i = 0; i < config->nbackends; i++)
        gen->backend_metrics[i] = metrics_backend(config->backends[i].name);
    return 0;
}

static void generation_free(struct generation *gen)
{
    const struct config *config = gen->config;
    if (gen->listener_fds) {
        for (size_t i = 0; i < config->nlisteners * gen->nworkers; i++)
            if (gen->listener_fds[i] >= 0)
                close(gen->listener_fds[i]);
    }
    if (gen->mailbox_fds) {
        for (size_t i = 0; i < config->nmailboxes * gen->nworkers; i++)
            if (gen->mailbox_fds[i] >= 0)
                close(gen->mailbox_fds[i]);
    }
    if (gen->users) {
        for (size_t i = 0; i < config->nmailboxes * gen->nworkers; i++)
            userdb_free(gen->users[i]);
    }
    if (gen->backend_ctx) {
        for (size_t i = 0; i < config->nbackends; i++)
            SSL_CTX_free(gen->backend_ctx[i]);
    }
    free(gen->listener_fds);
    free(gen->mailbox_fds);
    free(gen->users);
    free((void *)gen->mailbox_open);
    free(gen->backend_ctx);
    free(gen->listener_metrics);
    free(gen->route_metrics);
    free(gen->backend_metrics);
    tls_store_free(gen->store);
    health_free(gen->health);
    config_free(gen->config);
    free(gen);
}

struct generation *generation_new(struct config *config, unsigned number, unsigned nworkers,
                                  struct generation *previous, struct tls_tickets *tickets)
{
    struct handover handover = {0};
    struct generation *gen = calloc(1, sizeof *gen);
    if (!gen) {
        log_error("out of memory");
        config_free(config);
        return NULL;
    }
    atomic_init(&gen->refs, 1);
    gen->number = number;
    gen->nworkers = nworkers;
    gen->config = config;
    if (load_tls(gen, tickets) < 0) {
        log_error("cannot set up TLS");
        goto fail;
    }
    gen->health = health_new(config);
    if (!gen->health) {
        log_error("out of memory");
        goto fail;
    }
    if (previous)
        health_carry(gen->health, previous->health);
    if (find_metrics(gen) < 0 || prepare_mailboxes(gen) < 0 ||
        open_sockets(gen, previous, &handover) < 0)
        goto fail;
    end_handover(gen, &handover, true);
    return gen;
fail:
    end_handover(gen, &handover, false);
    generation_free(gen);
    return NULL;
}

struct generation *generation_hold(struct generation *gen)
{
    atomic_fetch_add_explicit(&gen->refs, 1, memory_order_relaxed);
    return gen;
}

void generation_release(struct generation *gen)
{
    if (!gen || atomic_fetch_sub_explicit(&gen->refs, 1, memory_order_acq_rel) != 1)
        return;
    log_debug("generation %u: its last session closed", gen->number);
    generation_free(gen);
}

static void close_column(int *fds, size_t rows, unsigned nworkers, unsigned worker)
{
    for (size_t i = 0; i < rows; i++) {
        int *fd = &fds[i * nworkers + worker];
        if (*fd >= 0)
            close(*fd);
        *fd = -1;
    }
}

void generation_close_sockets(struct generation *gen, unsigned worker, bool keep_mailboxes)
{
    close_column(gen->listener_fds, gen->config->nlisteners, gen->nworkers, worker);
    if (!keep_mailboxes)
        close_column(gen->mailbox_fds, gen->config->nmailboxes, gen->nworkers, worker);
}

SSL_CTX *generation_backend_ctx(const struct generation *gen, const struct cfg_backend *backend)
{
    size_t index = (size_t)(backend - gen->config->backends);
    return index < gen->config->nbackends ? gen->backend_ctx[index] : NULL;
}
