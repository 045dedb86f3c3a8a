#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "conn.h"
#include "dialogue/dialogue.h"
#include "health.h"
#include "log.h"
#include "probe.h"
#include "proxy_header.h"
#include "generation.h"
#include "sock.h"
#include "tls.h"

enum probe_state {
    PROBE_IDLE,       /* waiting for the next check */
    PROBE_CONNECTING, /* non-blocking connect */
    PROBE_HANDSHAKE,  /* implicit TLS: the handshake */
    PROBE_GREETING,   /* reading the greeting */
};

/* One address of one endpoint of one backend, checked on its own timer. */
struct probe {
    struct prober *owner;
    const struct cfg_backend *backend;
    enum service service;
    size_t addr;
    enum probe_state state;
    bool verify; /* some session terminates towards it: its certificate must pass */
    struct conn conn;
    ev_io io;
    ev_timer every;    /* check_interval */
    ev_timer deadline; /* connect_timeout for the whole check */
    int wait;          /* events the current step waits for */
    struct dialogue_backend db;
    size_t len;
    char line[DIALOGUE_LINE_MAX + 1];
};

struct prober {
    struct generation *gen; /* held: the backends it checks are its config's */
    struct ev_loop *loop;
    size_t count;
    struct probe probes[];
};

/* Ends the check: closes its connection, records the result. */
static void finish(struct probe *p, const char *failure)
{
    ev_io_stop(p->owner->loop, &p->io);
    ev_timer_stop(p->owner->loop, &p->deadline);
    conn_close(&p->conn);
    p->state = PROBE_IDLE;
    struct health *health = p->owner->gen->health;
    if (failure)
        health_failed(health, HEALTH_CHECK, p->backend, p->service, p->addr, ev_now(p->owner->loop),
                      failure);
    else
        health_served(health, HEALTH_CHECK, p->backend, p->service, p->addr,
                      ev_now(p->owner->loop));
}

static void wait_for(struct probe *p, int events)
{
    if (events == p->wait)
        return;
    ev_io_stop(p->owner->loop, &p->io);
    ev_io_set(&p->io, p->conn.fd, events);
    ev_io_start(p->owner->loop, &p->io);
    p->wait = events;
}

/* A check connects as a session would, minus any client: the PROXY header
 * (if any) says so with LOCAL / UNKNOWN. */
static bool send_local_header(struct probe *p)
{
    uint8_t header[PROXY_V2_FIXED + 16];
    size_t n = 0;
    if (p->backend->proxy_protocol == PROXY_V2)
        n = proxy_header_v2_local(header, sizeof header);
    else if (p->backend->proxy_protocol == PROXY_V1)
        n = (size_t)snprintf((char *)header, sizeof header, "PROXY UNKNOWN\r\n");
    return n == 0 || send(p->conn.fd, header, n, MSG_NOSIGNAL) == (ssize_t)n;
}

static void start_greeting(struct probe *p)
{
    if (dialogue_for(service_info(p->service)->proto)->client_first) {
        finish(p, NULL); /* no greeting to wait for: connected (and TLS) is up */
        return;
    }
    dialogue_backend_init(&p->db, dialogue_for(service_info(p->service)->proto),
                          BACKEND_GREETING_ONLY, "sallyport");
    p->len = 0;
    p->state = PROBE_GREETING;
    wait_for(p, EV_READ);
}

static void on_connected(struct probe *p)
{
    int err = sock_connect_result(p->conn.fd);
    if (err) {
        char why[160];
        snprintf(why, sizeof why, "check: connect failed: %s", strerror(err));
        finish(p, why);
        return;
    }
    if (!send_local_header(p)) {
        finish(p, "check: cannot send the PROXY header");
        return;
    }
    const struct endpoint *ep = &p->backend->endpoints[p->service];
    if (ep->tls != TLS_IMPLICIT) {
        start_greeting(p); /* a STARTTLS endpoint greets in cleartext: enough */
        return;
    }
    SSL_CTX *ctx = generation_backend_ctx(p->owner->gen, p->backend);
    SSL *ssl =
        ctx ? tls_client_new(ctx, p->backend->tls_name ? p->backend->tls_name : ep->host) : NULL;
    if (!ssl) {
        finish(p, "check: cannot create a TLS session");
        return;
    }
    if (!p->verify) /* only passed through to: the clients verify it, not sallyport */
        SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL);
    conn_start_tls(&p->conn, ssl);
    p->state = PROBE_HANDSHAKE;
    wait_for(p, EV_WRITE);
}

static void on_handshake(struct probe *p)
{
    int r = conn_handshake(&p->conn);
    if (r == CONN_WANT_READ || r == CONN_WANT_WRITE) {
        wait_for(p, r == CONN_WANT_READ ? EV_READ : EV_WRITE);
        return;
    }
    if (r != CONN_DONE) {
        char why[200];
        conn_handshake_failure(&p->conn, "check: ", why, sizeof why);
        finish(p, why);
        return;
    }
    start_greeting(p);
}

/* Reads what is there and feeds each complete line to the dialogue. */
static void on_greeting(struct probe *p)
{
    const struct dialogue *d = dialogue_for(service_info(p->service)->proto);
    do {
        ssize_t n = conn_read(&p->conn, p->line + p->len, DIALOGUE_LINE_MAX - p->len);
        if (n == CONN_WANT_READ || n == CONN_WANT_WRITE)
            return;
        if (n <= 0) {
            finish(p, "check: closed before its greeting");
            return;
        }
        p->len += (size_t)n;
        char *nl;
        while ((nl = memchr(p->line, '\n', p->len)) != NULL) {
            size_t used = (size_t)(nl - p->line) + 1, text = used - 1;
            if (text > 0 && p->line[text - 1] == '\r')
                text--;
            static struct buf unused; /* GREETING_ONLY queues nothing */
            enum backend_step step = d->on_backend_line(&p->db, p->line, text, &unused);
            unused.len = 0;
            if (step == BACKEND_GREETED) {
                finish(p, NULL);
                return;
            }
            if (step == BACKEND_FAILED) {
                char why[200];
                snprintf(why, sizeof why, "check: %s", p->db.reason);
                finish(p, why);
                return;
            }
            memmove(p->line, p->line + used, p->len - used);
            p->len -= used;
        }
        if (p->len == DIALOGUE_LINE_MAX) {
            finish(p, "check: greeting line too long");
            return;
        }
    } while (conn_pending(&p->conn));
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop, (void)revents;
    struct probe *p = w->data;
    switch (p->state) {
    case PROBE_CONNECTING:
        on_connected(p);
        break;
    case PROBE_HANDSHAKE:
        on_handshake(p);
        break;
    case PROBE_GREETING:
        on_greeting(p);
        break;
    case PROBE_IDLE:
        break;
    }
}

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    finish(w->data, "check: timeout");
}

/* Starts a check unless the last one is still running. */
static void on_every(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct probe *p = w->data;
    if (p->state != PROBE_IDLE)
        return;
    int fd = sock_connect(&p->backend->endpoints[p->service].addrs[p->addr]);
    if (fd < 0) {
        if (sock_error_is_local(errno))
            return; /* our trouble, not the backend's: try again next time */
        char why[160];
        snprintf(why, sizeof why, "check: connect failed: %s", strerror(errno));
        health_failed(p->owner->gen->health, HEALTH_CHECK, p->backend, p->service, p->addr,
                      ev_now(loop), why);
        return;
    }
    conn_init(&p->conn, fd);
    p->state = PROBE_CONNECTING;
    p->wait = 0;
    wait_for(p, EV_WRITE);
    ev_timer_set(&p->deadline, p->owner->gen->config->global.connect_timeout, 0.);
    ev_timer_start(loop, &p->deadline);
}

/* True if some listener/route pair terminates TLS towards backend `b`:
 * sallyport then verifies its certificate, and so do the checks. */
static bool terminated_towards(const struct config *config, const struct cfg_backend *b)
{
    for (size_t r = 0; r < config->nroutes; r++)
        for (size_t k = 0; k < config->routes[r].nbackends; k++)
            for (size_t l = 0; config->routes[r].backends[k] == b && l < config->nlisteners; l++)
                if (route_mode(&config->listeners[l], &config->routes[r]) == MODE_TERMINATE)
                    return true;
    return false;
}

/* True if some listener offers `service` (only those endpoints are used). */
static bool served(const struct config *config, enum service service)
{
    for (size_t i = 0; i < config->nlisteners; i++)
        if (config->listeners[i].service == service)
            return true;
    return false;
}

struct prober *prober_start(struct generation *gen, struct ev_loop *loop)
{
    const struct config *config = gen->config;
    size_t count = 0;
    for (int pass = 0; pass < 2; pass++) {
        struct prober *prober = NULL;
        if (pass == 1) {
            if (count == 0)
                return NULL;
            prober = calloc(1, sizeof *prober + count * sizeof prober->probes[0]);
            if (!prober) {
                log_error("out of memory: backend checks are off");
                return NULL;
            }
            prober->gen = generation_hold(gen);
            prober->loop = loop;
        }
        size_t n = 0;
        for (size_t b = 0; b < config->nbackends; b++) {
            const struct cfg_backend *backend = &config->backends[b];
            for (int s = 0; backend->check_interval && s < SERVICE_COUNT; s++) {
                const struct endpoint *ep = &backend->endpoints[s];
                if (!ep->set || !served(config, (enum service)s))
                    continue;
                for (size_t a = 0; a < ep->naddrs; a++, n++) {
                    if (pass == 0)
                        continue;
                    struct probe *p = &prober->probes[n];
                    *p = (struct probe){.owner = prober,
                                        .backend = backend,
                                        .service = (enum service)s,
                                        .addr = a,
                                        .verify = terminated_towards(config, backend)};
                    conn_init(&p->conn, -1);
                    ev_init(&p->io, on_io);
                    /* Spread over the first second, not all at once. */
                    ev_timer_init(&p->every, on_every, 0.05 * (double)(n % 20),
                                  backend->check_interval);
                    ev_init(&p->deadline, on_deadline);
                    p->io.data = p->every.data = p->deadline.data = p;
                    ev_timer_start(loop, &p->every);
                }
            }
        }
        count = n;
        if (pass == 1) {
            prober->count = count;
            log_info("checking %zu backend address(es) actively", count);
            return prober;
        }
    }
    return NULL;
}

void prober_stop(struct prober *prober)
{
    if (!prober)
        return;
    for (size_t i = 0; i < prober->count; i++) {
        struct probe *p = &prober->probes[i];
        ev_io_stop(prober->loop, &p->io);
        ev_timer_stop(prober->loop, &p->every);
        ev_timer_stop(prober->loop, &p->deadline);
        conn_close(&p->conn);
    }
    generation_release(prober->gen);
    free(prober);
}
