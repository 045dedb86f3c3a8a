#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "listener.h"
#include "log.h"
#include "mailbox.h"
#include "server.h"
#include "session.h"
#include "worker.h"

/* Spare buffers (16 KiB each) and splice pipes (two descriptors each) a
 * worker keeps for reuse; more are made while needed, and freed beyond these. */
#define SPARE_BUFFERS_MAX 256
#define SPARE_PIPES_MAX   64

unsigned worker_count_auto(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set) < WORKERS_MAX ? (unsigned)CPU_COUNT(&set) : WORKERS_MAX;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n < WORKERS_MAX ? (unsigned)n : WORKERS_MAX;
}

/* While draining, on worker 0: once no client session and no mailbox
 * session is open in any worker (the shared counts), its loop ends and
 * server_run() joins the others, which keep their loops (and their
 * mailboxes' sockets) running until then. Checked on a short timer. */
static void on_drain_check(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct worker *w = t->data;
    struct server *server = w->server;
    unsigned open = atomic_load(&server->nsessions);
    for (size_t i = 0; i < server->config->nmailboxes; i++)
        open += atomic_load(&server->mailbox_sessions[i]);
    if (open > 0)
        return;
    ev_timer_stop(loop, t);
    ev_break(loop, EVBREAK_ALL);
}

/* Graceful stop, first step: no new connections here (the listening
 * sockets close, so clients are refused rather than left in a queue);
 * sessions go on. The mailboxes keep accepting: sallyport's own sessions
 * may still connect to them. */
static void worker_drain(struct worker *w)
{
    if (w->drain_started)
        return;
    w->drain_started = true;
    for (size_t i = 0; i < w->nlisteners; i++)
        listener_close(&w->listeners[i]);
    if (w->id != 0)
        return;
    ev_timer_init(&w->drain_check, on_drain_check, 0., 0.1);
    w->drain_check.data = w;
    ev_timer_again(w->loop, &w->drain_check);
    on_drain_check(w->loop, &w->drain_check, 0); /* nothing open: no need to wait */
}

/* Graceful stop, second step: every session still open says the
 * protocol's goodbye where it can (session_goodbye()). */
static void worker_end(struct worker *w)
{
    if (w->ended)
        return;
    w->ended = true;
    struct session *s = w->sessions;
    while (s) {
        struct session *next = session_next(s);
        session_goodbye(s);
        s = next;
    }
    for (size_t i = 0; i < w->nmailboxes; i++)
        mailbox_goodbye(w->mailboxes[i]);
}

/* Another thread woke the worker: leave the loop, accept again, or stop
 * gracefully. */
static void on_wake(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)revents;
    struct worker *w = a->data;
    if (atomic_load(&w->stopping)) {
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    if (atomic_load(&w->server->draining))
        worker_drain(w);
    if (atomic_load(&w->server->ending))
        worker_end(w);
    if (!w->drain_started)
        worker_resume_at_limit(w);
}

int worker_init(struct worker *w, struct server *server, unsigned id)
{
    const struct config *config = server->config;
    bool shared = server->nworkers > 1;
    char err[256];
    memset(w, 0, sizeof *w);
    w->server = server;
    w->id = id;
    atomic_init(&w->stopping, false);
    atomic_init(&w->paused_at_limit, false);
    buf_pool_init(&w->bufs, SPARE_BUFFERS_MAX);
    w->loop = id == 0 ? ev_default_loop(0) : ev_loop_new(EVFLAG_AUTO);
    w->listeners = calloc(config->nlisteners ? config->nlisteners : 1, sizeof *w->listeners);
    w->mailboxes = calloc(config->nmailboxes ? config->nmailboxes : 1, sizeof *w->mailboxes);
    if (!w->loop || !w->listeners || !w->mailboxes ||
        pipe_pool_init(&w->pipes, SPARE_PIPES_MAX) < 0) {
        log_error("worker %u: out of memory", id);
        return -1;
    }
    ev_async_init(&w->wake, on_wake);
    w->wake.data = w;
    ev_async_start(w->loop, &w->wake);
    for (size_t i = 0; i < config->nmailboxes; i++) {
        const struct cfg_mailbox *m = &config->mailboxes[i];
        w->mailboxes[i] = mailbox_start(w->loop, m, &config->global, &w->bufs, shared,
                                        &server->mailbox_sessions[i], err, sizeof err);
        if (!w->mailboxes[i]) {
            log_error("%s:%d: mailbox %s: %s", config->file, m->line, m->name, err);
            return -1;
        }
        w->nmailboxes++;
    }
    for (size_t i = 0; i < config->nlisteners; i++) {
        const struct cfg_listener *l = &config->listeners[i];
        w->listeners[i].fd = -1;
        if (listener_open(&w->listeners[i], w, l, shared, err, sizeof err) < 0) {
            log_error("%s:%d: listener %s: %s", config->file, l->line, l->name, err);
            return -1;
        }
        w->nlisteners++;
    }
    return 0;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    ev_run(w->loop, 0);
    return NULL;
}

int worker_start(struct worker *w)
{
    for (size_t i = 0; i < w->nlisteners; i++)
        listener_start(&w->listeners[i]);
    if (w->id == 0)
        return 0;
    /* Signals are the main thread's (worker 0's loop): block them here. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&w->thread, NULL, worker_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        log_error("worker %u: cannot start a thread: %s", w->id, strerror(rc));
        for (size_t i = 0; i < w->nlisteners; i++)
            listener_close(&w->listeners[i]);
        return -1;
    }
    w->threaded = true;
    return 0;
}

void worker_wake(struct worker *w)
{
    ev_async_send(w->loop, &w->wake);
}

void worker_join(struct worker *w)
{
    if (!w->threaded)
        return;
    atomic_store(&w->stopping, true);
    worker_wake(w);
    pthread_join(w->thread, NULL);
    w->threaded = false;
}

void worker_pause_at_limit(struct worker *w)
{
    if (!atomic_load(&w->paused_at_limit))
        log_warn("worker %u: %u connections, the max_connections limit; pausing accept", w->id,
                 atomic_load(&w->server->nsessions));
    for (size_t i = 0; i < w->nlisteners; i++)
        listener_pause(&w->listeners[i]);
    atomic_store(&w->paused_at_limit, true);
    /* A slot may have freed since the reservation failed, before the flag
     * was up for server_release_session() to see. */
    if (atomic_load(&w->server->nsessions) < w->server->config->global.max_connections)
        worker_resume_at_limit(w);
}

void worker_resume_at_limit(struct worker *w)
{
    if (!atomic_load(&w->paused_at_limit) ||
        atomic_load(&w->server->nsessions) >= w->server->config->global.max_connections)
        return;
    atomic_store(&w->paused_at_limit, false);
    for (size_t i = 0; i < w->nlisteners; i++) {
        if (!ev_is_active(&w->listeners[i].pause_w)) /* not backing off from EMFILE */
            listener_start(&w->listeners[i]);
    }
}

void worker_free(struct worker *w)
{
    if (!w->server)
        return;
    if (w->loop)
        ev_timer_stop(w->loop, &w->drain_check);
    for (size_t i = 0; i < w->nlisteners; i++)
        listener_close(&w->listeners[i]);
    while (w->sessions)
        session_abort(w->sessions, "shutting down");
    for (size_t i = 0; i < w->nmailboxes; i++)
        mailbox_stop(w->mailboxes[i]);
    if (w->loop)
        ev_async_stop(w->loop, &w->wake);
    buf_pool_drain(&w->bufs);
    pipe_pool_free(&w->pipes);
    free(w->listeners);
    free(w->mailboxes);
    if (w->loop)
        ev_loop_destroy(w->loop);
    memset(w, 0, sizeof *w);
}
