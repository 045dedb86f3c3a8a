/* pipe_pool — a worker's spare pipes for splice(2).
 *
 * A passthrough relay moves bytes socket -> pipe -> socket without copying
 * them through user space; it needs a pipe only while bytes sit in it. It
 * takes one when the source is readable and gives it back the moment the
 * pipe is empty again (as HAProxy does), so an idle passthrough session
 * holds its two sockets and nothing else. Given-back pipes are kept for the
 * next taker (no pipe2() per burst) up to `max_free`; beyond that they are
 * closed. A pipe that may still hold bytes is never given back: it is closed.
 *
 * One pool per worker: never shared between threads, so no locking. */
#ifndef SALLYPORT_PIPE_POOL_H
#define SALLYPORT_PIPE_POOL_H

#include <stddef.h>

/* What a pool pipe is asked to hold (F_SETPIPE_SZ): more bytes per
 * splice(2) call. The kernel allocates the pages only while bytes sit in
 * the pipe. It may grant less (pipe-max-size, pipe-user-pages-soft). */
#define PIPE_POOL_PIPE_SIZE (256 * 1024)

struct spare_pipe {
    int fds[2];  /* [0] read end, [1] write end */
    size_t size; /* bytes it holds */
};

struct pipe_pool {
    struct spare_pipe *free;
    size_t nfree;    /* spare pipes held */
    size_t max_free; /* at most this many are kept */
    size_t in_use;   /* pipes taken and not yet given back */
};

/* Sets up an empty pool that keeps at most `max_free` spare pipes. Returns
 * 0, or -1 when out of memory. */
int pipe_pool_init(struct pipe_pool *p, size_t max_free);

/* Stores an empty non-blocking pipe in fds. Returns the bytes it holds, or
 * -1 with errno set (EMFILE when out of descriptors). */
long pipe_pool_take(struct pipe_pool *p, int fds[2]);

/* Gives back an empty pipe of `size` bytes (what pipe_pool_take() said) and
 * sets fds to -1; fds already -1 are ignored. */
void pipe_pool_give(struct pipe_pool *p, int fds[2], size_t size);

/* Closes a pipe that may still hold bytes and sets fds to -1. */
void pipe_pool_discard(struct pipe_pool *p, int fds[2]);

/* Closes the spare pipes and frees the pool's own memory. */
void pipe_pool_free(struct pipe_pool *p);

#endif
