#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "listener.h"
#include "log.h"
#include "server.h"
#include "session.h"
#include "sock.h"

/* Seconds to wait before accepting again after running out of descriptors. */
#define EMFILE_BACKOFF 1.0
/* Connections accepted per readiness event, so one listener cannot starve others. */
#define ACCEPT_BATCH 32

static void pause_accepting(struct listener *l, double seconds)
{
    ev_io_stop(l->server->loop, &l->accept_w);
    l->paused = true;
    if (seconds > 0) {
        ev_timer_set(&l->pause_w, seconds, 0);
        ev_timer_start(l->server->loop, &l->pause_w);
    }
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop, (void)revents;
    struct listener *l = w->data;
    struct server *server = l->server;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        if (server->nsessions >= server->config->global.max_connections) {
            /* Resumed by server_session_ended() when a session ends. */
            log_warn("listener %s: %u connections, the max_connections limit; pausing accept",
                     l->cfg->name, server->nsessions);
            pause_accepting(l, 0);
            return;
        }
        struct sockaddr_storage peer;
        socklen_t len = sizeof peer;
        int fd = accept4(l->fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED)
                return;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* The pending connection stays queued; retrying now would spin. */
                log_warn("listener %s: accept: %s; pausing %.0fs", l->cfg->name, strerror(errno),
                         EMFILE_BACKOFF);
                pause_accepting(l, EMFILE_BACKOFF);
                return;
            }
            log_error("listener %s: accept: %s", l->cfg->name, strerror(errno));
            return;
        }
        session_start(l, fd, (struct sockaddr *)&peer);
    }
}

static void on_pause_over(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    listener_start(w->data);
}

int listener_open(struct listener *l, struct server *server, const struct cfg_listener *cfg,
                  char *err, size_t errlen)
{
    l->server = server;
    l->cfg = cfg;
    l->paused = false;
    l->fd = sock_listen(&cfg->addr, err, errlen);
    if (l->fd < 0)
        return -1;
    ev_io_init(&l->accept_w, on_accept, l->fd, EV_READ);
    ev_init(&l->pause_w, on_pause_over);
    l->accept_w.data = l->pause_w.data = l;
    return 0;
}

void listener_start(struct listener *l)
{
    if (l->fd < 0)
        return;
    ev_timer_stop(l->server->loop, &l->pause_w);
    l->paused = false;
    ev_io_start(l->server->loop, &l->accept_w);
}

void listener_close(struct listener *l)
{
    if (l->fd < 0)
        return;
    ev_io_stop(l->server->loop, &l->accept_w);
    ev_timer_stop(l->server->loop, &l->pause_w);
    close(l->fd);
    l->fd = -1;
}
