#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "generation.h"
#include "listener.h"
#include "log.h"
#include "mailbox.h"
#include "overload.h"
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
    unsigned open = atomic_load(&server->nsessions) + atomic_load(&server->mailbox_sessions);
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
        listener_stop(&w->listeners[i]);
    generation_close_sockets(w->gen, w->id, true);
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
    for (size_t i = 0; i < w->nretired; i++)
        mailbox_goodbye(w->retired[i]);
}

/* Another thread woke the worker: leave the loop, move to a new
 * generation, accept again, or stop gracefully. */
static void on_wake(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)revents;
    struct worker *w = a->data;
    if (atomic_load(&w->stopping)) {
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    /* Switch first even when draining: the drain then closes the current
     * generation's sockets, not only the ones of the generation it left. */
    if (!w->drain_started && atomic_load(&w->server->current_number) != w->gen->number)
        worker_switch(w);
    if (atomic_load(&w->server->draining))
        worker_drain(w);
    if (atomic_load(&w->server->ending))
        worker_end(w);
    if (!w->drain_started)
        worker_resume_at_limit(w);
}

static void on_evict_retry(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop, (void)revents;
    struct worker *w = t->data;
    if (!atomic_load(&w->paused_at_limit)) {
        ev_timer_stop(loop, t);
        return;
    }
    for (size_t i = 0; i < w->nlisteners; i++) {
        if (listener_pending(&w->listeners[i])) {
            /* The freed slot wakes the paused workers: server_release_session(). */
            session_evict_idle(w, 1);
            return;
        }
    }
}

/* Frees the retired mailboxes whose last session has closed. */
static void on_sweep(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct worker *w = t->data;
    size_t kept = 0;
    for (size_t i = 0; i < w->nretired; i++) {
        if (mailbox_session_count(w->retired[i]) == 0)
            mailbox_stop(w->retired[i]);
        else
            w->retired[kept++] = w->retired[i];
    }
    w->nretired = kept;
    if (kept == 0)
        ev_timer_stop(loop, t);
}

/* A mailbox ran out of descriptors: idle client sessions of this worker
 * make room (overload.h). */
static size_t make_room(void *arg)
{
    struct worker *w = arg;
    if (!overload_enabled(w->server))
        return 0;
    overload_pressure(w->server, OVERLOAD_DESCRIPTORS);
    size_t freed = overload_release_reserve(w->server);
    return freed ? freed : session_evict_idle(w, OVERLOAD_EVICT_BATCH);
}

/* Listeners and mailboxes for w->gen, on its sockets. Returns 0, or -1
 * (logged) when out of memory. */
static int worker_open(struct worker *w)
{
    const struct config *config = w->gen->config;
    w->listeners = calloc(config->nlisteners ? config->nlisteners : 1, sizeof *w->listeners);
    w->mailboxes = calloc(config->nmailboxes ? config->nmailboxes : 1, sizeof *w->mailboxes);
    if (!w->listeners || !w->mailboxes) {
        log_error("worker %u: out of memory", w->id);
        return -1;
    }
    for (size_t i = 0; i < config->nmailboxes; i++) {
        w->mailboxes[i] =
            mailbox_start(w->loop, w->gen, i, w->id, &w->bufs, &w->server->mailbox_sessions);
        if (!w->mailboxes[i])
            return -1;
        mailbox_set_make_room(w->mailboxes[i], make_room, w);
        w->nmailboxes++;
    }
    for (size_t i = 0; i < config->nlisteners; i++) {
        listener_init(&w->listeners[i], w, &config->listeners[i],
                      w->gen->listener_fds[i * w->gen->nworkers + w->id]);
        w->nlisteners++;
    }
    return 0;
}

/* Stops accepting on w->gen's listeners and mailboxes and closes the
 * worker's sockets of it; mailboxes with sessions are kept as retired. */
static void worker_close(struct worker *w)
{
    for (size_t i = 0; i < w->nlisteners; i++)
        listener_stop(&w->listeners[i]);
    struct mailbox **grown = realloc(w->retired, (w->nretired + w->nmailboxes + 1) * sizeof *grown);
    if (grown)
        w->retired = grown;
    for (size_t i = 0; i < w->nmailboxes; i++) {
        mailbox_retire(w->mailboxes[i]);
        if (grown && mailbox_session_count(w->mailboxes[i]) > 0)
            w->retired[w->nretired++] = w->mailboxes[i];
        else
            mailbox_stop(w->mailboxes[i]); /* no room to keep it: its sessions end */
    }
    if (w->nretired > 0 && !ev_is_active(&w->sweep))
        ev_timer_again(w->loop, &w->sweep);
    free(w->listeners);
    free(w->mailboxes);
    w->listeners = NULL;
    w->mailboxes = NULL;
    w->nlisteners = w->nmailboxes = 0;
    if (w->gen)
        generation_close_sockets(w->gen, w->id, false);
}

void worker_switch(struct worker *w)
{
    struct generation *next = server_generation(w->server);
    if (next == w->gen) {
        generation_release(next);
        return;
    }
    worker_close(w);
    generation_release(w->gen);
    w->gen = next;
    if (worker_open(w) < 0) {
        log_error("worker %u: cannot accept for generation %u", w->id, next->number);
        return;
    }
    log_debug("worker %u: accepting for generation %u", w->id, next->number);
    if (!atomic_load(&w->paused_at_limit)) {
        for (size_t i = 0; i < w->nlisteners; i++)
            listener_start(&w->listeners[i]);
    }
}

int worker_init(struct worker *w, struct server *server, unsigned id)
{
    memset(w, 0, sizeof *w);
    w->server = server;
    w->id = id;
    atomic_init(&w->stopping, false);
    atomic_init(&w->paused_at_limit, false);
    buf_pool_init(&w->bufs, SPARE_BUFFERS_MAX);
    w->loop = id == 0 ? ev_default_loop(0) : ev_loop_new(EVFLAG_AUTO);
    if (!w->loop || pipe_pool_init(&w->pipes, SPARE_PIPES_MAX) < 0) {
        log_error("worker %u: out of memory", id);
        return -1;
    }
    ev_async_init(&w->wake, on_wake);
    w->wake.data = w;
    ev_async_start(w->loop, &w->wake);
    ev_init(&w->evict_retry, on_evict_retry);
    w->evict_retry.repeat = 1.0;
    w->evict_retry.data = w;
    ev_init(&w->sweep, on_sweep);
    w->sweep.repeat = 1.0;
    w->sweep.data = w;
    w->gen = server_generation(server);
    return worker_open(w);
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
            listener_stop(&w->listeners[i]);
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
    if (!ev_is_active(&w->evict_retry))
        ev_timer_again(w->loop, &w->evict_retry);
    /* A slot may have freed since the reservation failed, before the flag
     * was up for server_release_session() to see. */
    if (atomic_load(&w->server->nsessions) < atomic_load(&w->server->max_connections))
        worker_resume_at_limit(w);
}

void worker_resume_at_limit(struct worker *w)
{
    if (!atomic_load(&w->paused_at_limit) ||
        atomic_load(&w->server->nsessions) >= atomic_load(&w->server->max_connections))
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
    if (w->loop) {
        ev_timer_stop(w->loop, &w->drain_check);
        ev_timer_stop(w->loop, &w->sweep);
        ev_timer_stop(w->loop, &w->evict_retry);
    }
    for (size_t i = 0; i < w->nlisteners; i++)
        listener_stop(&w->listeners[i]);
    while (w->sessions)
        session_abort(w->sessions, "shutting down");
    for (size_t i = 0; i < w->nmailboxes; i++)
        mailbox_stop(w->mailboxes[i]);
    for (size_t i = 0; i < w->nretired; i++)
        mailbox_stop(w->retired[i]);
    if (w->gen)
        generation_close_sockets(w->gen, w->id, false);
    generation_release(w->gen);
    if (w->loop)
        ev_async_stop(w->loop, &w->wake);
    buf_pool_drain(&w->bufs);
    pipe_pool_free(&w->pipes);
    free(w->listeners);
    free(w->mailboxes);
    free(w->retired);
    if (w->loop)
        ev_loop_destroy(w->loop);
    memset(w, 0, sizeof *w);
}
