/* dialogue — the cleartext parts of each mail protocol, as pure functions on
 * lines and buffers. This is the only code that ever interprets bytes a
 * client or backend sent in cleartext; it does no I/O, so it is unit-tested
 * and fuzzed directly.
 *
 * Two halves per protocol:
 *  - server side: sallyport greets the client of a STARTTLS listener and
 *    answers its commands until STARTTLS (nothing else reaches TLS);
 *  - client side: sallyport reads a backend's greeting and, for a STARTTLS
 *    backend, negotiates STARTTLS with it (never downgrading).
 *
 * A new protocol is one file here and one line in dialogue.c's table. */
#ifndef SALLYPORT_DIALOGUE_H
#define SALLYPORT_DIALOGUE_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"
#include "service.h"

/* The longest line a dialogue accepts, CRLF included (RFC 5321 4.5.3.1.6). */
#define DIALOGUE_LINE_MAX 1000

enum dialogue_action {
    DIALOGUE_CONTINUE, /* reply queued (if any); keep reading lines */
    DIALOGUE_STARTTLS, /* go-ahead queued; the next bytes must be a ClientHello */
    DIALOGUE_CLOSE,    /* final reply queued; close once it is written (an error) */
    DIALOGUE_QUIT,     /* the client said goodbye; reply queued, close once written */
};

/* Server-side state of one client's cleartext phase. */
struct dialogue_server {
    const char *hostname; /* for greetings and replies */
    unsigned max_errors;  /* errors tolerated before the "too many errors" close */
    unsigned errors;      /* refused or malformed commands so far */
    unsigned state;       /* protocol-private */
    char tag[64];         /* protocol-private (IMAP command tag) */
};

enum backend_mode {
    BACKEND_GREETING_ONLY, /* plain or implicit-TLS backend: read its greeting only */
    BACKEND_STARTTLS,      /* greeting, then negotiate STARTTLS */
    BACKEND_IDENTIFY,      /* greeting already read (before STARTTLS): only name the client */
};

/* Who the client is, for a backend told so in its own protocol: SMTP and
 * POP3 XCLIENT, IMAP ID with x-originating-ip (Postfix
 * smtpd_authorized_xclient_hosts, Dovecot login_trusted_networks). Addresses
 * are numeric (inet_ntop); `local_*` is the address the client reached. */
struct client_identity {
    char addr[46];
    char local_addr[46];
    unsigned port;
    unsigned local_port;
    bool ipv6; /* addr is IPv6 (SMTP writes it "IPV6:addr") */
};

enum backend_step {
    BACKEND_NEED_MORE, /* keep reading lines (a reply may have been queued in out) */
    BACKEND_GREETED,   /* greeting complete (GREETING_ONLY) */
    BACKEND_TLS_READY, /* backend said go ahead: start TLS; it must have sent nothing more */
    BACKEND_FAILED,    /* see reason */
};

/* Client-side state of one backend's cleartext phase. */
struct dialogue_backend {
    enum backend_mode mode;
    const char *hostname; /* what sallyport calls itself (EHLO argument) */
    unsigned state;       /* protocol-private */
    unsigned lines;       /* lines seen in the current reply (bounded) */
    bool offers_starttls; /* the backend advertised STARTTLS */
    /* Set by the protocol once the backend's greeting is complete. The
     * client sees the greeting of a GREETING_ONLY backend and nothing else
     * the prelude reads: the session forwards the lines read before this
     * became true and drops the rest. */
    bool greeted; /* true from the start in IDENTIFY mode */
    /* When set (dialogue_backend_identify()), the client is named to the
     * backend after its greeting, before GREETED; a backend that does not
     * take it fails the prelude. */
    bool identify;
    unsigned offered; /* protocol-private: what the backend advertised */
    struct client_identity who;
    char reason[160]; /* why BACKEND_FAILED */
};

struct dialogue {
    enum proto proto;
    const char *name;
    /* The protocol's ALPN id (IANA; "smtp" by convention, none is
     * registered): a terminating listener refuses a client that offers
     * ALPN without it, so a TLS session meant for another protocol (an
     * HTTPS one, say: ALPACA) cannot be aimed at this one. */
    const char *alpn;
    /* The server speaks first again after STARTTLS (ManageSieve re-sends its
     * capabilities, RFC 5804 2.2): a backend's greeting is then passed on to
     * a client sallyport already greeted, instead of being swallowed. */
    bool greets_after_starttls;
    /* The client speaks first (HTTPS): there is no greeting to wait for,
     * and a backend check is done once connected (and TLS is up). */
    bool client_first;

    /* Server side. greet() queues the greeting. on_line() gets one complete
     * line (without CRLF, len <= DIALOGUE_LINE_MAX) and queues the reply. */
    void (*greet)(struct dialogue_server *ds, struct buf *out);
    enum dialogue_action (*on_line)(struct dialogue_server *ds, const char *line, size_t len,
                                    struct buf *out);
    /* A line exceeded DIALOGUE_LINE_MAX; its bytes are being discarded. */
    enum dialogue_action (*on_long_line)(struct dialogue_server *ds, struct buf *out);
    /* Replies for the session's own reasons to close (reply where allowed). */
    void (*timeout_reply)(struct dialogue_server *ds, struct buf *out);
    void (*unavailable_reply)(const char *hostname, struct buf *out);
    /* The greeting-time refusal of a client over its address's limits. */
    void (*busy_reply)(const char *hostname, struct buf *out);
    /* A greeting from sallyport itself, sent after TLS when the client was
     * not greeted and the backend's greeting went to the STARTTLS dance. */
    void (*fresh_greeting)(const char *hostname, struct buf *out);

    /* Client side. on_backend_line() gets one line from the backend (without
     * CRLF) and may queue a command in out. */
    void (*backend_start)(struct dialogue_backend *db);
    enum backend_step (*on_backend_line)(struct dialogue_backend *db, const char *line, size_t len,
                                         struct buf *out);
    /* Queues the first command that names the client (db->who) and enters
     * the protocol's identify states; NULL when the protocol has none
     * (ManageSieve: the config refuses xclient there). */
    void (*identify_start)(struct dialogue_backend *db, struct buf *out);
};

/* Returns the dialogue of a protocol (never NULL for a valid proto). */
const struct dialogue *dialogue_for(enum proto proto);

/* Initialises a server-side state. */
void dialogue_server_init(struct dialogue_server *ds, const char *hostname, unsigned max_errors);

/* Initialises a client-side state and lets the protocol set itself up. */
void dialogue_backend_init(struct dialogue_backend *db, const struct dialogue *d,
                           enum backend_mode mode, const char *hostname);

/* Asks the dialogue to name the client to the backend (d->identify_start
 * must exist). In BACKEND_IDENTIFY mode the first command is queued in out
 * at once; otherwise after the greeting. */
void dialogue_backend_identify(struct dialogue_backend *db, const struct dialogue *d,
                               const struct client_identity *who, struct buf *out);

/* Helpers for protocol files. */

/* True if line[0..len) starts with `verb` (any case) followed by a space or
 * the end of the line. */
bool dialogue_verb_is(const char *line, size_t len, const char *verb);

/* True if line[0..len) ends with an IMAP/ManageSieve literal announcement:
 * "{N}", "{N+}" or "~{N}" (RFC 9051 4.3, RFC 7888). */
bool dialogue_ends_with_literal(const char *line, size_t len);

/* The argument after the first `skip` bytes (spaces skipped), within
 * line[0..len), or NULL when only spaces follow. Never reads past len. */
const char *dialogue_argument(const char *line, size_t len, size_t skip);

/* Appends a formatted reply; one that does not fit is dropped whole. */
void dialogue_printf(struct buf *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Copies at most `max` printable bytes of a peer's line into out (size
 * max + 1), replacing others with '?', for failure reasons. */
void dialogue_quote(char *out, size_t max, const char *line, size_t len);

/* Records why a backend failed (with the offending line) and returns FAILED. */
enum backend_step dialogue_backend_fail(struct dialogue_backend *db, const char *why,
                                        const char *line, size_t len);

#endif
