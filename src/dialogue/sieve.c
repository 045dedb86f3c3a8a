/* ManageSieve (RFC 5804): STARTTLS only. The cleartext dialogue of a sieve
 * listener, and the client side towards a ManageSieve backend. After TLS the
 * server re-sends its capabilities (RFC 5804 2.2), so the backend's greeting
 * is always passed on to the client. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "dialogue/dialogue.h"

/* Lines of a backend's capability greeting tolerated before its "OK". */
#define SIEVE_BACKEND_MAX_LINES 64

/* ---- server side ---------------------------------------------------------- */

/* Capabilities before TLS: no SASL mechanism is offered in cleartext. */
static void sieve_capabilities(struct buf *out)
{
    buf_append_str(out, "\"IMPLEMENTATION\" \"sallyport\"\r\n"
                        "\"SASL\" \"\"\r\n"
                        "\"SIEVE\" \"\"\r\n"
                        "\"STARTTLS\"\r\n"
                        "\"VERSION\" \"1.0\"\r\n");
}

static void sieve_greet(struct dialogue_server *ds, struct buf *out)
{
    sieve_capabilities(out);
    dialogue_printf(out, "OK \"%s sallyport ready\"\r\n", ds->hostname);
}

static enum dialogue_action sieve_error(struct dialogue_server *ds, struct buf *out,
                                        const char *reply)
{
    if (++ds->errors >= ds->max_errors) {
        buf_append_str(out, "BYE \"Too many errors, closing connection\"\r\n");
        return DIALOGUE_CLOSE;
    }
    buf_append_str(out, reply);
    return DIALOGUE_CONTINUE;
}

static enum dialogue_action sieve_capability(struct dialogue_server *ds, const char *line,
                                             size_t len, struct buf *out)
{
    if (dialogue_argument(line, len, 10))
        return sieve_error(ds, out, "NO \"CAPABILITY takes no arguments\"\r\n");
    sieve_capabilities(out);
    buf_append_str(out, "OK \"Capability completed\"\r\n");
    return DIALOGUE_CONTINUE;
}

static enum dialogue_action sieve_noop(struct dialogue_server *ds, const char *line, size_t len,
                                       struct buf *out)
{
    (void)ds, (void)line, (void)len;
    /* NOOP may carry a tag string to echo (RFC 5804 2.15); cleartext needs none. */
    buf_append_str(out, "OK \"NOOP completed\"\r\n");
    return DIALOGUE_CONTINUE;
}

static enum dialogue_action sieve_logout(struct dialogue_server *ds, const char *line, size_t len,
                                         struct buf *out)
{
    (void)ds, (void)line, (void)len;
    buf_append_str(out, "OK \"Logout completed\"\r\n");
    return DIALOGUE_QUIT;
}

static enum dialogue_action sieve_starttls(struct dialogue_server *ds, const char *line, size_t len,
                                           struct buf *out)
{
    if (dialogue_argument(line, len, 8))
        return sieve_error(ds, out, "NO \"STARTTLS takes no arguments\"\r\n");
    buf_append_str(out, "OK \"Begin TLS negotiation now\"\r\n");
    return DIALOGUE_STARTTLS;
}

static enum dialogue_action sieve_authenticate(struct dialogue_server *ds, const char *line,
                                               size_t len, struct buf *out)
{
    (void)line, (void)len;
    return sieve_error(ds, out, "NO (ENCRYPT-NEEDED) \"Must issue a STARTTLS command first\"\r\n");
}

struct sieve_command {
    const char *verb;
    enum dialogue_action (*proceed)(struct dialogue_server *ds, const char *line, size_t len,
                                    struct buf *out);
};

static const struct sieve_command sieve_commands[] = {
    {"CAPABILITY", sieve_capability},
    {"NOOP", sieve_noop},
    {"LOGOUT", sieve_logout},
    {"STARTTLS", sieve_starttls},
    {"AUTHENTICATE", sieve_authenticate},
};

static enum dialogue_action sieve_on_line(struct dialogue_server *ds, const char *line, size_t len,
                                          struct buf *out)
{
    /* A literal's bytes would follow and be read as commands: never. */
    if (dialogue_ends_with_literal(line, len)) {
        buf_append_str(out, "BYE \"Literals are not allowed before STARTTLS\"\r\n");
        return DIALOGUE_CLOSE;
    }
    for (size_t i = 0; i < sizeof sieve_commands / sizeof sieve_commands[0]; i++) {
        if (dialogue_verb_is(line, len, sieve_commands[i].verb))
            return sieve_commands[i].proceed(ds, line, len, out);
    }
    return sieve_error(ds, out, "NO \"Must issue a STARTTLS command first\"\r\n");
}

/* The rest of an over-long line is never seen, so a literal it may announce
 * cannot be recognised: close rather than risk reading its bytes as commands. */
static enum dialogue_action sieve_on_long_line(struct dialogue_server *ds, struct buf *out)
{
    (void)ds;
    buf_append_str(out, "BYE \"Line too long, closing connection\"\r\n");
    return DIALOGUE_CLOSE;
}

static void sieve_timeout_reply(struct dialogue_server *ds, struct buf *out)
{
    (void)ds;
    buf_append_str(out, "BYE \"Timeout, closing connection\"\r\n");
}

static void sieve_unavailable_reply(const char *hostname, struct buf *out)
{
    dialogue_printf(out, "BYE (TRYLATER) \"%s Service temporarily unavailable\"\r\n", hostname);
}

static void sieve_busy_reply(const char *hostname, struct buf *out)
{
    dialogue_printf(out, "BYE (TRYLATER) \"%s Too many connections from your address\"\r\n",
                    hostname);
}

static void sieve_fresh_greeting(const char *hostname, struct buf *out)
{
    sieve_capabilities(out);
    dialogue_printf(out, "OK \"%s sallyport ready\"\r\n", hostname);
}

/* ---- client side ---------------------------------------------------------- */

enum sieve_backend_state {
    SIEVE_B_GREETING, /* reading capability lines until "OK" */
    SIEVE_B_STARTTLS, /* STARTTLS sent, waiting for "OK" */
    SIEVE_B_DONE,     /* nothing more is expected */
};

static enum backend_step sieve_fail(struct dialogue_backend *db, const char *why, const char *line,
                                    size_t len)
{
    db->state = SIEVE_B_DONE;
    return dialogue_backend_fail(db, why, line, len);
}

/* True if line[0..len) is the response `word` ("OK", "NO", "BYE"), alone or
 * followed by a space. */
static bool is_response(const char *line, size_t len, const char *word)
{
    size_t n = strlen(word);
    return len >= n && strncasecmp(line, word, n) == 0 && (len == n || line[n] == ' ');
}

static void sieve_backend_start(struct dialogue_backend *db)
{
    db->state = SIEVE_B_GREETING;
}

static enum backend_step sieve_on_backend_line(struct dialogue_backend *db, const char *line,
                                               size_t len, struct buf *out)
{
    if (++db->lines > SIEVE_BACKEND_MAX_LINES)
        return sieve_fail(db, "backend sent too many lines before TLS", line, len);
    if (dialogue_ends_with_literal(line, len))
        return sieve_fail(db, "backend sent a literal before TLS", line, len);
    switch (db->state) {
    case SIEVE_B_GREETING:
        if (is_response(line, len, "NO") || is_response(line, len, "BYE"))
            return sieve_fail(db, "backend refused the session", line, len);
        if (!is_response(line, len, "OK")) {
            if (len == 0 || line[0] != '"')
                return sieve_fail(db, "malformed capability from backend", line, len);
            if (len >= 10 && strncasecmp(line, "\"STARTTLS\"", 10) == 0 &&
                (len == 10 || line[10] == ' '))
                db->offers_starttls = true;
            return BACKEND_NEED_MORE;
        }
        db->greeted = true;
        if (db->mode == BACKEND_GREETING_ONLY) {
            db->state = SIEVE_B_DONE;
            return BACKEND_GREETED;
        }
        if (!db->offers_starttls)
            return sieve_fail(db, "backend does not offer STARTTLS, refusing to downgrade", line,
                              len);
        buf_append_str(out, "STARTTLS\r\n");
        db->state = SIEVE_B_STARTTLS;
        return BACKEND_NEED_MORE;
    case SIEVE_B_STARTTLS:
        if (!is_response(line, len, "OK"))
            return sieve_fail(db, "backend refused STARTTLS", line, len);
        db->state = SIEVE_B_DONE;
        return BACKEND_TLS_READY;
    default:
        return sieve_fail(db, "unexpected line from backend", line, len);
    }
}

const struct dialogue dialogue_sieve = {
    .proto = PROTO_SIEVE,
    .name = "sieve",
    .alpn = "managesieve",
    .greets_after_starttls = true,
    .greet = sieve_greet,
    .on_line = sieve_on_line,
    .on_long_line = sieve_on_long_line,
    .timeout_reply = sieve_timeout_reply,
    .unavailable_reply = sieve_unavailable_reply,
    .busy_reply = sieve_busy_reply,
    .fresh_greeting = sieve_fresh_greeting,
    .backend_start = sieve_backend_start,
    .on_backend_line = sieve_on_backend_line,
};
