/* IMAP (RFC 9051, RFC 3501) with STARTTLS (RFC 2595): the cleartext dialogue
 * of an imap listener, and the client side towards an IMAP backend. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "dialogue/dialogue.h"

#define IMAP_CAPABILITIES "IMAP4rev1 STARTTLS LOGINDISABLED"
/* Untagged lines tolerated from a backend before its tagged answer. */
#define IMAP_BACKEND_MAX_LINES 64
/* The longest command tag sallyport echoes. */
#define IMAP_TAG_MAX 63

/* ---- server side ---------------------------------------------------------- */

static void imap_greet(struct dialogue_server *ds, struct buf *out)
{
    dialogue_printf(out, "* OK [CAPABILITY " IMAP_CAPABILITIES "] %s sallyport ready\r\n",
                    ds->hostname);
}

static enum dialogue_action imap_too_many(struct dialogue_server *ds, struct buf *out)
{
    dialogue_printf(out, "* BYE %s Too many errors, closing connection\r\n", ds->hostname);
    return DIALOGUE_CLOSE;
}

/* Counts a refused command; the reply is "<tag> <text>". */
static enum dialogue_action imap_error(struct dialogue_server *ds, struct buf *out,
                                       const char *text)
{
    if (++ds->errors >= ds->max_errors)
        return imap_too_many(ds, out);
    dialogue_printf(out, "%s %s\r\n", ds->tag, text);
    return DIALOGUE_CONTINUE;
}

/* RFC 9051 tag: any ASTRING-CHAR (atom characters and "]") except "+". */
static bool is_tag_char(unsigned char c)
{
    return c > 0x20 && c < 0x7f && !strchr("(){%*\"\\+", c);
}

static enum dialogue_action imap_capability(struct dialogue_server *ds, const char *args,
                                            struct buf *out)
{
    if (args)
        return imap_error(ds, out, "BAD CAPABILITY takes no arguments");
    dialogue_printf(out, "* CAPABILITY " IMAP_CAPABILITIES "\r\n%s OK CAPABILITY completed\r\n",
                    ds->tag);
    return DIALOGUE_CONTINUE;
}

static enum dialogue_action imap_noop(struct dialogue_server *ds, const char *args, struct buf *out)
{
    if (args)
        return imap_error(ds, out, "BAD NOOP takes no arguments");
    dialogue_printf(out, "%s OK NOOP completed\r\n", ds->tag);
    return DIALOGUE_CONTINUE;
}

static enum dialogue_action imap_logout(struct dialogue_server *ds, const char *args,
                                        struct buf *out)
{
    if (args)
        return imap_error(ds, out, "BAD LOGOUT takes no arguments");
    dialogue_printf(out, "* BYE %s logging out\r\n%s OK LOGOUT completed\r\n", ds->hostname,
                    ds->tag);
    return DIALOGUE_QUIT;
}

static enum dialogue_action imap_starttls(struct dialogue_server *ds, const char *args,
                                          struct buf *out)
{
    if (args)
        return imap_error(ds, out, "BAD STARTTLS takes no arguments");
    dialogue_printf(out, "%s OK Begin TLS negotiation now\r\n", ds->tag);
    return DIALOGUE_STARTTLS;
}

static enum dialogue_action imap_privacy_required(struct dialogue_server *ds, const char *args,
                                                  struct buf *out)
{
    (void)args;
    return imap_error(ds, out, "NO [PRIVACYREQUIRED] Must issue a STARTTLS command first");
}

struct imap_command {
    const char *verb;
    enum dialogue_action (*proceed)(struct dialogue_server *ds, const char *args, struct buf *out);
};

/* Everything a client may do before TLS; LOGIN and AUTHENTICATE are named
 * only to be refused with the RFC 9051 response code. */
static const struct imap_command imap_commands[] = {
    {"CAPABILITY", imap_capability},  {"NOOP", imap_noop},
    {"LOGOUT", imap_logout},          {"STARTTLS", imap_starttls},
    {"LOGIN", imap_privacy_required}, {"AUTHENTICATE", imap_privacy_required},
};

static enum dialogue_action imap_on_line(struct dialogue_server *ds, const char *line, size_t len,
                                         struct buf *out)
{
    snprintf(ds->tag, sizeof ds->tag, "*");
    /* A literal's bytes would follow this line and be read as commands:
     * never accept one before TLS, whatever the command. */
    if (dialogue_ends_with_literal(line, len)) {
        dialogue_printf(out, "* BYE %s Literals are not allowed before STARTTLS\r\n", ds->hostname);
        return DIALOGUE_CLOSE;
    }
    size_t tag_len = 0;
    while (tag_len < len && is_tag_char((unsigned char)line[tag_len]))
        tag_len++;
    if (tag_len == 0 || tag_len > IMAP_TAG_MAX || tag_len >= len || line[tag_len] != ' ')
        return imap_error(ds, out, "BAD Invalid tag or missing command");
    memcpy(ds->tag, line, tag_len);
    ds->tag[tag_len] = '\0';

    const char *command = line + tag_len + 1;
    size_t command_len = len - tag_len - 1;
    for (size_t i = 0; i < sizeof imap_commands / sizeof imap_commands[0]; i++) {
        const struct imap_command *c = &imap_commands[i];
        if (dialogue_verb_is(command, command_len, c->verb))
            return c->proceed(ds, dialogue_argument(command, command_len, strlen(c->verb)), out);
    }
    return imap_error(ds, out, "BAD Command not allowed before STARTTLS");
}

/* The rest of an over-long line is never seen, so a literal it may announce
 * cannot be recognised: close rather than risk reading its bytes as commands. */
static enum dialogue_action imap_on_long_line(struct dialogue_server *ds, struct buf *out)
{
    dialogue_printf(out, "* BYE %s Line too long, closing connection\r\n", ds->hostname);
    return DIALOGUE_CLOSE;
}

static void imap_timeout_reply(struct dialogue_server *ds, struct buf *out)
{
    dialogue_printf(out, "* BYE %s Autologout; idle for too long\r\n", ds->hostname);
}

static void imap_unavailable_reply(const char *hostname, struct buf *out)
{
    dialogue_printf(out, "* BYE [UNAVAILABLE] %s Service temporarily unavailable\r\n", hostname);
}

static void imap_busy_reply(const char *hostname, struct buf *out)
{
    dialogue_printf(out, "* BYE [UNAVAILABLE] %s Too many connections from your address\r\n",
                    hostname);
}

static void imap_fresh_greeting(const char *hostname, struct buf *out)
{
    /* No CAPABILITY code: the pre-TLS capabilities of the backend are stale. */
    dialogue_printf(out, "* OK %s sallyport ready\r\n", hostname);
}

/* ---- client side ---------------------------------------------------------- */

enum imap_backend_state {
    IMAP_B_GREETING,   /* waiting for "* OK" */
    IMAP_B_CAPABILITY, /* "S0 CAPABILITY" sent, reading its answer */
    IMAP_B_STARTTLS,   /* "S1 STARTTLS" sent, waiting for "S1 OK" */
    IMAP_B_ID,         /* identify: "S2 ID (...)" sent, waiting for "S2 OK" */
    IMAP_B_DONE,       /* nothing more is expected */
};

static enum backend_step imap_fail(struct dialogue_backend *db, const char *why, const char *line,
                                   size_t len)
{
    db->state = IMAP_B_DONE;
    return dialogue_backend_fail(db, why, line, len);
}

/* True if `text` holds the capability STARTTLS as a whole word. */
static bool has_starttls(const char *text, size_t len)
{
    for (size_t i = 0; i + 8 <= len; i++) {
        if (strncasecmp(text + i, "STARTTLS", 8) != 0)
            continue;
        bool starts = i == 0 || text[i - 1] == ' ' || text[i - 1] == '[';
        bool ends = i + 8 == len || text[i + 8] == ' ' || text[i + 8] == ']';
        if (starts && ends)
            return true;
    }
    return false;
}

/* True if line[0..len) starts with `prefix` in any case. */
static bool starts_with(const char *line, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && strncasecmp(line, prefix, n) == 0;
}

/* True if line[0..len) is the response `word` ("S1 OK", "* BYE"), alone or
 * followed by a space: "S1 OKAY" is not "S1 OK". */
static bool is_response(const char *line, size_t len, const char *word)
{
    size_t n = strlen(word);
    return starts_with(line, len, word) && (len == n || line[n] == ' ');
}

static void imap_backend_start(struct dialogue_backend *db)
{
    db->state = IMAP_B_GREETING;
}

/* RFC 2971 ID with the fields Dovecot takes from a trusted peer
 * (login_trusted_networks) as the client's address; others ignore them. */
static void imap_identify_start(struct dialogue_backend *db, struct buf *out)
{
    const struct client_identity *who = &db->who;
    if (who->local_addr[0])
        dialogue_printf(out,
                        "S2 ID (\"x-originating-ip\" \"%s\" \"x-originating-port\" \"%u\" "
                        "\"x-connected-ip\" \"%s\" \"x-connected-port\" \"%u\")\r\n",
                        who->addr, who->port, who->local_addr, who->local_port);
    else
        dialogue_printf(out,
                        "S2 ID (\"x-originating-ip\" \"%s\" \"x-originating-port\" \"%u\")\r\n",
                        who->addr, who->port);
    db->state = IMAP_B_ID;
}

static enum backend_step imap_on_greeting(struct dialogue_backend *db, const char *line, size_t len,
                                          struct buf *out)
{
    if (is_response(line, len, "* PREAUTH"))
        return imap_fail(db,
                         "backend greeted with PREAUTH, refusing a pre-authenticated "
                         "session",
                         line, len);
    if (is_response(line, len, "* BYE"))
        return imap_fail(db, "backend refused the session", line, len);
    if (!is_response(line, len, "* OK"))
        return imap_fail(db, "malformed greeting from backend", line, len);
    db->greeted = true;
    if (db->mode == BACKEND_GREETING_ONLY && db->identify) {
        imap_identify_start(db, out);
        return BACKEND_NEED_MORE;
    }
    if (db->mode == BACKEND_GREETING_ONLY) {
        db->state = IMAP_B_DONE;
        return BACKEND_GREETED;
    }
    const char *code_end = memchr(line, ']', len);
    if (starts_with(line, len, "* OK [CAPABILITY ") && code_end &&
        has_starttls(line + 5, (size_t)(code_end - line) - 5)) {
        db->offers_starttls = true;
        buf_append_str(out, "S1 STARTTLS\r\n");
        db->state = IMAP_B_STARTTLS;
    } else {
        buf_append_str(out, "S0 CAPABILITY\r\n");
        db->state = IMAP_B_CAPABILITY;
    }
    return BACKEND_NEED_MORE;
}

static enum backend_step imap_on_backend_line(struct dialogue_backend *db, const char *line,
                                              size_t len, struct buf *out)
{
    if (++db->lines > IMAP_BACKEND_MAX_LINES)
        return imap_fail(db, "backend sent too many lines before TLS", line, len);
    if (dialogue_ends_with_literal(line, len))
        return imap_fail(db, "backend sent a literal before TLS", line, len);
    switch (db->state) {
    case IMAP_B_GREETING:
        return imap_on_greeting(db, line, len, out);
    case IMAP_B_CAPABILITY:
        if (starts_with(line, len, "* CAPABILITY ")) {
            db->offers_starttls |= has_starttls(line + 13, len - 13);
            return BACKEND_NEED_MORE;
        }
        if (starts_with(line, len, "* "))
            return BACKEND_NEED_MORE; /* other untagged data: read, never passed on */
        if (!is_response(line, len, "S0 OK"))
            return imap_fail(db, "backend refused CAPABILITY", line, len);
        if (!db->offers_starttls)
            return imap_fail(db, "backend does not offer STARTTLS, refusing to downgrade", line,
                             len);
        buf_append_str(out, "S1 STARTTLS\r\n");
        db->state = IMAP_B_STARTTLS;
        return BACKEND_NEED_MORE;
    case IMAP_B_STARTTLS:
        if (is_response(line, len, "* BYE"))
            return imap_fail(db, "backend closed the session", line, len);
        if (starts_with(line, len, "* "))
            return BACKEND_NEED_MORE;
        if (!is_response(line, len, "S1 OK"))
            return imap_fail(db, "backend refused STARTTLS", line, len);
        db->state = IMAP_B_DONE;
        return BACKEND_TLS_READY;
    case IMAP_B_ID:
        if (is_response(line, len, "* BYE"))
            return imap_fail(db, "backend closed the session", line, len);
        if (starts_with(line, len, "* "))
            return BACKEND_NEED_MORE; /* "* ID ...": the backend's own, not passed on */
        if (!is_response(line, len, "S2 OK"))
            return imap_fail(db, "backend refused ID", line, len);
        db->state = IMAP_B_DONE;
        return BACKEND_GREETED;
    default:
        return imap_fail(db, "unexpected line from backend", line, len);
    }
}

const struct dialogue dialogue_imap = {
    .proto = PROTO_IMAP,
    .name = "imap",
    .alpn = "imap",
    .greets_after_starttls = false,
    .greet = imap_greet,
    .on_line = imap_on_line,
    .on_long_line = imap_on_long_line,
    .timeout_reply = imap_timeout_reply,
    .unavailable_reply = imap_unavailable_reply,
    .busy_reply = imap_busy_reply,
    .fresh_greeting = imap_fresh_greeting,
    .backend_start = imap_backend_start,
    .on_backend_line = imap_on_backend_line,
    .identify_start = imap_identify_start,
};
