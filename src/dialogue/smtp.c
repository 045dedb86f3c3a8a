/* SMTP (RFC 5321) with STARTTLS (RFC 3207): the cleartext dialogue of a
 * submission listener, and the client side towards an SMTP backend. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "dialogue/dialogue.h"

#define SMTP_MUST_STARTTLS "530 5.7.0 Must issue a STARTTLS command first\r\n"
/* A reply longer than this many lines from a backend is refused. */
#define SMTP_REPLY_MAX_LINES 64

/* ---- server side ---------------------------------------------------------- */

static void smtp_greet(struct dialogue_server *ds, struct buf *out)
{
    dialogue_printf(out, "220 %s ESMTP sallyport\r\n", ds->hostname);
}

/* Counts a refused command; returns CLOSE with the final reply once too many. */
static enum dialogue_action smtp_error(struct dialogue_server *ds, struct buf *out,
                                       const char *reply)
{
    if (++ds->errors >= ds->max_errors) {
        dialogue_printf(out, "421 4.7.0 %s Too many errors, closing connection\r\n", ds->hostname);
        return DIALOGUE_CLOSE;
    }
    buf_append_str(out, reply);
    return DIALOGUE_CONTINUE;
}

static enum dialogue_action smtp_ehlo(struct dialogue_server *ds, const char *line, size_t len,
                                      struct buf *out)
{
    if (!dialogue_argument(line, len, 4))
        return smtp_error(ds, out, "501 5.5.4 Syntax: EHLO hostname\r\n");
    dialogue_printf(out, "250-%s\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n", ds->hostname);
    return DIALOGUE_CONTINUE;
}

static enum dialogue_action smtp_helo(struct dialogue_server *ds, const char *line, size_t len,
                                      struct buf *out)
{
    if (!dialogue_argument(line, len, 4))
        return smtp_error(ds, out, "501 5.5.4 Syntax: HELO hostname\r\n");
    dialogue_printf(out, "250 %s\r\n", ds->hostname);
    return DIALOGUE_CONTINUE;
}

static enum dialogue_action smtp_ok(struct dialogue_server *ds, const char *line, size_t len,
                                    struct buf *out)
{
    (void)ds, (void)line, (void)len;
    buf_append_str(out, "250 2.0.0 OK\r\n");
    return DIALOGUE_CONTINUE;
}

static enum dialogue_action smtp_quit(struct dialogue_server *ds, const char *line, size_t len,
                                      struct buf *out)
{
    (void)line, (void)len;
    dialogue_printf(out, "221 2.0.0 %s Bye\r\n", ds->hostname);
    return DIALOGUE_QUIT;
}

static enum dialogue_action smtp_starttls(struct dialogue_server *ds, const char *line, size_t len,
                                          struct buf *out)
{
    if (dialogue_argument(line, len, 8))
        return smtp_error(ds, out, "501 5.5.4 Syntax: STARTTLS\r\n");
    buf_append_str(out, "220 2.0.0 Ready to start TLS\r\n");
    return DIALOGUE_STARTTLS;
}

struct smtp_command {
    const char *verb;
    enum dialogue_action (*proceed)(struct dialogue_server *ds, const char *line, size_t len,
                                    struct buf *out);
};

/* Everything a client may do before TLS. Anything else gets 530. */
static const struct smtp_command smtp_commands[] = {
    {"EHLO", smtp_ehlo}, {"HELO", smtp_helo}, {"NOOP", smtp_ok},
    {"RSET", smtp_ok},   {"QUIT", smtp_quit}, {"STARTTLS", smtp_starttls},
};

static enum dialogue_action smtp_on_line(struct dialogue_server *ds, const char *line, size_t len,
                                         struct buf *out)
{
    for (size_t i = 0; i < sizeof smtp_commands / sizeof smtp_commands[0]; i++) {
        if (dialogue_verb_is(line, len, smtp_commands[i].verb))
            return smtp_commands[i].proceed(ds, line, len, out);
    }
    return smtp_error(ds, out, SMTP_MUST_STARTTLS);
}

static enum dialogue_action smtp_on_long_line(struct dialogue_server *ds, struct buf *out)
{
    return smtp_error(ds, out, "500 5.5.6 Line too long\r\n");
}

static void smtp_timeout_reply(struct dialogue_server *ds, struct buf *out)
{
    dialogue_printf(out, "421 4.4.2 %s Timeout, closing connection\r\n", ds->hostname);
}

static void smtp_unavailable_reply(const char *hostname, struct buf *out)
{
    dialogue_printf(out, "421 4.3.0 %s Service temporarily unavailable, try again later\r\n",
                    hostname);
}

static void smtp_busy_reply(const char *hostname, struct buf *out)
{
    dialogue_printf(out, "421 4.7.0 %s Too many connections from your address, try again later\r\n",
                    hostname);
}

static void smtp_fresh_greeting(const char *hostname, struct buf *out)
{
    dialogue_printf(out, "220 %s ESMTP sallyport\r\n", hostname);
}

/* ---- client side ---------------------------------------------------------- */

enum smtp_backend_state {
    SMTP_B_GREETING, /* waiting for the 220 greeting */
    SMTP_B_EHLO,     /* EHLO sent, reading its reply */
    SMTP_B_STARTTLS, /* STARTTLS sent, waiting for 220 */
    SMTP_B_ID_EHLO,  /* identify: EHLO sent to learn the XCLIENT attributes */
    SMTP_B_XCLIENT,  /* XCLIENT sent, waiting for the fresh 220 greeting */
    SMTP_B_DONE,     /* nothing more is expected */
};

/* The XCLIENT attributes sallyport sends, when the backend lists them
 * (Postfix XCLIENT_README). HELO and PROTO are left to the client's own
 * EHLO, which follows: XCLIENT resets the session to a fresh greeting. */
enum xclient_attr {
    XCLIENT_NAME = 1 << 0,
    XCLIENT_ADDR = 1 << 1,
    XCLIENT_PORT = 1 << 2,
    XCLIENT_DESTADDR = 1 << 3,
    XCLIENT_DESTPORT = 1 << 4,
};

static const struct {
    const char *word;
    enum xclient_attr attr;
} xclient_attrs[] = {
    {"NAME", XCLIENT_NAME},         {"ADDR", XCLIENT_ADDR},         {"PORT", XCLIENT_PORT},
    {"DESTADDR", XCLIENT_DESTADDR}, {"DESTPORT", XCLIENT_DESTPORT},
};

struct smtp_reply_line {
    int code;
    bool last; /* "250 " rather than "250-" */
    const char *text;
    size_t text_len;
};

/* Parses "DDD[ -]text" or "DDD"; returns false when malformed. */
static bool parse_reply_line(const char *line, size_t len, struct smtp_reply_line *r)
{
    if (len < 3 || !isdigit((unsigned char)line[0]) || !isdigit((unsigned char)line[1]) ||
        !isdigit((unsigned char)line[2]))
        return false;
    if (len > 3 && line[3] != ' ' && line[3] != '-')
        return false;
    r->code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    r->last = len == 3 || line[3] == ' ';
    r->text = len > 4 ? line + 4 : line + len;
    r->text_len = len > 4 ? len - 4 : 0;
    return true;
}

static enum backend_step backend_fail(struct dialogue_backend *db, const char *why,
                                      const char *line, size_t len)
{
    db->state = SMTP_B_DONE;
    return dialogue_backend_fail(db, why, line, len);
}

static void smtp_backend_start(struct dialogue_backend *db)
{
    db->state = SMTP_B_GREETING;
}

/* XCLIENT needs the backend's EHLO reply first: it lists the attributes the
 * backend takes from us, and none when we are not authorized. */
static void smtp_identify_start(struct dialogue_backend *db, struct buf *out)
{
    dialogue_printf(out, "EHLO %s\r\n", db->hostname);
    db->offered = 0;
    db->lines = 0;
    db->state = SMTP_B_ID_EHLO;
}

/* Records the attributes of an "XCLIENT attr attr..." EHLO keyword. */
static void note_xclient(struct dialogue_backend *db, const char *text, size_t len)
{
    if (len < 7 || strncasecmp(text, "XCLIENT", 7) != 0 || (len > 7 && text[7] != ' '))
        return;
    for (size_t at = 7; at < len;) {
        while (at < len && text[at] == ' ')
            at++;
        size_t end = at;
        while (end < len && text[end] != ' ')
            end++;
        for (size_t i = 0; i < sizeof xclient_attrs / sizeof xclient_attrs[0]; i++) {
            const char *word = xclient_attrs[i].word;
            if (end - at == strlen(word) && strncasecmp(text + at, word, end - at) == 0)
                db->offered |= xclient_attrs[i].attr;
        }
        at = end;
    }
}

/* Queues "XCLIENT ..." with what the backend takes and sallyport knows:
 * numeric addresses and ports only, so nothing a peer sent can reach it. */
static void queue_xclient(struct dialogue_backend *db, struct buf *out)
{
    const struct client_identity *who = &db->who;
    char name[32] = "", port[16] = "", dest[80] = "", dport[24] = "";
    if (db->offered & XCLIENT_NAME) /* no reverse lookup here: say so */
        snprintf(name, sizeof name, " NAME=[UNAVAILABLE]");
    if (db->offered & XCLIENT_PORT)
        snprintf(port, sizeof port, " PORT=%u", who->port);
    if ((db->offered & XCLIENT_DESTADDR) && who->local_addr[0])
        snprintf(dest, sizeof dest, " DESTADDR=%s%s", strchr(who->local_addr, ':') ? "IPV6:" : "",
                 who->local_addr);
    if ((db->offered & XCLIENT_DESTPORT) && who->local_addr[0])
        snprintf(dport, sizeof dport, " DESTPORT=%u", who->local_port);
    dialogue_printf(out, "XCLIENT ADDR=%s%s%s%s%s%s\r\n", who->ipv6 ? "IPV6:" : "", who->addr, name,
                    port, dest, dport);
}

static enum backend_step smtp_on_backend_line(struct dialogue_backend *db, const char *line,
                                              size_t len, struct buf *out)
{
    struct smtp_reply_line r;
    if (!parse_reply_line(line, len, &r))
        return backend_fail(db, "malformed reply from backend", line, len);
    if (++db->lines > SMTP_REPLY_MAX_LINES)
        return backend_fail(db, "backend reply too long", line, len);

    switch (db->state) {
    case SMTP_B_GREETING:
        if (r.code != 220)
            return backend_fail(db, "backend refused the session", line, len);
        if (!r.last)
            return BACKEND_NEED_MORE;
        db->lines = 0;
        db->greeted = true;
        if (db->mode == BACKEND_GREETING_ONLY && db->identify) {
            smtp_identify_start(db, out);
            return BACKEND_NEED_MORE;
        }
        if (db->mode == BACKEND_GREETING_ONLY) {
            db->state = SMTP_B_DONE;
            return BACKEND_GREETED;
        }
        dialogue_printf(out, "EHLO %s\r\n", db->hostname);
        db->state = SMTP_B_EHLO;
        return BACKEND_NEED_MORE;
    case SMTP_B_EHLO:
        if (r.code != 250)
            return backend_fail(db, "backend refused EHLO", line, len);
        /* The first line is the server's name, the rest are extensions. */
        if (db->lines > 1 && r.text_len >= 8 && strncasecmp(r.text, "STARTTLS", 8) == 0 &&
            (r.text_len == 8 || r.text[8] == ' '))
            db->offers_starttls = true;
        if (!r.last)
            return BACKEND_NEED_MORE;
        db->lines = 0;
        if (!db->offers_starttls)
            return backend_fail(db, "backend does not offer STARTTLS, refusing to downgrade", line,
                                len);
        buf_append_str(out, "STARTTLS\r\n");
        db->state = SMTP_B_STARTTLS;
        return BACKEND_NEED_MORE;
    case SMTP_B_STARTTLS:
        if (r.code != 220)
            return backend_fail(db, "backend refused STARTTLS", line, len);
        if (!r.last)
            return BACKEND_NEED_MORE;
        db->state = SMTP_B_DONE;
        return BACKEND_TLS_READY;
    case SMTP_B_ID_EHLO:
        if (r.code != 250)
            return backend_fail(db, "backend refused EHLO", line, len);
        if (db->lines > 1)
            note_xclient(db, r.text, r.text_len);
        if (!r.last)
            return BACKEND_NEED_MORE;
        db->lines = 0;
        if (!(db->offered & XCLIENT_ADDR))
            return backend_fail(db,
                                "backend does not offer XCLIENT ADDR to sallyport (Postfix: "
                                "smtpd_authorized_xclient_hosts)",
                                line, len);
        queue_xclient(db, out);
        db->state = SMTP_B_XCLIENT;
        return BACKEND_NEED_MORE;
    case SMTP_B_XCLIENT:
        if (r.code / 100 != 2)
            return backend_fail(db, "backend refused XCLIENT", line, len);
        if (!r.last)
            return BACKEND_NEED_MORE;
        db->state = SMTP_B_DONE;
        return BACKEND_GREETED;
    default:
        return backend_fail(db, "unexpected reply from backend", line, len);
    }
}

const struct dialogue dialogue_smtp = {
    .proto = PROTO_SMTP,
    .name = "smtp",
    .alpn = "smtp",
    .greet = smtp_greet,
    .on_line = smtp_on_line,
    .on_long_line = smtp_on_long_line,
    .timeout_reply = smtp_timeout_reply,
    .unavailable_reply = smtp_unavailable_reply,
    .busy_reply = smtp_busy_reply,
    .fresh_greeting = smtp_fresh_greeting,
    .backend_start = smtp_backend_start,
    .on_backend_line = smtp_on_backend_line,
    .identify_start = smtp_identify_start,
};
