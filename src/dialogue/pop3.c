/* POP3 (RFC 1939, RFC 2449) with STLS (RFC 2595): the cleartext dialogue of
 * a pop3 listener, and the client side towards a POP3 backend. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "dialogue/dialogue.h"

#define POP3_MUST_STLS "-ERR Must issue a STLS command first\r\n"
/* Lines of a backend's CAPA answer tolerated before the terminating ".". */
#define POP3_BACKEND_MAX_LINES 64

/* ---- server side ---------------------------------------------------------- */

static void pop3_greet(struct dialogue_server *ds, struct buf *out)
{
    dialogue_printf(out, "+OK %s sallyport ready\r\n", ds->hostname);
}

static enum dialogue_action pop3_error(struct dialogue_server *ds, struct buf *out,
                                       const char *reply)
{
    if (++ds->errors >= ds->max_errors) {
        dialogue_printf(out, "-ERR %s Too many errors, closing connection\r\n", ds->hostname);
        return DIALOGUE_CLOSE;
    }
    buf_append_str(out, reply);
    return DIALOGUE_CONTINUE;
}

static enum dialogue_action pop3_capa(struct dialogue_server *ds, const char *line, size_t len,
                                      struct buf *out)
{
    if (dialogue_argument(line, len, 4))
        return pop3_error(ds, out, "-ERR CAPA takes no arguments\r\n");
    /* Only STLS: USER and SASL are not offered before TLS. */
    buf_append_str(out, "+OK Capability list follows\r\nSTLS\r\nIMPLEMENTATION sallyport\r\n.\r\n");
    return DIALOGUE_CONTINUE;
}

static enum dialogue_action pop3_stls(struct dialogue_server *ds, const char *line, size_t len,
                                      struct buf *out)
{
    if (dialogue_argument(line, len, 4))
        return pop3_error(ds, out, "-ERR STLS takes no arguments\r\n");
    buf_append_str(out, "+OK Begin TLS negotiation\r\n");
    return DIALOGUE_STARTTLS;
}

static enum dialogue_action pop3_quit(struct dialogue_server *ds, const char *line, size_t len,
                                      struct buf *out)
{
    (void)line, (void)len;
    dialogue_printf(out, "+OK %s signing off\r\n", ds->hostname);
    return DIALOGUE_QUIT;
}

struct pop3_command {
    const char *verb;
    enum dialogue_action (*proceed)(struct dialogue_server *ds, const char *line, size_t len,
                                    struct buf *out);
};

/* Everything a client may do before TLS; USER, PASS, APOP and AUTH get the
 * generic refusal like any other command. */
static const struct pop3_command pop3_commands[] = {
    {"CAPA", pop3_capa},
    {"STLS", pop3_stls},
    {"QUIT", pop3_quit},
};

static enum dialogue_action pop3_on_line(struct dialogue_server *ds, const char *line, size_t len,
                                         struct buf *out)
{
    for (size_t i = 0; i < sizeof pop3_commands / sizeof pop3_commands[0]; i++) {
        if (dialogue_verb_is(line, len, pop3_commands[i].verb))
            return pop3_commands[i].proceed(ds, line, len, out);
    }
    return pop3_error(ds, out, POP3_MUST_STLS);
}

static enum dialogue_action pop3_on_long_line(struct dialogue_server *ds, struct buf *out)
{
    return pop3_error(ds, out, "-ERR Line too long\r\n");
}

static void pop3_timeout_reply(struct dialogue_server *ds, struct buf *out)
{
    dialogue_printf(out, "-ERR %s Timeout, closing connection\r\n", ds->hostname);
}

static void pop3_unavailable_reply(const char *hostname, struct buf *out)
{
    dialogue_printf(out, "-ERR [SYS/TEMP] %s Service temporarily unavailable\r\n", hostname);
}

static void pop3_busy_reply(const char *hostname, struct buf *out)
{
    dialogue_printf(out, "-ERR [SYS/TEMP] %s Too many connections from your address\r\n", hostname);
}

static void pop3_fresh_greeting(const char *hostname, struct buf *out)
{
    dialogue_printf(out, "+OK %s sallyport ready\r\n", hostname);
}

/* ---- client side ---------------------------------------------------------- */

enum pop3_backend_state {
    POP3_B_GREETING,  /* waiting for "+OK" */
    POP3_B_CAPA,      /* CAPA sent, waiting for "+OK" */
    POP3_B_CAPA_LIST, /* reading capability lines until "." */
    POP3_B_STLS,      /* STLS sent, waiting for "+OK" */
    POP3_B_XCLIENT,   /* identify: XCLIENT sent, waiting for "+OK" */
    POP3_B_DONE,      /* nothing more is expected */
};

static enum backend_step pop3_fail(struct dialogue_backend *db, const char *why, const char *line,
                                   size_t len)
{
    db->state = POP3_B_DONE;
    return dialogue_backend_fail(db, why, line, len);
}

static bool is_ok(const char *line, size_t len)
{
    return len >= 3 && strncmp(line, "+OK", 3) == 0 && (len == 3 || line[3] == ' ');
}

static void pop3_backend_start(struct dialogue_backend *db)
{
    db->state = POP3_B_GREETING;
}

/* Dovecot's POP3 XCLIENT, taken from a peer in login_trusted_networks (its
 * greeting then says "[XCLIENT]"); anyone else answers -ERR. */
static void pop3_identify_start(struct dialogue_backend *db, struct buf *out)
{
    const struct client_identity *who = &db->who;
    dialogue_printf(out, "XCLIENT ADDR=%s PORT=%u\r\n", who->addr, who->port);
    db->state = POP3_B_XCLIENT;
}

static enum backend_step pop3_on_backend_line(struct dialogue_backend *db, const char *line,
                                              size_t len, struct buf *out)
{
    if (++db->lines > POP3_BACKEND_MAX_LINES)
        return pop3_fail(db, "backend sent too many lines before TLS", line, len);
    switch (db->state) {
    case POP3_B_GREETING:
        if (!is_ok(line, len))
            return pop3_fail(db, "backend refused the session", line, len);
        db->greeted = true;
        if (db->mode == BACKEND_GREETING_ONLY && db->identify) {
            pop3_identify_start(db, out);
            return BACKEND_NEED_MORE;
        }
        if (db->mode == BACKEND_GREETING_ONLY) {
            db->state = POP3_B_DONE;
            return BACKEND_GREETED;
        }
        buf_append_str(out, "CAPA\r\n");
        db->state = POP3_B_CAPA;
        return BACKEND_NEED_MORE;
    case POP3_B_CAPA:
        if (!is_ok(line, len))
            return pop3_fail(db, "backend refused CAPA, cannot see STLS", line, len);
        db->state = POP3_B_CAPA_LIST;
        return BACKEND_NEED_MORE;
    case POP3_B_CAPA_LIST:
        if (len == 1 && line[0] == '.') {
            if (!db->offers_starttls)
                return pop3_fail(db, "backend does not offer STLS, refusing to downgrade", line,
                                 len);
            buf_append_str(out, "STLS\r\n");
            db->state = POP3_B_STLS;
            return BACKEND_NEED_MORE;
        }
        if (len == 4 && strncasecmp(line, "STLS", 4) == 0)
            db->offers_starttls = true;
        return BACKEND_NEED_MORE;
    case POP3_B_STLS:
        if (!is_ok(line, len))
            return pop3_fail(db, "backend refused STLS", line, len);
        db->state = POP3_B_DONE;
        return BACKEND_TLS_READY;
    case POP3_B_XCLIENT:
        if (!is_ok(line, len))
            return pop3_fail(db, "backend refused XCLIENT (Dovecot: login_trusted_networks)", line,
                             len);
        db->state = POP3_B_DONE;
        return BACKEND_GREETED;
    default:
        return pop3_fail(db, "unexpected line from backend", line, len);
    }
}

const struct dialogue dialogue_pop3 = {
    .proto = PROTO_POP3,
    .name = "pop3",
    .alpn = "pop3",
    .greets_after_starttls = false,
    .greet = pop3_greet,
    .on_line = pop3_on_line,
    .on_long_line = pop3_on_long_line,
    .timeout_reply = pop3_timeout_reply,
    .unavailable_reply = pop3_unavailable_reply,
    .busy_reply = pop3_busy_reply,
    .fresh_greeting = pop3_fresh_greeting,
    .backend_start = pop3_backend_start,
    .on_backend_line = pop3_on_backend_line,
    .identify_start = pop3_identify_start,
};
