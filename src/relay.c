#include <errno.h>
#include <fcntl.h>
#include <ev.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "relay.h"

/* Passes over both directions per relay_step() before others get a turn. */
#define RELAY_ROUNDS 64

enum io_progress {
    IO_NONE = 0,    /* nothing moved */
    IO_MOVED = 1,   /* bytes moved, or a direction ended */
    IO_FAILED = 2,  /* last_error says why */
    IO_NO_PIPE = 4, /* splice_in found no pipe to take (out of descriptors) */
};

/* Why this thread's last relay_step() failed (see relay_error()). */
static _Thread_local char last_error[160];

static int events_for(int result)
{
    return result == CONN_WANT_WRITE ? EV_WRITE : EV_READ;
}

static void dir_init(struct relay_dir *d, struct conn *src, struct conn *dst, struct buf **b)
{
    memset(d, 0, sizeof *d);
    d->src = src;
    d->dst = dst;
    d->buf = b;
    d->pipe[0] = d->pipe[1] = -1;
    /* Bytes already waiting are announced by the loop (level-triggered), or
     * held by TLS (conn_pending()); a socket takes writes until it says no. */
    d->can_read = false;
    d->can_write = true;
}

void relay_init(struct relay *r, struct conn *client, struct conn *backend, struct buf **up,
                struct buf **down, struct buf_pool *bufs, struct pipe_pool *pipes)
{
    memset(r, 0, sizeof *r);
    dir_init(&r->up, client, backend, up);
    dir_init(&r->down, backend, client, down);
    r->splice = client->ssl == NULL && backend->ssl == NULL;
    r->bufs = bufs;
    r->pipes = pipes;
}

static enum io_progress fail(struct relay *r, const struct relay_dir *d, const char *side,
                             const char *why)
{
    snprintf(last_error, sizeof last_error, "%s %s: %s", d == &r->up ? "client" : "backend", side,
             why);
    return IO_FAILED;
}

/* Moves buffered bytes to dst. */
static enum io_progress write_buffered(struct relay *r, struct relay_dir *d)
{
    d->write_wait = 0;
    struct buf *b = *d->buf;
    if (buf_slot_len(b) == 0)
        return IO_NONE;
    if (!d->can_write) {
        d->write_wait = EV_WRITE;
        return IO_NONE;
    }
    size_t len = b->len;
    ssize_t n = conn_write(d->dst, b->data, len);
    if (n > 0) {
        buf_consume(b, (size_t)n);
        d->bytes += (uint64_t)n;
        if ((size_t)n < len) { /* the socket's send buffer is full */
            d->can_write = false;
            d->write_wait = EV_WRITE;
        }
        return IO_MOVED;
    }
    if (n == CONN_WANT_READ || n == CONN_WANT_WRITE) {
        d->can_write = n != CONN_WANT_WRITE;
        d->write_wait = events_for((int)n);
        return IO_NONE;
    }
    return fail(r, d, "write", n == CONN_EOF ? "closed" : conn_error());
}

static enum io_progress read_buffered(struct relay *r, struct relay_dir *d)
{
    d->read_wait = 0;
    if (d->src_eof || buf_slot_space(*d->buf) == 0)
        return IO_NONE;
    d->read_wait = EV_READ;
    if (!d->can_read && !conn_pending(d->src))
        return IO_NONE;
    if (!*d->buf && !(*d->buf = buf_pool_take(r->bufs)))
        return fail(r, d, "read", "out of memory for a buffer");
    struct buf *b = *d->buf;
    size_t room = buf_space(b);
    ssize_t n = conn_read(d->src, b->data + b->len, room);
    if (n > 0) {
        b->len += (size_t)n;
        /* A short read of a raw socket drained it (TLS returns one record
         * at a time, so it says nothing there). */
        if (!d->src->ssl && (size_t)n < room)
            d->can_read = false;
        return IO_MOVED;
    }
    if (n == CONN_WANT_READ || n == CONN_WANT_WRITE) {
        d->can_read = n != CONN_WANT_READ;
        d->read_wait = events_for((int)n);
        return IO_NONE;
    }
    if (n == CONN_EOF) {
        d->src_eof = true;
        return IO_MOVED;
    }
    return fail(r, d, "read", conn_error());
}

static enum io_progress splice_in(struct relay *r, struct relay_dir *d)
{
    d->read_wait = 0;
    if (d->src_eof || (d->pipe[0] >= 0 && d->piped >= d->pipe_size))
        return IO_NONE;
    /* The pipe waits for dst: a pipe may be full (by its page slots) well
     * below its size, and a readable src would then spin the relay. */
    if (d->piped > 0 && !d->can_write)
        return IO_NONE;
    d->read_wait = EV_READ;
    if (!d->can_read)
        return IO_NONE;
    if (d->pipe[0] < 0) {
        long size = pipe_pool_take(r->pipes, d->pipe);
        if (size < 0)
            return IO_NO_PIPE;
        d->pipe_size = (size_t)size;
    }
    size_t room = d->pipe_size - d->piped;
    ssize_t n = splice(d->src->fd, NULL, d->pipe[1], NULL, room, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
        d->piped += (size_t)n;
        if ((size_t)n < room) /* the socket is drained */
            d->can_read = false;
        return IO_MOVED;
    }
    if (n == 0) {
        d->src_eof = true;
        return IO_MOVED;
    }
    if (errno == EAGAIN || errno == EINTR) {
        /* EAGAIN is ambiguous: the socket is empty or the pipe is full. The
         * pipe is never full below its size, so wait for the socket. */
        d->can_read = errno == EINTR;
        return IO_NONE;
    }
    return fail(r, d, "read", strerror(errno));
}

static enum io_progress splice_out(struct relay *r, struct relay_dir *d)
{
    d->write_wait = 0;
    if (d->piped == 0)
        return IO_NONE;
    d->write_wait = EV_WRITE;
    if (!d->can_write)
        return IO_NONE;
    ssize_t n =
        splice(d->pipe[0], NULL, d->dst->fd, NULL, d->piped, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
        d->piped -= (size_t)n;
        d->bytes += (uint64_t)n;
        if (d->piped > 0) /* the socket's send buffer is full */
            d->can_write = false;
        else
            d->write_wait = 0;
        return IO_MOVED;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        d->can_write = errno == EINTR;
        return IO_NONE;
    }
    return fail(r, d, "write", n == 0 ? "closed" : strerror(errno));
}

/* Shuts dst's write side once src has ended and everything is delivered. */
static enum io_progress finish_if_drained(struct relay_dir *d)
{
    if (!d->src_eof || d->dst_shut || buf_slot_len(*d->buf) > 0 || d->piped > 0)
        return IO_NONE;
    d->dst_shut = true;
    if (d->dst->ssl) {
        /* close_notify; a failure here only means the peer is gone too. */
        SSL_shutdown(d->dst->ssl);
    }
    shutdown(d->dst->fd, SHUT_WR);
    return IO_MOVED;
}

/* Splices src -> pipe -> dst. The pipe is taken for the bytes in flight and
 * given back once empty. Returns IO_NO_PIPE when none could be had. */
static enum io_progress splice_step(struct relay *r, struct relay_dir *d)
{
    enum io_progress in = splice_in(r, d);
    if (in == IO_FAILED || in == IO_NO_PIPE)
        return in;
    enum io_progress out = splice_out(r, d);
    if (out == IO_FAILED)
        return out;
    if (d->piped == 0)
        pipe_pool_give(r->pipes, d->pipe, d->pipe_size);
    return in | out;
}

/* Reads src into the buffer and writes it on to dst. */
static enum io_progress copy_step(struct relay *r, struct relay_dir *d)
{
    enum io_progress in = read_buffered(r, d);
    if (in == IO_FAILED)
        return in;
    enum io_progress out = write_buffered(r, d);
    if (out == IO_FAILED)
        return out;
    return in | out;
}

/* One pass over one direction; returns whether anything moved. Bytes leave
 * in the order they came: buffered bytes first, and a splice relay copies
 * through the buffer only while its pipe is empty (given back). */
static enum io_progress dir_step(struct relay *r, struct relay_dir *d)
{
    enum io_progress moved = write_buffered(r, d), p = IO_NONE;
    if (moved == IO_FAILED)
        return moved;
    if (buf_slot_len(*d->buf) == 0) {
        p = r->splice ? splice_step(r, d) : IO_NO_PIPE;
        if (p == IO_NO_PIPE)
            p = copy_step(r, d);
        if (p == IO_FAILED)
            return p;
    } else {
        /* Bytes wait for dst: read nothing more until they are out (dst's
         * event brings the relay back), or a readable src would spin it. */
        d->read_wait = 0;
    }
    buf_pool_give_if_empty(r->bufs, d->buf);
    return moved | p | finish_if_drained(d);
}

enum relay_status relay_step(struct relay *r, int client_events, int backend_events)
{
    if (client_events & EV_READ)
        r->up.can_read = true;
    if (client_events & EV_WRITE)
        r->down.can_write = true;
    if (backend_events & EV_READ)
        r->down.can_read = true;
    if (backend_events & EV_WRITE)
        r->up.can_write = true;
    /* Loop until nothing moves: TLS may hold bytes (read ahead, or decrypted)
     * that no socket event would announce. Each pass moves at least one byte
     * or ends; after RELAY_ROUNDS passes the caller is asked to come back. */
    for (int rounds = 0; rounds < RELAY_ROUNDS; rounds++) {
        enum io_progress up = dir_step(r, &r->up);
        if (up == IO_FAILED)
            return RELAY_ERROR;
        enum io_progress down = dir_step(r, &r->down);
        if (down == IO_FAILED)
            return RELAY_ERROR;
        if (r->up.dst_shut && r->down.dst_shut)
            return RELAY_DONE;
        if (up == IO_NONE && down == IO_NONE)
            return RELAY_OPEN;
    }
    /* Still moving: let other sessions have a turn, then go on (bytes TLS
     * holds would get no socket event to bring us back). */
    return RELAY_MORE;
}

const char *relay_error(void)
{
    return last_error;
}

int relay_events(const struct relay *r, const struct conn *c)
{
    int events = 0;
    const struct relay_dir *dirs[] = {&r->up, &r->down};
    for (size_t i = 0; i < 2; i++) {
        const struct relay_dir *d = dirs[i];
        if (d->src == c)
            events |= d->read_wait;
        if (d->dst == c)
            events |= d->write_wait;
    }
    /* TLS still holds bytes of this conn: stay ready to read them. */
    if (events == 0 && conn_pending(c))
        events = EV_READ;
    return events;
}

void relay_free(struct relay *r)
{
    struct relay_dir *dirs[] = {&r->up, &r->down};
    for (size_t i = 0; i < 2; i++) {
        if (dirs[i]->piped > 0)
            pipe_pool_discard(r->pipes, dirs[i]->pipe);
        else
            pipe_pool_give(r->pipes, dirs[i]->pipe, dirs[i]->pipe_size);
        dirs[i]->piped = 0;
    }
}
