#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "httpd.h"

/* Connections accepted per readiness event. */
#define ACCEPT_BATCH 16
/* Seconds to wait before accepting again after a failed accept. */
#define ACCEPT_PAUSE 1.0

struct httpd_conn {
    struct httpd *sc;
    int fd;
    ev_io io;
    ev_timer timer;
    char request[HTTPD_REQUEST_MAX];
    size_t request_len;
    char *reply; /* head and body, once the request is whole */
    size_t reply_len, reply_sent;
    struct httpd_conn *prev, *next;
};

struct httpd {
    int fd;
    struct ev_loop *loop;
    httpd_page *page;
    void *arg;
    char name[32]; /* "metrics", "acme": for the log */
    struct httpd_limits limits;
    ev_io accept_io;
    ev_timer accept_pause; /* out of descriptors: accept again later */
    struct httpd_conn *conns;
    unsigned nconns;
};

static void conn_free(struct httpd_conn *c)
{
    struct httpd *sc = c->sc;
    ev_io_stop(sc->loop, &c->io);
    ev_timer_stop(sc->loop, &c->timer);
    /* Some of what the scraper sent beyond the head is read and dropped,
     * so that the close is more likely a FIN after the reply than a reset
     * before it; bounded, so that a sender cannot hold the loop here. */
    char scratch[4096];
    for (int i = 0; i < 4 && recv(c->fd, scratch, sizeof scratch, MSG_DONTWAIT) > 0; i++)
        ;
    close(c->fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        sc->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    sc->nconns--;
    free(c->reply);
    free(c);
    if (!ev_is_active(&sc->accept_io) && !ev_is_active(&sc->accept_pause) && sc->fd >= 0)
        ev_io_start(sc->loop, &sc->accept_io); /* a slot is free again */
}

/* The reply to a whole request head: its status line and headers, and for
 * GET the body the page gave. */
static void answer(struct httpd_conn *c)
{
    char method[16] = "", target[256] = "", version[16] = "";
    int fields = sscanf(c->request, "%15s %255s %15s", method, target, version);
    bool head = strcmp(method, "HEAD") == 0;
    struct httpd_reply page = {.status = "200 OK", .type = "text/plain"};
    const char *extra = "";
    if (fields != 3 || strncmp(version, "HTTP/1.", 7) != 0) {
        page.status = "400 Bad Request";
    } else if (!head && strcmp(method, "GET") != 0) {
        page.status = "405 Method Not Allowed";
        extra = "Allow: GET, HEAD\r\n";
    } else {
        c->sc->page(c->sc->arg, target, &page);
    }
    if (!page.body)
        page.len = 0;
    char header[256];
    int n = snprintf(header, sizeof header,
                     "HTTP/1.1 %s\r\n%sContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     page.status, extra, page.type, page.len);
    size_t send_body = head ? 0 : page.len;
    c->reply = malloc((size_t)n + send_body);
    if (c->reply) {
        memcpy(c->reply, header, (size_t)n);
        if (send_body)
            memcpy(c->reply + n, page.body, send_body);
        c->reply_len = (size_t)n + send_body;
    }
    free(page.body);
}

/* Sends what is left of the reply. Returns false when the connection is
 * done (sent, or failed) and freed. */
static bool send_reply(struct httpd_conn *c)
{
    while (c->reply_sent < c->reply_len) {
        ssize_t n = send(c->fd, c->reply + c->reply_sent, c->reply_len - c->reply_sent,
                         MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            c->reply_sent += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return true;
        break;
    }
    conn_free(c);
    return false;
}

/* The end of the head: an empty line. */
static bool head_complete(const struct httpd_conn *c)
{
    return strstr(c->request, "\r\n\r\n") || strstr(c->request, "\n\n");
}

static void on_conn_io(struct ev_loop *loop, ev_io *w, int revents)
{
    struct httpd_conn *c = w->data;
    if (c->reply) {
        if (revents & EV_WRITE)
            send_reply(c);
        return;
    }
    ssize_t n = recv(c->fd, c->request + c->request_len, sizeof c->request - 1 - c->request_len,
                     MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        conn_free(c);
        return;
    }
    c->request_len += (size_t)n;
    c->request[c->request_len] = '\0';
    if (strlen(c->request) != c->request_len) {
        conn_free(c); /* a NUL byte: no HTTP client sends one */
        return;
    }
    if (!head_complete(c)) {
        if (c->request_len < sizeof c->request - 1)
            return;
        static const char too_large[] = "HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                        "Content-Length: 0\r\nConnection: close\r\n\r\n";
        c->reply = malloc(sizeof too_large - 1);
        if (c->reply) {
            memcpy(c->reply, too_large, sizeof too_large - 1);
            c->reply_len = sizeof too_large - 1;
        }
    } else {
        answer(c);
    }
    if (!c->reply) {
        conn_free(c);
        return;
    }
    ev_io_stop(loop, &c->io);
    ev_io_set(&c->io, c->fd, EV_WRITE);
    ev_io_start(loop, &c->io);
    send_reply(c);
}

static void on_conn_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop, (void)revents;
    conn_free(t->data);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct httpd *sc = w->data;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        if (sc->nconns >= sc->limits.connections) {
            ev_io_stop(loop, w); /* the rest wait in the backlog for a free slot */
            return;
        }
        int fd = accept4(sc->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED)
                return;
            /* Out of descriptors (or worse): the connection stays queued,
             * and retrying at once would spin. */
            log_warn("%s: accept: %s; pausing %.0fs", sc->name, strerror(errno), ACCEPT_PAUSE);
            ev_io_stop(loop, w);
            ev_timer_set(&sc->accept_pause, ACCEPT_PAUSE, 0.);
            ev_timer_start(loop, &sc->accept_pause);
            return;
        }
        struct httpd_conn *c = calloc(1, sizeof *c);
        if (!c) {
            log_warn("%s: out of memory for a request", sc->name);
            close(fd);
            continue;
        }
        c->sc = sc;
        c->fd = fd;
        ev_io_init(&c->io, on_conn_io, fd, EV_READ);
        ev_timer_init(&c->timer, on_conn_timeout, sc->limits.timeout, 0.);
        c->io.data = c->timer.data = c;
        ev_io_start(loop, &c->io);
        ev_timer_start(loop, &c->timer);
        c->next = sc->conns;
        if (sc->conns)
            sc->conns->prev = c;
        sc->conns = c;
        sc->nconns++;
    }
}

struct httpd *httpd_new(const struct sock_addr *addr, const char *name, struct httpd_limits limits,
                        char *err, size_t errlen)
{
    struct httpd *sc = calloc(1, sizeof *sc);
    if (!sc) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(sc->name, sizeof sc->name, "%s", name);
    sc->limits = limits;
    sc->fd = sock_listen(addr, false, err, errlen);
    if (sc->fd < 0) {
        free(sc);
        return NULL;
    }
    return sc;
}

static void on_accept_pause_over(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct httpd *sc = t->data;
    if (sc->nconns < sc->limits.connections)
        ev_io_start(loop, &sc->accept_io);
}

void httpd_start(struct httpd *sc, struct ev_loop *loop, httpd_page *page, void *arg)
{
    ev_init(&sc->accept_pause, on_accept_pause_over);
    sc->accept_pause.data = sc;
    sc->loop = loop;
    sc->page = page;
    sc->arg = arg;
    ev_io_init(&sc->accept_io, on_accept, sc->fd, EV_READ);
    sc->accept_io.data = sc;
    ev_io_start(loop, &sc->accept_io);
}

void httpd_free(struct httpd *sc)
{
    if (!sc)
        return;
    if (sc->loop) {
        ev_io_stop(sc->loop, &sc->accept_io);
        ev_timer_stop(sc->loop, &sc->accept_pause);
    }
    int fd = sc->fd;
    sc->fd = -1; /* conn_free() must not start accepting again */
    while (sc->conns)
        conn_free(sc->conns);
    close(fd);
    free(sc);
}
