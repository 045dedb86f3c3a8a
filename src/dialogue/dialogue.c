#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "dialogue/dialogue.h"

extern const struct dialogue dialogue_smtp;

/* One line per protocol. */
static const struct dialogue *const dialogues[PROTO_COUNT] = {
    [PROTO_SMTP] = &dialogue_smtp,
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
    if (d->backend_start)
        d->backend_start(db);
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
