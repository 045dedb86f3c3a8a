#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "dialogue/dialogue.h"

extern const struct dialogue dialogue_smtp;
extern const struct dialogue dialogue_imap;
extern const struct dialogue dialogue_pop3;
extern const struct dialogue dialogue_sieve;
extern const struct dialogue dialogue_https;

/* One line per protocol. */
static const struct dialogue *const dialogues[PROTO_COUNT] = {
    [PROTO_SMTP] = &dialogue_smtp,   [PROTO_IMAP] = &dialogue_imap,   [PROTO_POP3] = &dialogue_pop3,
    [PROTO_SIEVE] = &dialogue_sieve, [PROTO_HTTPS] = &dialogue_https,
};

const struct dialogue *dialogue_for(enum proto proto)
{
    return dialogues[proto];
}

void dialogue_server_init(struct dialogue_server *ds, const char *hostname, unsigned max_errors)
{
    memset(ds, 0, sizeof *ds);
    ds->hostname = hostname;
    ds->max_errors = max_errors;
}

void dialogue_backend_init(struct dialogue_backend *db, const struct dialogue *d,
                           enum backend_mode mode, const char *hostname)
{
    memset(db, 0, sizeof *db);
    db->mode = mode;
    db->hostname = hostname;
    db->greeted = mode == BACKEND_IDENTIFY; /* it greeted before STARTTLS */
    if (d->backend_start)
        d->backend_start(db);
}

void dialogue_backend_identify(struct dialogue_backend *db, const struct dialogue *d,
                               const struct client_identity *who, struct buf *out)
{
    db->identify = true;
    db->who = *who;
    if (db->mode == BACKEND_IDENTIFY)
        d->identify_start(db, out);
}

bool dialogue_verb_is(const char *line, size_t len, const char *verb)
{
    size_t n = strlen(verb);
    if (len < n || strncasecmp(line, verb, n) != 0)
        return false;
    return len == n || line[n] == ' ';
}

void dialogue_printf(struct buf *out, const char *fmt, ...)
{
    char text[DIALOGUE_LINE_MAX + 1];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    /* Replies are tiny and the session keeps room for them; a reply that
     * does not fit (or is over-long) is dropped rather than cut mid-line. */
    if ((size_t)n >= sizeof text)
        return;
    buf_append(out, text, (size_t)n);
}

bool dialogue_ends_with_literal(const char *line, size_t len)
{
    if (len < 3 || line[len - 1] != '}')
        return false;
    size_t i = len - 1;
    if (line[i - 1] == '+')
        i--;
    size_t digits_end = i;
    while (i > 0 && isdigit((unsigned char)line[i - 1]))
        i--;
    return i < digits_end && i > 0 && line[i - 1] == '{';
}

const char *dialogue_argument(const char *line, size_t len, size_t skip)
{
    for (size_t i = skip; i < len; i++) {
        if (line[i] != ' ')
            return line + i;
    }
    return NULL;
}

void dialogue_quote(char *out, size_t max, const char *line, size_t len)
{
    size_t n = len < max ? len : max;
    for (size_t i = 0; i < n; i++)
        out[i] = isprint((unsigned char)line[i]) ? line[i] : '?';
    out[n] = '\0';
}

enum backend_step dialogue_backend_fail(struct dialogue_backend *db, const char *why,
                                        const char *line, size_t len)
{
    char safe[64];
    dialogue_quote(safe, sizeof safe - 1, line, len);
    snprintf(db->reason, sizeof db->reason, "%s: \"%s\"", why, safe);
    return BACKEND_FAILED;
}
