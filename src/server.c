#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "acme.h"
#include "client_table.h"
#include "generation.h"
#include "health.h"
#include "listener.h"
#include "log.h"
#include "mailbox.h"
#include "metrics.h"
#include "notify.h"
#include "overload.h"
#include "probe.h"
#include "acme_challenge.h"
#include "httpd.h"
#include "scrape.h"
#include "server.h"
#include "session.h"
#include "tls.h"
#include "worker.h"

/* Addresses the client table remembers at most (about 3 MiB). */
#define CLIENT_TABLE_MAX 65536

/* How often session tickets get a fresh key. Tickets sealed with the
 * TLS_TICKET_KEYS - 1 keys before it still open: about 3 hours with 3 keys,
 * longer than the 2 hours OpenSSL lets a TLS session be resumed. */
#define TICKET_ROTATION 3600.0

static void log_sockets(const struct generation *gen)
{
    const struct config *config = gen->config;
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

/* ACME certificates the generation serves with a temporary one. */
static void log_temporary_certificates(const struct generation *gen)
{
    const struct config *config = gen->config;
    for (size_t i = 0; i < config->ncertificates; i++)
        if (config->certificates[i].temporary)
            log_warn("certificate %s: no ACME certificate in %s yet: serving a temporary "
                     "self-signed one",
                     config->certificates[i].name, config->acme.state_dir);
}

static void on_overload_check(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop, (void)revents;
    overload_check(t->data);
}

static void on_ticket_rotation(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop, (void)revents;
    struct server *server = t->data;
    if (tls_tickets_rotate(server->tickets) < 0)
        log_warn("no randomness for a new session ticket key: keeping the current one");
}

/* What a generation sets in the shared state: the limits. */
static void apply_limits(struct server *server, const struct config *config)
{
    atomic_store(&server->max_connections, config->global.max_connections);
    pthread_mutex_lock(&server->clients_lock);
    int rc =
        client_table_set_limits(server->clients, config->global.max_client_connections,
                                config->global.client_connection_rate,
                                config->global.limit_exceptions, config->global.nlimit_exceptions);
    pthread_mutex_unlock(&server->clients_lock);
    if (rc < 0)
        log_error("out of memory: the per-client limits stay as they were");
}

int server_start(struct server *server, struct config *config, const char *path)
{
    memset(server, 0, sizeof *server);
    server->config_path = path;
    pthread_mutex_init(&server->clients_lock, NULL);
    pthread_mutex_init(&server->generation_lock, NULL);
    atomic_init(&server->nsessions, 0);
    atomic_init(&server->mailbox_sessions, 0);
    atomic_init(&server->max_connections, config->global.max_connections);
    atomic_init(&server->running, false);
    atomic_init(&server->draining, false);
    atomic_init(&server->ending, false);
    ev_init(&server->ticket_rotation, on_ticket_rotation);
    server->ticket_rotation.data = server;
    atomic_init(&server->overload_adapt, config->global.overload_adapt);
    atomic_init(&server->overloaded, false);
    pthread_mutex_init(&server->reserve_lock, NULL);
    for (size_t i = 0; i < sizeof server->reserve / sizeof server->reserve[0]; i++)
        server->reserve[i] = -1;
    atomic_init(&server->overload_seen_ms, 0);
    atomic_init(&server->overload_entered, 0);
    ev_init(&server->overload_check, on_overload_check);
    server->overload_check.repeat = 1.0;
    server->overload_check.data = server;
    unsigned nworkers = config->global.workers ? config->global.workers : worker_count_auto();
    server->tickets = tls_tickets_new();
    /* Room for every open connection's address and as many recent ones. */
    size_t capacity = 2 * (size_t)config->global.max_connections + 256;
    if (capacity > CLIENT_TABLE_MAX)
        capacity = CLIENT_TABLE_MAX;
    server->clients = client_table_new(
        capacity, config->global.max_client_connections, config->global.client_connection_rate,
        config->global.limit_exceptions, config->global.nlimit_exceptions);
    server->workers = calloc(nworkers, sizeof *server->workers);
    if (!server->tickets || !server->clients || !server->workers) {
        log_error("out of memory");
        config_free(config);
        return -1;
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    server->start_time = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
    if (config->metrics.set) {
        char err[256];
        server->metrics_httpd =
            httpd_new(&config->metrics.addr, "metrics", HTTPD_LIMITS_METRICS, err, sizeof err);
        if (!server->metrics_httpd) {
            log_error("%s:%d: metrics: %s", config->file, config->metrics.line, err);
            config_free(config);
            return -1;
        }
        log_info("metrics: serving GET /metrics on %s", config->metrics.address);
    }
    if (config->acme.http_address) {
        char err[256];
        server->acme_httpd =
            httpd_new(&config->acme.http_addr, "acme", HTTPD_LIMITS_ACME, err, sizeof err);
        if (!server->acme_httpd) {
            log_error("%s:%d: http_address: %s", config->file, config->acme.line, err);
            config_free(config);
            return -1;
        }
        log_info("acme: answering http-01 challenges on %s", config->acme.http_address);
    }
    server->current = generation_new(config, 1, nworkers, NULL, server->tickets);
    if (!server->current)
        return -1;
    atomic_init(&server->current_number, 1);
    server->nworkers = nworkers;
    for (unsigned i = 0; i < nworkers; i++) {
        if (worker_init(&server->workers[i], server, i) < 0)
            return -1;
    }
    log_sockets(server->current);
    log_temporary_certificates(server->current);
    return 0;
}

struct generation *server_generation(struct server *server)
{
    pthread_mutex_lock(&server->generation_lock);
    struct generation *gen = generation_hold(server->current);
    pthread_mutex_unlock(&server->generation_lock);
    return gen;
}

/* The settings a reload cannot change: warned about, kept. */
static void keep_fixed_settings(const struct config *running, struct config *next)
{
    const struct cfg_global *was = &running->global;
    struct cfg_global *now = &next->global;
    if (now->workers != was->workers) {
        log_warn("%s: workers: a reload keeps the running %u; restart to change it", next->file,
                 was->workers);
        now->workers = was->workers;
    }
    bool same_user =
        (!now->user && !was->user) || (now->user && was->user && strcmp(now->user, was->user) == 0);
    if (!same_user)
        log_warn("%s: user: a reload keeps running as %s; restart to change it", next->file,
                 was->user ? was->user : "the starting user");
    const char *h = next->acme.http_address, *h0 = running->acme.http_address;
    if ((h || h0) && (!h || !h0 || strcmp(h, h0) != 0)) {
        log_warn("%s: http_address: a reload keeps the running http-01 endpoint (%s); restart to "
                 "change it",
                 next->file, h0 ? h0 : "none");
        free(next->acme.http_address); /* what runs is what the config says */
        next->acme.http_address = h0 ? strdup(h0) : NULL;
        next->acme.http_addr = running->acme.http_addr;
    }
    const struct cfg_metrics *m = &next->metrics, *m0 = &running->metrics;
    bool same_metrics = m->set == m0->set && (!m->set || strcmp(m->address, m0->address) == 0);
    if (!same_metrics)
        log_warn("%s: metrics: a reload keeps the running endpoint (%s); restart to change it",
                 next->file, m0->set ? m0->address : "none");
}

/* Logs what config_load() printed, one error per line. */
static void log_config_errors(FILE *errors)
{
    char line[1024];
    rewind(errors);
    while (fgets(line, sizeof line, errors)) {
        line[strcspn(line, "\n")] = '\0';
        log_error("%s", line);
    }
}

/* The service manager's word after a reload, done or refused. */
static int reload_done(const struct server *server, int rc)
{
    metrics_reloaded(rc == 0);
    char status[128];
    snprintf(status, sizeof status, "%s; serving generation %u",
             rc == 0 ? "reloaded" : "reload refused", server->current->number);
    notify_ready(status);
    return rc;
}

/* Seconds between tries of a certificate refresh that could not be built
 * (a users file or another certificate broken at that moment). */
#define REFRESH_RETRY 30.0

static void on_refresh_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    server_refresh_certificates(w->data);
}

/* The ACME thread's word, on worker 0's loop. */
static void on_acme_installed(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)revents;
    server_refresh_certificates(w->data);
}

/* On the ACME thread: hands the news to worker 0's loop. */
static void acme_installed(void *arg)
{
    struct server *server = arg;
    ev_async_send(server->workers[0].loop, &server->acme_installed);
}

/* Starts the ACME thread for the current generation's certificates. */
static int start_acme(struct server *server)
{
    server->acme = acme_start(server->current->config, acme_installed, server);
    return server->acme ? 0 : -1;
}

/* Reads the config again: from the file (a reload), or from the running
 * config's text (`text`, a certificate refresh). NULL after logging the
 * errors. */
static struct config *read_again(struct server *server, const char *text, size_t len, int *nerrors)
{
    FILE *errors = tmpfile();
    FILE *to = errors ? errors : stderr;
    *nerrors = 0;
    struct config *config = text ? config_load_text(server->config_path, text, len, to, nerrors)
                                 : config_load(server->config_path, to, nerrors);
    if (config && !config_runnable(config, to)) {
        config_free(config);
        config = NULL;
        *nerrors = 1;
    }
    if (errors) {
        log_config_errors(errors);
        fclose(errors);
    }
    return config;
}

/* True if a certificate of `config` wants http-01 answers that the running
 * endpoint cannot give (none runs, or at another address: only a restart
 * binds it). Logged. */
static bool http01_unanswered(const struct server *server, const struct config *config)
{
    const char *want = config->acme.http_address;
    const char *have = server->current->config->acme.http_address;
    for (size_t i = 0; i < config->ncertificates; i++) {
        const struct cfg_certificate *c = &config->certificates[i];
        if (!c->acme || c->challenge != CHALLENGE_HTTP_01)
            continue;
        if (server->acme_httpd && have && want && strcmp(have, want) == 0)
            return false;
        log_error("%s:%d: challenge: certificate %s wants http-01 at %s, but the running "
                  "endpoint is %s (restart to bind it)",
                  config->file, c->line, c->name, want ? want : "(none)", have ? have : "none");
        return true;
    }
    return false;
}

/* Makes `config` the next generation and swaps it in (it is the
 * generation's, or freed). -1 (logged, nothing changed) when the generation
 * cannot be built. */
static int install(struct server *server, struct config *config, const char *why,
                   bool certificates_only)
{
    struct generation *running = server->current;
    /* The running config's http_address is always the bound one:
     * keep_fixed_settings() keeps it so. */
    if (http01_unanswered(server, config)) {
        log_error("%s refused; still serving generation %u", why, running->number);
        config_free(config);
        return -1;
    }
    keep_fixed_settings(running->config, config);
    unsigned number = running->number + 1;
    struct generation *next =
        generation_new(config, number, server->nworkers, running, server->tickets);
    if (!next) {
        log_error("%s refused; still serving generation %u", why, running->number);
        return -1;
    }
    if (!server->log_level_fixed)
        log_set_level(next->config->global.log_level);
    const struct cfg_global *g = &next->config->global;
    log_configure(g->log, g->log_format, g->syslog_socket);
    apply_limits(server, next->config);
    atomic_store(&server->overload_adapt, next->config->global.overload_adapt);
    pthread_mutex_lock(&server->generation_lock);
    server->current = next;
    atomic_store(&server->current_number, number);
    pthread_mutex_unlock(&server->generation_lock);
    /* Worker 0 is this thread: it switches now; the others when woken. */
    worker_switch(&server->workers[0]);
    for (unsigned i = 1; i < server->nworkers; i++)
        worker_wake(&server->workers[i]);
    prober_stop(server->prober);
    server->prober = prober_start(next, server->workers[0].loop);
    /* A refresh is the same config: the ACME thread's schedule stands. */
    if (!certificates_only && server->acme)
        acme_update(server->acme, next->config);
    else if (!certificates_only && acme_wanted(next->config))
        start_acme(server);
    ev_timer_stop(server->workers[0].loop, &server->refresh_retry); /* all is loaded */
    if (!certificates_only)
        log_sockets(next);
    log_temporary_certificates(next);
    generation_release(running); /* the server's reference */
    return 0;
}

int server_reload(struct server *server)
{
    struct generation *running = server->current;
    if (atomic_load(&server->draining)) {
        log_warn("reload: stopping already; not reloading");
        metrics_reloaded(false);
        return -1;
    }
    notify_reloading();
    log_info("reload: reading %s", server->config_path);
    int nerrors = 0;
    struct config *config = read_again(server, NULL, 0, &nerrors);
    if (!config) {
        log_error("reload refused: %s has %d error%s; still serving generation %u",
                  server->config_path, nerrors, nerrors == 1 ? "" : "s", running->number);
        return reload_done(server, -1);
    }
    if (install(server, config, "reload", false) != 0)
        return reload_done(server, -1);
    log_info("reloaded: generation %u serves new connections; sessions on earlier ones finish "
             "there",
             server->current->number);
    return reload_done(server, 0);
}

void server_renew_certificates(struct server *server)
{
    if (!server->acme)
        log_warn("no certificate has acme = yes: nothing to renew");
    acme_renew_all(server->acme);
}

int server_refresh_certificates(struct server *server)
{
    if (atomic_load(&server->draining))
        return -1;
    int nerrors = 0;
    struct config *config = read_again(server, server->current->config->text,
                                       server->current->config->text_len, &nerrors);
    if (!config || install(server, config, "certificate refresh", true) != 0) {
        log_error("acme: cannot load the new certificate; still serving generation %u, trying "
                  "again in %.0f s",
                  server->current->number, REFRESH_RETRY);
        ev_timer_stop(server->workers[0].loop, &server->refresh_retry);
        ev_timer_set(&server->refresh_retry, REFRESH_RETRY, 0.);
        ev_timer_start(server->workers[0].loop, &server->refresh_retry);
        return -1;
    }
    log_info("acme: certificates refreshed: generation %u serves new connections; sessions on "
             "earlier ones keep theirs",
             server->current->number);
    return 0;
}

int server_run(struct server *server)
{
    unsigned started = 1;
    ev_async_init(&server->acme_installed, on_acme_installed);
    server->acme_installed.data = server;
    ev_init(&server->refresh_retry, on_refresh_retry);
    server->refresh_retry.data = server;
    ev_async_start(server->workers[0].loop, &server->acme_installed);
    if (acme_wanted(server->current->config) && start_acme(server) != 0) {
        ev_async_stop(server->workers[0].loop, &server->acme_installed);
        return -1;
    }
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
        acme_stop(server->acme);
        server->acme = NULL;
        ev_async_stop(server->workers[0].loop, &server->acme_installed);
        return -1;
    }
    worker_start(&server->workers[0]);
    overload_refill_reserve(server); /* before the first client, so it counts as held */
    const struct config *c = server->current->config;
    char status[128];
    snprintf(status, sizeof status, "ready (%zu listener%s, %zu mailbox%s, %u worker%s)",
             c->nlisteners, c->nlisteners == 1 ? "" : "s", c->nmailboxes,
             c->nmailboxes == 1 ? "" : "es", started, started == 1 ? "" : "s");
    log_info("sallyport %s", status);
    notify_ready(status);
    server->prober = prober_start(server->current, server->workers[0].loop);
    if (server->metrics_httpd)
        httpd_start(server->metrics_httpd, server->workers[0].loop, scrape_page, server);
    if (server->acme_httpd)
        httpd_start(server->acme_httpd, server->workers[0].loop, acme_challenge_page, NULL);
    ev_timer_set(&server->ticket_rotation, TICKET_ROTATION, TICKET_ROTATION);
    ev_timer_start(server->workers[0].loop, &server->ticket_rotation);
    ev_timer_again(server->workers[0].loop, &server->overload_check);
    ev_run(server->workers[0].loop, 0);
    acme_stop(server->acme); /* before the loop its word goes to */
    server->acme = NULL;
    ev_async_stop(server->workers[0].loop, &server->acme_installed);
    ev_timer_stop(server->workers[0].loop, &server->refresh_retry);
    ev_timer_stop(server->workers[0].loop, &server->ticket_rotation);
    ev_timer_stop(server->workers[0].loop, &server->overload_check);
    prober_stop(server->prober);
    server->prober = NULL;
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
    httpd_free(server->metrics_httpd); /* on worker 0's loop: before it goes */
    httpd_free(server->acme_httpd);
    for (unsigned i = 0; i < server->nworkers; i++)
        worker_free(&server->workers[i]);
    free(server->workers);
    generation_release(server->current);
    metrics_free_all();
    overload_free_reserve(server);
    pthread_mutex_destroy(&server->reserve_lock);
    tls_tickets_free(server->tickets);
    client_table_free(server->clients);
    pthread_mutex_destroy(&server->clients_lock);
    pthread_mutex_destroy(&server->generation_lock);
    memset(server, 0, sizeof *server);
}

bool server_reserve_session(struct server *server)
{
    unsigned max = atomic_load(&server->max_connections);
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
    if (before < atomic_load(&server->max_connections) || !atomic_load(&server->running))
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
