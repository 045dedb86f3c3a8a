/* buf_pool — a worker's spare buffers.
 *
 * A session holds a buffer only while bytes are in flight: it takes one
 * when it has something to read or queue, and gives it back as soon as the
 * buffer is empty again. An idle session holds none, so its memory is the
 * session object alone. Given-back buffers are kept for the next taker (no
 * malloc per read) up to `max_free`; beyond that they are freed.
 *
 * One pool per worker: never shared between threads, so no locking. */
#ifndef SALLYPORT_BUF_POOL_H
#define SALLYPORT_BUF_POOL_H

#include <stddef.h>

#include "buf.h"

struct buf_pool {
    struct buf *free; /* spare buffers, linked through their first bytes */
    size_t nfree;     /* buffers on the free list */
    size_t max_free;  /* at most this many are kept */
    size_t in_use;    /* buffers taken and not yet given back */
};

/* Sets up an empty pool that keeps at most `max_free` spare buffers. */
void buf_pool_init(struct buf_pool *p, size_t max_free);

/* Returns an empty buffer (len 0), or NULL when out of memory. */
struct buf *buf_pool_take(struct buf_pool *p);

/* Gives `b` back (any contents are dropped); NULL is ignored. */
void buf_pool_give(struct buf_pool *p, struct buf *b);

/* Gives *slot back if it holds a buffer with no bytes, and clears the slot:
 * what a session calls once it is done with a buffer for now. */
void buf_pool_give_if_empty(struct buf_pool *p, struct buf **slot);

/* Frees the spare buffers (buffers still taken are the takers' to give). */
void buf_pool_drain(struct buf_pool *p);

/* The length of a slot's buffer: 0 when the slot holds none. */
static inline size_t buf_slot_len(const struct buf *b)
{
    return b ? b->len : 0;
}

/* The room in a slot's buffer: a whole buffer when the slot holds none. */
static inline size_t buf_slot_space(const struct buf *b)
{
    return b ? buf_space(b) : BUF_CAPACITY;
}

#endif
