/* relay — moves bytes both ways between a client and a backend conn until
 * both directions have ended.
 *
 * When neither side is TLS (passthrough), bytes move with splice(2) through a
 * pipe per direction and never enter user space; otherwise through a bounded
 * buffer per direction with conn_read/conn_write. Bytes already buffered when
 * the relay starts (a ClientHello, a backend greeting) are written first.
 *
 * Pipes and buffers come from the worker's pools and are held only while
 * bytes are in flight: a direction takes one when its source is readable and
 * gives it back as soon as it is empty, so an idle relay holds none. When no
 * pipe can be had (out of descriptors), a splice relay copies through a
 * buffer instead, so the session goes on.
 *
 * The relay is driven by relay_step() after any readiness event on either
 * side; relay_events() then says which events each side must wait for. */
#ifndef SALLYPORT_RELAY_H
#define SALLYPORT_RELAY_H

#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "buf_pool.h"
#include "conn.h"
#include "pipe_pool.h"

/* One direction: src -> dst. */
struct relay_dir {
    struct conn *src, *dst;
    struct buf **buf; /* the session's slot: bytes read from src, not yet written */
    int pipe[2];      /* splice mode, while bytes are in flight; else -1 */
    size_t pipe_size; /* bytes the pipe holds */
    size_t piped;     /* bytes in the pipe */
    bool src_eof;     /* src will send nothing more */
    /* What the last attempts and events said: src may have bytes to read,
     * dst may take more. A read is tried only when can_read (or TLS holds
     * bytes), a write only when can_write, so an idle side costs no
     * syscall; a short read or write, or EAGAIN, clears them, and an event
     * from the loop sets them again. */
    bool can_read;
    bool can_write;
    bool dst_shut;  /* dst's write side is shut: this direction is done */
    int read_wait;  /* EV_READ/EV_WRITE the last read is blocked on, or 0 */
    int write_wait; /* likewise for the last write */
    uint64_t bytes; /* bytes delivered to dst */
};

struct relay {
    struct relay_dir up;   /* client -> backend */
    struct relay_dir down; /* backend -> client */
    bool splice;
    struct buf_pool *bufs;
    struct pipe_pool *pipes;
};

enum relay_status {
    RELAY_OPEN,  /* wait for relay_events() and call relay_step() again */
    RELAY_MORE,  /* bytes are still moving: call relay_step() again soon */
    RELAY_DONE,  /* both directions ended cleanly */
    RELAY_ERROR, /* a side failed; relay_error() says which and why */
};

/* Sets up the relay. Uses splice when neither conn has TLS. `up` and `down`
 * are the session's buffer slots (client -> backend, backend -> client);
 * they may already hold bytes to deliver, and the relay fills and empties
 * them from `bufs` from here on. */
void relay_init(struct relay *r, struct conn *client, struct conn *backend, struct buf **up,
                struct buf **down, struct buf_pool *bufs, struct pipe_pool *pipes);

/* Does all the I/O possible right now without blocking, after the loop
 * reported `client_events` and `backend_events` (EV_READ|EV_WRITE, or 0). */
enum relay_status relay_step(struct relay *r, int client_events, int backend_events);

/* Which side failed and why, after relay_step() returned RELAY_ERROR on this
 * thread; valid until the next relay_step() on this thread. */
const char *relay_error(void);

/* EV_READ|EV_WRITE that `c` (one of the relay's two conns) must wait for. */
int relay_events(const struct relay *r, const struct conn *c);

/* Gives the pipes back, or closes those that still hold bytes (not the
 * conns; the buffer slots stay the session's). */
void relay_free(struct relay *r);

#endif
