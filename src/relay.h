/* relay — moves bytes both ways between a client and a backend conn until
 * both directions have ended.
 *
 * When neither side is TLS (passthrough), bytes move with splice(2) through a
 * pipe per direction and never enter user space; otherwise through a bounded
 * buffer per direction with conn_read/conn_write. Bytes already buffered when
 * the relay starts (a ClientHello, a backend greeting) are written first.
 *
 * The relay is driven by relay_step() after any readiness event on either
 * side; relay_events() then says which events each side must wait for. */
#ifndef SALLYPORT_RELAY_H
#define SALLYPORT_RELAY_H

#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "conn.h"

/* One direction: src -> dst. */
struct relay_dir {
    struct conn *src, *dst;
    struct buf *buf; /* bytes read from src, not yet written to dst */
    int pipe[2];     /* splice mode only */
    size_t piped;    /* bytes in the pipe */
    bool src_eof;    /* src will send nothing more */
    bool dst_shut;   /* dst's write side is shut: this direction is done */
    int read_wait;   /* EV_READ/EV_WRITE the last read is blocked on, or 0 */
    int write_wait;  /* likewise for the last write */
    uint64_t bytes;  /* bytes delivered to dst */
};

struct relay {
    struct relay_dir up;   /* client -> backend */
    struct relay_dir down; /* backend -> client */
    bool splice;
    char error[160];
};

enum relay_status {
    RELAY_OPEN,  /* wait for relay_events() and call relay_step() again */
    RELAY_DONE,  /* both directions ended cleanly */
    RELAY_ERROR, /* a side failed; relay.error says which and why */
};

/* Sets up the relay. Uses splice when neither conn has TLS. `up_buf` and
 * `down_buf` may already hold bytes to deliver. Returns 0, or -1 when pipes
 * cannot be created (errno set). */
int relay_init(struct relay *r, struct conn *client, struct conn *backend, struct buf *up_buf,
               struct buf *down_buf);

/* Does all the I/O possible right now without blocking. */
enum relay_status relay_step(struct relay *r);

/* EV_READ|EV_WRITE that `c` (one of the relay's two conns) must wait for. */
int relay_events(const struct relay *r, const struct conn *c);

/* Closes the pipes (not the conns). */
void relay_free(struct relay *r);

#endif
