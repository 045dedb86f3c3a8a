#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "listener.h"
#include "generation.h"
#include "log.h"
#include "metrics.h"
#include "overload.h"
#include "server.h"
#include "session.h"
#include "worker.h"

/* Seconds to wait before accepting again after running out of descriptors. */
#define EMFILE_BACKOFF 1.0
/* Connections accepted per readiness event, so one listener cannot starve others. */
#define ACCEPT_BATCH 32

/* True when a connection waits to be accepted on `fd`. */
static bool connection_pending(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return fd >= 0 && poll(&p, 1, 0) > 0 && (p.revents & POLLIN);
}

bool listener_pending(const struct listener *l)
{
    return connection_pending(l->fd);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop, (void)revents;
    struct listener *l = w->data;
    struct server *server = l->worker->server;
    bool evicted_for_descriptors = false;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        if (!server_reserve_session(server)) {
            /* Full. Nobody waiting: the next connection wakes this again.
             * Someone waiting: a client that has not begun TLS makes room,
             * if this worker has one (overload.h); else pause until a slot
             * frees. */
            if (!connection_pending(l->fd))
                return;
            overload_pressure(server, OVERLOAD_CONNECTIONS);
            if (session_evict_idle(l->worker, 1) > 0)
                continue;
            struct generation *gen = l->worker->gen;
            metrics_count(&gen->listener_metrics[l->cfg - gen->config->listeners]->accept_paused,
                          1);
            /* Woken by server_release_session() when a slot frees. */
            worker_pause_at_limit(l->worker);
            return;
        }
        struct sockaddr_storage peer;
        socklen_t len = sizeof peer;
        /* Admitted sessions come first: no accept until the descriptors
         * they may need are held back again (overload.h); unless none is
         * admitted (the slot just reserved is the only one), where there
         * is nothing to hold them for. */
        bool reserve_whole =
            overload_refill_reserve(server) || atomic_load(&server->nsessions) <= 1;
        int fd = reserve_whole
                     ? accept4(l->fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC)
                     : (errno = EMFILE, -1);
        if (fd < 0) {
            int err = errno;
            server_release_session(server);
            if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR || err == ECONNABORTED)
                return;
            if (err == EMFILE || err == ENFILE)
                overload_pressure(server, OVERLOAD_DESCRIPTORS);
            /* Out of this process's descriptors with a client waiting:
             * silent ones make room, once per event (then the back-off). */
            if (err == EMFILE && !evicted_for_descriptors && connection_pending(l->fd)) {
                evicted_for_descriptors = true;
                if (session_evict_idle(l->worker, OVERLOAD_EVICT_BATCH) > 0)
                    continue;
            }
            if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
                /* The pending connection stays queued; retrying now would spin. */
                log_warn("listener %s: accept: %s; pausing %.0fs", l->cfg->name, strerror(err),
                         EMFILE_BACKOFF);
                listener_pause(l);
                ev_timer_set(&l->pause_w, EMFILE_BACKOFF, 0);
                ev_timer_start(l->worker->loop, &l->pause_w);
                return;
            }
            log_error("listener %s: accept: %s", l->cfg->name, strerror(err));
            return;
        }
        unsigned open = atomic_load(&server->nsessions);
        if ((unsigned long long)open * 8 >=
            (unsigned long long)atomic_load(&server->max_connections) * 7)
            overload_pressure(server, OVERLOAD_CONNECTIONS);
        session_start(l, fd, (struct sockaddr *)&peer); /* takes the reserved slot */
    }
}

static void on_pause_over(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    struct listener *l = w->data;
    if (!atomic_load(&l->worker->paused_at_limit))
        listener_start(l);
}

void listener_init(struct listener *l, struct worker *worker, const struct cfg_listener *cfg,
                   int fd)
{
    l->worker = worker;
    l->cfg = cfg;
    l->fd = fd;
    ev_io_init(&l->accept_w, on_accept, l->fd, EV_READ);
    ev_init(&l->pause_w, on_pause_over);
    l->accept_w.data = l->pause_w.data = l;
}

void listener_start(struct listener *l)
{
    if (l->fd < 0)
        return;
    ev_timer_stop(l->worker->loop, &l->pause_w);
    ev_io_start(l->worker->loop, &l->accept_w);
}

void listener_pause(struct listener *l)
{
    ev_io_stop(l->worker->loop, &l->accept_w);
}

void listener_stop(struct listener *l)
{
    if (l->fd < 0)
        return;
    ev_io_stop(l->worker->loop, &l->accept_w);
    ev_timer_stop(l->worker->loop, &l->pause_w);
    l->fd = -1;
}
