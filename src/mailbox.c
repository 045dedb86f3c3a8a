/* mailbox — the embedded SMTP receiver: one listener, one session per client.
 * This file is the listener and the sessions' life, I/O, TLS and timers;
 * mailbox_smtp.c is what a session says (see mailbox_session.h).
 *
 * A session's life: accept -> [implicit TLS: handshake] -> greeting -> EHLO
 * -> [STARTTLS -> handshake -> EHLO again] -> [AUTH] -> MAIL, RCPT..., DATA
 * (streamed through smtp_data into a maildir delivery; "250" only once the
 * message is durable in new/) -> ... -> QUIT -> one log line.
 *
 * I/O: every byte held for the client lives in `in` or `out` (struct buf).
 * Each callback writes, reads and processes until nothing moves, then derives
 * the ev_io interest from the buffers (session_update_interest). Input is
 * processed only while `out` has MAILBOX_REPLY_MAX free, so a client that
 * pipelines without reading its replies stalls itself, not the daemon. */
#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "generation.h"
#include "log.h"
#include "mailbox.h"
#include "mailbox_session.h"
#include "mailbox_smtp.h"
#include "sock.h"

#define CLOSE_GRACE  10.0 /* seconds to flush a last reply before closing anyway */
#define LOOP_BUDGET  64   /* write/read/process rounds per callback before yielding */
#define ACCEPT_PAUSE 1.0  /* seconds accept sleeps when out of descriptors */

static const char *const state_names[] = {
    [MAILBOX_ACCEPTED] = "accepted",
    [MAILBOX_HANDSHAKE] = "handshake",
    [MAILBOX_GREETED] = "greeted",
    [MAILBOX_READY] = "ready",
    [MAILBOX_AUTH_PLAIN] = "auth-plain",
    [MAILBOX_AUTH_USER] = "auth-user",
    [MAILBOX_AUTH_PASS] = "auth-pass",
    [MAILBOX_MAIL] = "mail",
    [MAILBOX_RCPT] = "rcpt",
    [MAILBOX_DATA] = "data",
    [MAILBOX_STARTTLS] = "starttls",
    [MAILBOX_CLOSING] = "closing",
    [MAILBOX_CLOSED] = "closed",
};

/* ---- state and ending ------------------------------------------------- */

void mailbox_enter(struct mailbox_session *s, enum mailbox_state next)
{
    log_debug("mailbox %s: client=%s: %s -> %s", s->mb->cfg->name, s->client, state_names[s->state],
              state_names[next]);
    enum mailbox_state old = s->state;
    s->state = next;
    if (next == MAILBOX_HANDSHAKE)
        s->timer.repeat = s->mb->global->handshake_timeout;
    else if (next == MAILBOX_CLOSING)
        s->timer.repeat = CLOSE_GRACE;
    else if (old == MAILBOX_HANDSHAKE || old == MAILBOX_ACCEPTED)
        s->timer.repeat = s->mb->global->idle_timeout
                              ? s->mb->global->idle_timeout
                              : service_info(SERVICE_SUBMISSION)->idle_timeout; /* SMTP's */
    else
        return;
    ev_timer_again(s->mb->loop, &s->timer);
}

void mailbox_end(struct mailbox_session *s, const char *fmt, ...)
{
    if (s->state == MAILBOX_CLOSED)
        return;
    if (s->state != MAILBOX_CLOSING) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(s->reason, sizeof s->reason, fmt, ap);
        va_end(ap);
    }
    mailbox_enter(s, MAILBOX_CLOSED);
}

void mailbox_end_after_reply(struct mailbox_session *s, const char *reason)
{
    snprintf(s->reason, sizeof s->reason, "%s", reason);
    mailbox_enter(s, MAILBOX_CLOSING);
}

/* ---- I/O ----------------------------------------------------------------- */

static bool may_read(const struct mailbox_session *s)
{
    return mailbox_reads_input(s->state) && buf_slot_space(s->in) > 0 &&
           buf_slot_space(s->out) >= MAILBOX_REPLY_MAX;
}

/* Writes queued replies. Returns true if any byte went out. */
static bool session_flush(struct mailbox_session *s)
{
    bool progress = false;
    s->write_want = 0;
    while (buf_slot_len(s->out) > 0) {
        ssize_t n = conn_write(&s->conn, s->out->data, s->out->len);
        if (n > 0) {
            buf_consume(s->out, (size_t)n);
            s->bytes_out += (unsigned long long)n;
            progress = true;
        } else if (n == CONN_WANT_READ || n == CONN_WANT_WRITE) {
            s->write_want = (int)n;
            break;
        } else {
            mailbox_end(s, "write error: %s", n == CONN_EOF ? "peer closed" : conn_error());
            break;
        }
    }
    return progress;
}

/* Reads once into `in` when allowed. Returns true if bytes arrived. */
static bool session_read(struct mailbox_session *s)
{
    s->read_want = 0;
    if (!may_read(s))
        return false;
    struct buf *in = mailbox_buf(s, &s->in);
    if (!in) {
        mailbox_end(s, "out of memory for a buffer");
        return false;
    }
    ssize_t n = conn_read(&s->conn, in->data + in->len, buf_space(in));
    if (n > 0) {
        in->len += (size_t)n;
        s->bytes_in += (unsigned long long)n;
        ev_timer_again(s->mb->loop, &s->timer); /* activity restarts the idle timeout */
        return true;
    }
    if (n == CONN_WANT_READ || n == CONN_WANT_WRITE)
        s->read_want = (int)n;
    else if (n == CONN_EOF)
        mailbox_end(s, s->state == MAILBOX_DATA ? "client closed during DATA" : "client closed");
    else
        mailbox_end(s, "read error: %s", conn_error());
    return false;
}

static void session_start_tls(struct mailbox_session *s)
{
    SSL *ssl = SSL_new(s->mb->cfg->ctx);
    if (!ssl) {
        mailbox_end(s, "cannot create a TLS session");
        return;
    }
    conn_start_tls(&s->conn, ssl);
    SSL_set_accept_state(ssl);
    s->handshake_want = CONN_WANT_READ;
    mailbox_enter(s, MAILBOX_HANDSHAKE);
}

/* Moves bytes until nothing moves. Returns false only if it stopped because
 * its budget ran out (the caller then queues another turn). */
static bool session_run(struct mailbox_session *s)
{
    for (int round = 0; round < LOOP_BUDGET; round++) {
        if (s->state == MAILBOX_CLOSED)
            return true;
        if (s->state == MAILBOX_HANDSHAKE) {
            int r = conn_handshake(&s->conn);
            if (r == CONN_DONE) {
                SSL *ssl = s->conn.ssl;
                snprintf(s->tls, sizeof s->tls, "%s/%s", SSL_get_version(ssl),
                         SSL_get_cipher_name(ssl));
                mailbox_smtp_tls_ready(s);
                continue;
            }
            if (r == CONN_ERROR)
                mailbox_end(s, "TLS handshake failed: %s", conn_error());
            s->handshake_want = r;
            return true;
        }
        bool progress = session_flush(s);
        if (s->state == MAILBOX_CLOSED)
            return true;
        if (buf_slot_len(s->out) == 0 && s->state == MAILBOX_CLOSING) {
            mailbox_enter(s, MAILBOX_CLOSED);
            return true;
        }
        if (buf_slot_len(s->out) == 0 && s->state == MAILBOX_STARTTLS) {
            session_start_tls(s);
            continue;
        }
        progress |= session_read(s);
        if (s->state == MAILBOX_CLOSED)
            return true;
        progress |= mailbox_smtp_process(s);
        if (!progress)
            return true;
    }
    return false;
}

static void session_free(struct mailbox_session *s)
{
    struct mailbox *mb = s->mb;
    char user[USERDB_NAME_MAX * 4];
    log_info("mailbox %s: client=%s gen=%u tls=%s auth=%s messages=%lu bytes_in=%llu "
             "bytes_out=%llu duration=%.3fs close=%s",
             mb->cfg->name, s->client, mb->gen->number, s->tls,
             log_escape(user, sizeof user, s->authenticated ? s->user : "-",
                        s->authenticated ? strlen(s->user) : 1),
             s->messages, s->bytes_in, s->bytes_out, ev_now(mb->loop) - s->started,
             s->reason[0] ? s->reason : "unknown");
    ev_io_stop(mb->loop, &s->io);
    ev_timer_stop(mb->loop, &s->timer);
    maildir_abort(&s->delivery);
    conn_close(&s->conn);
    if (s->in)
        explicit_bzero(s->in->data, sizeof s->in->data);
    buf_pool_give(mb->bufs, s->in);
    buf_pool_give(mb->bufs, s->out);
    if (s->prev)
        s->prev->next = s->next;
    else
        mb->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    mb->nsessions--;
    atomic_fetch_sub(mb->open, 1);
    atomic_fetch_sub(mb->total, 1);
    explicit_bzero(s, sizeof *s);
    free(s);
}

/* Derives the ev_io interest from the session's state, buffers and wants. */
static void session_update_interest(struct mailbox_session *s)
{
    int events = 0;
    if (s->state == MAILBOX_HANDSHAKE) {
        events = s->handshake_want == CONN_WANT_WRITE ? EV_WRITE : EV_READ;
    } else {
        if (buf_slot_len(s->out) > 0)
            events |= s->write_want == CONN_WANT_READ ? EV_READ : EV_WRITE;
        if (may_read(s))
            events |= s->read_want == CONN_WANT_WRITE ? EV_WRITE : EV_READ;
    }
    if (events == s->io_events)
        return;
    ev_io_stop(s->mb->loop, &s->io);
    if (events) {
        ev_io_set(&s->io, s->conn.fd, events);
        ev_io_start(s->mb->loop, &s->io);
    }
    s->io_events = events;
}

/* Ends a callback: frees a finished session, else re-derives its interest;
 * `finished` false (budget spent) queues another turn after other watchers. */
static void session_settle(struct mailbox_session *s, bool finished)
{
    if (s->state == MAILBOX_CLOSED) {
        session_free(s);
        return;
    }
    /* An idle session holds no buffer. Input may have held a password (the
     * session object is wiped when freed, and so is what it gives back);
     * a message streaming in keeps its buffer until DATA is over. */
    if (s->in && buf_empty(s->in) && s->state != MAILBOX_DATA) {
        explicit_bzero(s->in->data, sizeof s->in->data);
        buf_pool_give_if_empty(s->mb->bufs, &s->in);
    }
    buf_pool_give_if_empty(s->mb->bufs, &s->out);
    session_update_interest(s);
    if (!finished)
        ev_feed_event(s->mb->loop, &s->io, EV_CUSTOM);
}

static void session_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    struct mailbox_session *s = w->data;
    session_settle(s, session_run(s));
}

static void session_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct mailbox_session *s = w->data;
    if (s->state == MAILBOX_HANDSHAKE)
        mailbox_end(s, "TLS handshake timeout");
    else
        mailbox_smtp_timeout(s);
    session_settle(s, session_run(s));
}

/* ---- listener ------------------------------------------------------------ */

static void session_new(struct mailbox *mb, int fd, const struct sockaddr_storage *peer)
{
    struct mailbox_session *s = calloc(1, sizeof *s);
    if (!s) {
        log_error("mailbox %s: out of memory", mb->cfg->name);
        atomic_fetch_sub(mb->open, 1);
        atomic_fetch_sub(mb->total, 1);
        close(fd);
        return;
    }
    sock_set_nodelay(fd);
    s->mb = mb;
    s->state = MAILBOX_ACCEPTED;
    s->started = ev_now(mb->loop);
    conn_init(&s->conn, fd);
    maildir_init(&s->delivery);
    sock_addr_format((const struct sockaddr *)peer, s->client, sizeof s->client);
    /* "1.2.3.4:25" -> "1.2.3.4", "[::1]:25" -> "::1" */
    snprintf(s->client_ip, sizeof s->client_ip, "%s", s->client + (s->client[0] == '['));
    char *colon = strrchr(s->client_ip, ':');
    if (colon)
        *colon = '\0';
    if (colon && colon > s->client_ip && colon[-1] == ']')
        colon[-1] = '\0';
    snprintf(s->tls, sizeof s->tls, "none");
    ev_io_init(&s->io, session_io_cb, fd, 0);
    s->io.data = s;
    ev_init(&s->timer, session_timer_cb);
    s->timer.data = s;
    s->next = mb->sessions;
    if (mb->sessions)
        mb->sessions->prev = s;
    mb->sessions = s;
    mb->nsessions++;

    if (mb->cfg->tls == TLS_IMPLICIT)
        session_start_tls(s);
    else
        mailbox_smtp_greet(s);
    session_settle(s, session_run(s));
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct mailbox *mb = w->data;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage peer;
        socklen_t len = sizeof peer;
        int fd = accept4(mb->fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0 && (errno == EINTR || errno == ECONNABORTED))
            continue;
        if (fd < 0 && (errno == EMFILE || errno == ENFILE) && mb->make_room &&
            mb->make_room(mb->make_room_arg) > 0)
            continue; /* descriptors freed: accept again at once */
        if (fd < 0 && (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)) {
            /* Retrying at once would spin: pause accepting instead. */
            log_warn("mailbox %s: accept: %s; pausing for %.0fs", mb->cfg->name, strerror(errno),
                     ACCEPT_PAUSE);
            ev_io_stop(loop, &mb->accept_io);
            ev_timer_set(&mb->accept_pause, ACCEPT_PAUSE, 0);
            ev_timer_start(loop, &mb->accept_pause);
            return;
        }
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                log_warn("mailbox %s: accept: %s", mb->cfg->name, strerror(errno));
            return;
        }
        /* Counted across workers: the limit holds for the whole process. */
        unsigned open = atomic_fetch_add(mb->open, 1);
        if (mb->global->max_connections && open >= mb->global->max_connections) {
            static const char busy[] = "421 4.7.0 Too many connections, try again later\r\n";
            atomic_fetch_sub(mb->open, 1);
            log_warn("mailbox %s: %u sessions open: refusing a connection", mb->cfg->name, open);
            if (send(fd, busy, sizeof busy - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
                log_debug("mailbox %s: busy reply: %s", mb->cfg->name, strerror(errno));
            close(fd);
            continue;
        }
        atomic_fetch_add(mb->total, 1);
        session_new(mb, fd, &peer);
    }
}

static void accept_resume_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct mailbox *mb = w->data;
    ev_io_start(loop, &mb->accept_io);
}

struct mailbox *mailbox_start(struct ev_loop *loop, struct generation *gen, size_t index,
                              unsigned worker, struct buf_pool *bufs, atomic_uint *total)
{
    const struct cfg_mailbox *cfg = &gen->config->mailboxes[index];
    struct mailbox *mb = calloc(1, sizeof *mb);
    if (!mb) {
        log_error("mailbox %s: out of memory", cfg->name);
        return NULL;
    }
    mb->loop = loop;
    mb->gen = generation_hold(gen);
    mb->cfg = cfg;
    mb->global = &gen->config->global;
    mb->open = &gen->mailbox_open[index];
    mb->total = total;
    mb->bufs = bufs;
    mb->fd = gen->mailbox_fds[index * gen->nworkers + worker];
    mb->users = gen->users[index * gen->nworkers + worker];
    gen->users[index * gen->nworkers + worker] = NULL; /* ours now */
    if (cfg->hostname && cfg->hostname[0])
        snprintf(mb->hostname, sizeof mb->hostname, "%s", cfg->hostname);
    else if (gethostname(mb->hostname, sizeof mb->hostname - 1) < 0 || !mb->hostname[0])
        snprintf(mb->hostname, sizeof mb->hostname, "localhost");
    ev_io_init(&mb->accept_io, accept_cb, mb->fd, EV_READ);
    mb->accept_io.data = mb;
    ev_init(&mb->accept_pause, accept_resume_cb);
    mb->accept_pause.data = mb;
    ev_io_start(loop, &mb->accept_io);
    char addr[64];
    log_debug("mailbox %s: listening on %s (tls=%s, maildir=%s, auth=%s)", cfg->name,
              sock_addr_format((const struct sockaddr *)&cfg->addr.ss, addr, sizeof addr),
              tls_flavour_name(cfg->tls), cfg->maildir, mb->users ? "required" : "off");
    return mb;
}

void mailbox_set_make_room(struct mailbox *mb, size_t (*make_room)(void *arg), void *arg)
{
    mb->make_room = make_room;
    mb->make_room_arg = arg;
}

void mailbox_retire(struct mailbox *mb)
{
    ev_io_stop(mb->loop, &mb->accept_io);
    ev_timer_stop(mb->loop, &mb->accept_pause);
    mb->fd = -1;
}

size_t mailbox_session_count(const struct mailbox *mb)
{
    return mb ? mb->nsessions : 0;
}

void mailbox_goodbye(struct mailbox *mb)
{
    struct mailbox_session *s = mb ? mb->sessions : NULL;
    while (s) {
        struct mailbox_session *next = s->next;
        switch (s->state) {
        case MAILBOX_CLOSING:
        case MAILBOX_CLOSED:
            break;
        case MAILBOX_ACCEPTED:
        case MAILBOX_HANDSHAKE:
        case MAILBOX_STARTTLS:
        case MAILBOX_DATA:
            mailbox_end(s, "shutting down");
            break;
        default: {
            struct buf *out = mailbox_buf(s, &s->out);
            if (out)
                buf_append_str(out, "421 4.3.0 Shutting down\r\n");
            mailbox_end_after_reply(s, "shutting down");
            break;
        }
        }
        session_settle(s, session_run(s));
        s = next;
    }
}

void mailbox_stop(struct mailbox *mb)
{
    if (!mb)
        return;
    ev_io_stop(mb->loop, &mb->accept_io);
    ev_timer_stop(mb->loop, &mb->accept_pause);
    while (mb->sessions) {
        struct mailbox_session *s = mb->sessions;
        mailbox_end(s, "shutdown");
        session_free(s);
    }
    userdb_free(mb->users);
    generation_release(mb->gen);
    free(mb);
}
