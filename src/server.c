#include <stdlib.h>
#include <string.h>

#include "client_table.h"
#include "listener.h"
#include "log.h"
#include "mailbox.h"
#include "server.h"
#include "session.h"
#include "tls.h"

/* Addresses the client table remembers at most (about 3 MiB). */
#define CLIENT_TABLE_MAX 65536
/* Spare buffers (16 KiB each) and splice pipes (two descriptors each) kept
 * for reuse; more are made while needed, and given back beyond these. */
#define SPARE_BUFFERS_MAX 256
#define SPARE_PIPES_MAX   64

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

int server_start(struct server *server, struct ev_loop *loop, struct config *config)
{
    char err[256];
    memset(server, 0, sizeof *server);
    server->loop = loop;
    server->config = config;
    buf_pool_init(&server->bufs, SPARE_BUFFERS_MAX);
    if (pipe_pool_init(&server->pipes, SPARE_PIPES_MAX) < 0) {
        log_error("out of memory for the pipe pool");
        return -1;
    }
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
    if (!server->clients) {
        log_error("out of memory for the client table");
        return -1;
    }
    server->listeners =
        calloc(config->nlisteners ? config->nlisteners : 1, sizeof *server->listeners);
    server->mailboxes =
        calloc(config->nmailboxes ? config->nmailboxes : 1, sizeof *server->mailboxes);
    if (!server->listeners || !server->mailboxes)
        return -1;
    for (size_t i = 0; i < config->nmailboxes; i++) {
        const struct cfg_mailbox *m = &config->mailboxes[i];
        server->mailboxes[i] = mailbox_start(loop, m, &config->global, err, sizeof err);
        if (!server->mailboxes[i]) {
            log_error("%s:%d: mailbox %s: %s", config->file, m->line, m->name, err);
            return -1;
        }
        server->nmailboxes++;
        log_info("mailbox %s: accepting on %s (%s), storing in %s", m->name, m->address,
                 tls_flavour_name(m->tls), m->maildir);
    }
    for (size_t i = 0; i < config->nlisteners; i++) {
        const struct cfg_listener *l = &config->listeners[i];
        server->listeners[i].fd = -1;
        if (listener_open(&server->listeners[i], server, l, err, sizeof err) < 0) {
            log_error("%s:%d: listener %s: %s", config->file, l->line, l->name, err);
            return -1;
        }
        server->nlisteners++;
        listener_start(&server->listeners[i]);
        log_info("listener %s: accepting on %s (%s, %s)", l->name, l->address,
                 service_info(l->service)->name,
                 l->mode == MODE_TERMINATE ? "terminate" : "passthrough");
    }
    return 0;
}

void server_session_ended(struct server *server)
{
    for (size_t i = 0; i < server->nlisteners; i++) {
        if (server->listeners[i].paused &&
            server->nsessions < server->config->global.max_connections)
            listener_start(&server->listeners[i]);
    }
}

SSL_CTX *server_backend_ctx(const struct server *server, const struct cfg_backend *backend)
{
    size_t index = (size_t)(backend - server->config->backends);
    return index < server->config->nbackends ? server->backend_ctx[index] : NULL;
}

void server_stop(struct server *server)
{
    for (size_t i = 0; i < server->nlisteners; i++)
        listener_close(&server->listeners[i]);
    while (server->sessions)
        session_abort(server->sessions, "shutting down");
    for (size_t i = 0; i < server->nmailboxes; i++)
        mailbox_stop(server->mailboxes[i]);
    if (server->backend_ctx) {
        for (size_t i = 0; i < server->config->nbackends; i++)
            SSL_CTX_free(server->backend_ctx[i]);
    }
    free(server->backend_ctx);
    buf_pool_drain(&server->bufs);
    pipe_pool_free(&server->pipes);
    free(server->listeners);
    free(server->mailboxes);
    tls_store_free(server->store);
    client_table_free(server->clients);
    memset(server, 0, sizeof *server);
}
