/* worker — one event loop and everything that belongs to it: its listening
 * sockets (one per [listener] and [mailbox] section), its sessions and their
 * timers, and its buffer and pipe pools. A worker never touches another
 * worker's objects; what workers share lives in struct server (the current
 * generation, the client table and the connection count).
 *
 * Worker 0 runs on the main thread's default loop, which also takes the
 * signals; workers 1.. each run a thread of their own (`workers = N`). With
 * several workers every one binds its own socket per address with
 * SO_REUSEPORT, and the kernel spreads new connections across them. */
#ifndef SALLYPORT_WORKER_H
#define SALLYPORT_WORKER_H

#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "buf_pool.h"
#include "pipe_pool.h"

struct server;
struct session;
struct listener;
struct mailbox;
struct generation;

struct worker {
    struct server *server;
    unsigned id; /* 0 .. nworkers-1, named in log lines */
    struct ev_loop *loop;
    pthread_t thread;
    bool threaded;        /* runs on a thread of its own (every worker but 0) */
    ev_async wake;        /* another thread asks it to stop, or to accept again */
    atomic_bool stopping; /* set before `wake`: leave the loop */
    /* Its listeners wait for a free slot under max_connections; whoever
     * frees one wakes the worker (server_release_session()). */
    atomic_bool paused_at_limit;
    bool drain_started;   /* listeners closed, sessions finishing (server->draining) */
    bool ended;           /* goodbyes said (server->ending) */
    ev_timer drain_check; /* while draining: is every session gone? */

    struct generation *gen;     /* held: what its listeners accept for */
    struct listener *listeners; /* one per listener of gen's config */
    size_t nlisteners;
    struct mailbox **mailboxes; /* one per mailbox of gen's config */
    size_t nmailboxes;
    /* Mailboxes of earlier generations, no longer accepting, whose
     * sessions go on; freed by `sweep` once they have none. */
    struct mailbox **retired;
    size_t nretired;
    ev_timer sweep;
    /* While paused at max_connections: every second, a client waiting to be
     * accepted gets the slot of a silent one, once one is old enough to
     * give way (overload.h). */
    ev_timer evict_retry;

    struct session *sessions; /* its live sessions, a doubly linked list */
    unsigned nsessions;
    struct buf_pool bufs;   /* buffers for bytes in flight */
    struct pipe_pool pipes; /* splice pipes for bytes in flight */

    long long refusal_second;        /* the second refusals_logged counts in */
    unsigned refusals_logged;        /* refusal log lines written in that second */
    unsigned long refusals_unlogged; /* refusals beyond that, reported in one line */
};

/* Sets up worker `id` of `server`: its loop (the default loop for worker 0),
 * its pools, and its listeners and mailboxes on the current generation's
 * sockets. Returns 0, or -1 after logging what failed; worker_free()
 * cleans up either way. */
int worker_init(struct worker *w, struct server *server, unsigned id);

/* On the worker's own thread, after a reload: moves its listeners and
 * mailboxes to the server's current generation (sockets of addresses that
 * stay are the same sockets: nothing queued is lost), retires the old
 * mailboxes and closes its sockets of the generation it leaves. Sessions
 * keep the generation they started on. */
void worker_switch(struct worker *w);

/* Starts accepting: worker 0 on the caller's thread (the caller then runs
 * its loop), any other on a new thread. Returns 0, or -1 after logging. */
int worker_start(struct worker *w);

/* From any thread: makes the worker check whether it must stop, or may
 * accept again. */
void worker_wake(struct worker *w);

/* From the main thread: asks a threaded worker to leave its loop and waits
 * for its thread to end. */
void worker_join(struct worker *w);

/* Once its loop no longer runs: ends every session (logged), closes its
 * sockets and mailboxes, frees its pools and loop. */
void worker_free(struct worker *w);

/* Stops accepting on every listener until a slot under max_connections
 * frees up (then the worker is woken and accepts again). */
void worker_pause_at_limit(struct worker *w);

/* Accepts again on every listener paused at the limit, if a slot is free. */
void worker_resume_at_limit(struct worker *w);

/* How many workers `workers = auto` means: the CPUs this process may run on. */
unsigned worker_count_auto(void);

#endif
