#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "relay.h"

/* Bytes one splice call may move; the pipe holds 64 KiB by default. */
#define SPLICE_CHUNK 65536

enum io_progress { IO_NONE, IO_MOVED, IO_FAILED };

static int events_for(int result)
{
    return result == CONN_WANT_WRITE ? EV_WRITE : EV_READ;
}

static void dir_init(struct relay_dir *d, struct conn *src, struct conn *dst, struct buf *b)
{
    memset(d, 0, sizeof *d);
    d->src = src;
    d->dst = dst;
    d->buf = b;
    d->pipe[0] = d->pipe[1] = -1;
}

int relay_init(struct relay *r, struct conn *client, struct conn *backend, struct buf *up_buf,
               struct buf *down_buf)
{
    memset(r, 0, sizeof *r);
    dir_init(&r->up, client, backend, up_buf);
    dir_init(&r->down, backend, client, down_buf);
    r->splice = client->ssl == NULL && backend->ssl == NULL;
    if (r->splice) {
        if (pipe2(r->up.pipe, O_NONBLOCK | O_CLOEXEC) < 0)
            return -1;
        if (pipe2(r->down.pipe, O_NONBLOCK | O_CLOEXEC) < 0) {
            int saved = errno;
            relay_free(r);
            errno = saved;
            return -1;
        }
    }
    return 0;
}

static enum io_progress fail(struct relay *r, const struct relay_dir *d, const char *side,
                             const char *why)
{
    snprintf(r->error, sizeof r->error, "%s %s: %s", d == &r->up ? "client" : "backend", side, why);
    return IO_FAILED;
}

/* Moves buffered bytes to dst. */
static enum io_progress write_buffered(struct relay *r, struct relay_dir *d)
{
    d->write_wait = 0;
    if (buf_empty(d->buf))
        return IO_NONE;
    ssize_t n = conn_write(d->dst, d->buf->data, d->buf->len);
    if (n > 0) {
        buf_consume(d->buf, (size_t)n);
        d->bytes += (uint64_t)n;
        d->write_wait = buf_empty(d->buf) ? 0 : EV_WRITE;
        return IO_MOVED;
    }
    if (n == CONN_WANT_READ || n == CONN_WANT_WRITE) {
        d->write_wait = events_for((int)n);
        return IO_NONE;
    }
    return fail(r, d, "write", n == CONN_EOF ? "closed" : conn_error(d->dst));
}

static enum io_progress read_buffered(struct relay *r, struct relay_dir *d)
{
    d->read_wait = 0;
    if (d->src_eof || buf_space(d->buf) == 0)
        return IO_NONE;
    ssize_t n = conn_read(d->src, d->buf->data + d->buf->len, buf_space(d->buf));
    if (n > 0) {
        d->buf->len += (size_t)n;
        d->read_wait = EV_READ;
        return IO_MOVED;
    }
    if (n == CONN_WANT_READ || n == CONN_WANT_WRITE) {
        d->read_wait = events_for((int)n);
        return IO_NONE;
    }
    if (n == CONN_EOF) {
        d->src_eof = true;
        return IO_MOVED;
    }
    return fail(r, d, "read", conn_error(d->src));
}

static enum io_progress splice_in(struct relay *r, struct relay_dir *d)
{
    d->read_wait = 0;
    if (d->src_eof || d->piped >= SPLICE_CHUNK)
        return IO_NONE;
    ssize_t n = splice(d->src->fd, NULL, d->pipe[1], NULL, SPLICE_CHUNK - d->piped,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
        d->piped += (size_t)n;
        d->read_wait = EV_READ;
        return IO_MOVED;
    }
    if (n == 0) {
        d->src_eof = true;
        return IO_MOVED;
    }
    if (errno == EAGAIN || errno == EINTR) {
        /* EAGAIN is ambiguous: the socket is empty or the pipe is full. The
         * pipe is never full below SPLICE_CHUNK, so wait for the socket. */
        d->read_wait = EV_READ;
        return IO_NONE;
    }
    return fail(r, d, "read", strerror(errno));
}

static enum io_progress splice_out(struct relay *r, struct relay_dir *d)
{
    d->write_wait = 0;
    if (d->piped == 0)
        return IO_NONE;
    ssize_t n =
        splice(d->pipe[0], NULL, d->dst->fd, NULL, d->piped, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
        d->piped -= (size_t)n;
        d->bytes += (uint64_t)n;
        d->write_wait = d->piped ? EV_WRITE : 0;
        return IO_MOVED;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        d->write_wait = EV_WRITE;
        return IO_NONE;
    }
    return fail(r, d, "write", n == 0 ? "closed" : strerror(errno));
}

/* Shuts dst's write side once src has ended and everything is delivered. */
static enum io_progress finish_if_drained(struct relay_dir *d)
{
    if (!d->src_eof || d->dst_shut || !buf_empty(d->buf) || d->piped > 0)
        return IO_NONE;
    d->dst_shut = true;
    if (d->dst->ssl) {
        /* close_notify; a failure here only means the peer is gone too. */
        SSL_shutdown(d->dst->ssl);
    }
    shutdown(d->dst->fd, SHUT_WR);
    return IO_MOVED;
}

/* One pass over one direction; returns whether anything moved. */
static enum io_progress dir_step(struct relay *r, struct relay_dir *d)
{
    enum io_progress moved = IO_NONE, p;
    /* Leftover bytes from before the relay go first, in either mode. */
    if ((p = write_buffered(r, d)) == IO_FAILED)
        return p;
    moved |= p;
    if (r->splice && buf_empty(d->buf)) {
        if ((p = splice_in(r, d)) == IO_FAILED)
            return p;
        moved |= p;
        if ((p = splice_out(r, d)) == IO_FAILED)
            return p;
        moved |= p;
    } else if (!r->splice) {
        if ((p = read_buffered(r, d)) == IO_FAILED)
            return p;
        moved |= p;
        if ((p = write_buffered(r, d)) == IO_FAILED)
            return p;
        moved |= p;
    }
    moved |= finish_if_drained(d);
    return moved;
}

enum relay_status relay_step(struct relay *r)
{
    /* Loop until nothing moves: TLS may hold decrypted bytes (SSL_pending)
     * that no socket event would announce. Each pass moves at least one byte
     * or ends, and buffers are bounded, so this terminates. */
    for (int rounds = 0; rounds < 64; rounds++) {
        enum io_progress up = dir_step(r, &r->up);
        if (up == IO_FAILED)
            return RELAY_ERROR;
        enum io_progress down = dir_step(r, &r->down);
        if (down == IO_FAILED)
            return RELAY_ERROR;
        if (r->up.dst_shut && r->down.dst_shut)
            return RELAY_DONE;
        if (up == IO_NONE && down == IO_NONE)
            break;
    }
    return RELAY_OPEN;
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
    /* If more than 64 rounds were not enough, stay ready for either event. */
    if (events == 0 && conn_pending(c))
        events = EV_READ;
    return events;
}

void relay_free(struct relay *r)
{
    struct relay_dir *dirs[] = {&r->up, &r->down};
    for (size_t i = 0; i < 2; i++) {
        for (int j = 0; j < 2; j++) {
            if (dirs[i]->pipe[j] >= 0) {
                close(dirs[i]->pipe[j]);
                dirs[i]->pipe[j] = -1;
            }
        }
    }
}
