/* mailbox_session — private to the mailbox: one client session, shared by
 * mailbox.c (listener, I/O, TLS, timers, lifecycle) and mailbox_smtp.c (the
 * SMTP dialogue). Nothing outside those two files includes this header. */
#ifndef SALLYPORT_MAILBOX_SESSION_H
#define SALLYPORT_MAILBOX_SESSION_H

#include <ev.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "buf.h"
#include "buf_pool.h"
#include "config.h"
#include "conn.h"
#include "maildir.h"
#include "smtp_data.h"
#include "smtp_syntax.h"
#include "userdb.h"

/* Room `out` must have before a command (or the end of DATA) is processed:
 * more than the longest run of replies one line can produce. */
#define MAILBOX_REPLY_MAX 1024

struct mailbox {
    struct ev_loop *loop;
    struct generation *gen; /* held: cfg and global live in it */
    const struct cfg_mailbox *cfg;
    const struct cfg_global *global;
    char hostname[256];
    int fd; /* the generation's socket; -1 once retired */
    ev_io accept_io;
    ev_timer accept_pause;
    struct userdb *users;             /* NULL when no users file: no AUTH */
    struct mailbox_session *sessions; /* doubly linked, for mailbox_stop */
    size_t nsessions;                 /* this one's sessions */
    atomic_uint *open;                /* sessions of this mailbox in all workers */
    atomic_uint *total;               /* mailbox sessions in the whole process */
    struct buf_pool *bufs;            /* the worker's buffers */
    /* Out of descriptors: frees some if it can (the worker closes idle
     * client sessions, overload.h); returns how many. NULL: none. */
    size_t (*make_room)(void *arg);
    void *make_room_arg;
};

enum mailbox_state {
    MAILBOX_ACCEPTED,   /* just accepted: the greeting or the TLS handshake comes next */
    MAILBOX_HANDSHAKE,  /* TLS handshake (implicit TLS, or after STARTTLS) */
    MAILBOX_GREETED,    /* greeted (or TLS just started): EHLO/HELO expected */
    MAILBOX_READY,      /* after EHLO/HELO, no mail transaction open */
    MAILBOX_AUTH_PLAIN, /* AUTH PLAIN answered "334": the next line is the response */
    MAILBOX_AUTH_USER,  /* AUTH LOGIN: the next line is the base64 user name */
    MAILBOX_AUTH_PASS,  /* AUTH LOGIN: the next line is the base64 password */
    MAILBOX_MAIL,       /* MAIL FROM accepted, no recipient yet */
    MAILBOX_RCPT,       /* at least one recipient: DATA allowed */
    MAILBOX_DATA,       /* "354" sent: message bytes go through smtp_data to the maildir */
    MAILBOX_STARTTLS,   /* "220 Ready to start TLS" queued: handshake once it is sent */
    MAILBOX_CLOSING,    /* a last reply is queued: close once sent; nothing is read */
    MAILBOX_CLOSED,     /* done: freed when the current callback returns */
};

struct mailbox_session {
    struct mailbox *mb;
    struct mailbox_session *prev, *next;
    enum mailbox_state state; /* changed only by mailbox_enter() */
    struct conn conn;
    ev_io io;
    ev_timer timer;
    int io_events;        /* events `io` is started with; 0 = stopped */
    int read_want;        /* CONN_WANT_* of the last read that could not read */
    int write_want;       /* CONN_WANT_* of the last write that could not write */
    int handshake_want;   /* CONN_WANT_* of the last handshake step */
    struct buf *in, *out; /* from the worker's pool while they hold bytes, else NULL */
    char client[64];      /* "ip:port" */
    char client_ip[64];   /* "ip", for the Received header */
    char tls[96];         /* "TLSv1.3/cipher" once TLS is up, else "none" */
    bool greeting_sent;
    bool esmtp;      /* EHLO (not HELO) was used */
    bool discarding; /* skipping the rest of a too-long line, up to its LF */
    bool authenticated;
    unsigned errors;
    char helo[SMTP_DOMAIN_MAX + 1];
    char user[USERDB_NAME_MAX]; /* authenticated user; during AUTH LOGIN the name given */
    char sender[SMTP_PATH_MAX + 1];
    unsigned rcpts;
    struct smtp_data data;
    struct maildir_delivery delivery;
    unsigned long messages;
    unsigned long long bytes_in, bytes_out;
    ev_tstamp started;
    char reason[192]; /* why the session ended, for the log line */
};

/* True in the states that consume client input (lines, or DATA bytes). */
static inline bool mailbox_reads_input(enum mailbox_state state)
{
    return state == MAILBOX_GREETED || state == MAILBOX_READY || state == MAILBOX_AUTH_PLAIN ||
           state == MAILBOX_AUTH_USER || state == MAILBOX_AUTH_PASS || state == MAILBOX_MAIL ||
           state == MAILBOX_RCPT || state == MAILBOX_DATA;
}

/* The buffer in `slot` (s->in or s->out), taken from the worker's pool if
 * the slot holds none; NULL when out of memory. */
static inline struct buf *mailbox_buf(struct mailbox_session *s, struct buf **slot)
{
    if (!*slot)
        *slot = buf_pool_take(s->mb->bufs);
    return *slot;
}

static inline bool mailbox_in_tls(const struct mailbox_session *s)
{
    return s->conn.ssl != NULL;
}

/* mailbox.c: the one place the state changes. Logs "old -> new" at debug
 * level and picks the timer (handshake, last-reply grace, or idle). */
void mailbox_enter(struct mailbox_session *s, enum mailbox_state next);

/* mailbox.c: ends the session now, with the reason for the log line; it is
 * freed when the current callback returns. A reason given to
 * mailbox_end_after_reply() earlier is kept. */
void mailbox_end(struct mailbox_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* mailbox.c: ends the session once the queued replies are sent. */
void mailbox_end_after_reply(struct mailbox_session *s, const char *reason);

#endif
