/* libFuzzer target for the server side of the plaintext dialogues
 * (src/dialogue/): what a client of a STARTTLS listener may say before TLS.
 *
 *   make fuzz          (or build/fuzz/fuzz_dialogue_server fuzz/corpus/dialogue_server)
 *
 * Input: the first byte picks the protocol (byte % PROTO_MAIL_COUNT: smtp, imap,
 * pop3, sieve); the rest is what the client sends, split into lines at '\n'
 * the way session.c does (a trailing '\r' is stripped; a line of more than
 * DIALOGUE_LINE_MAX bytes with its '\n' goes to on_long_line). Each line is
 * handed over in an exact-size heap copy, not NUL-terminated, so that ASan
 * catches any read past `len`. The dialogue stops at CLOSE or STARTTLS, as
 * the session does.
 *
 * Besides memory errors, it aborts when a dialogue breaks its contract:
 *  - every call queues a reply, and every reply is whole CRLF-terminated
 *    lines of printable ASCII (no bare CR or LF: nothing a client sends can
 *    split or inject a reply line);
 *  - errors grow by at most one per line and never pass max_errors, and
 *    reaching max_errors closes the connection;
 *  - STARTTLS queues the go-ahead line alone, and CLOSE its final reply
 *    (the harness then stops, as the session does, so nothing is queued
 *    after either);
 *  - STARTTLS is the answer to the protocol's STARTTLS command alone (any
 *    case, trailing spaces only; IMAP: after a tag), never to anything else;
 *  - an IMAP or ManageSieve line that announces a literal ("{N}", "{N+}",
 *    "~{N}" at its end) closes the connection: its bytes would be read as
 *    commands;
 *  - the IMAP tag the state keeps is NUL-terminated within its array. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "dialogue/dialogue.h"

#define HOSTNAME   "gw.test"
#define MAX_ERRORS 5

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Aborts, naming the broken invariant, when `ok` is false. */
#define check(ok) ((ok) ? (void)0 : broken(__LINE__, #ok))

static _Noreturn void broken(int line, const char *what)
{
    fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, line, what);
    abort();
}

/* The bytes out->data[from..out->len) are one or more whole reply lines:
 * printable ASCII, each ending in CRLF, no CR or LF anywhere else. */
static void check_replies(const struct buf *out, size_t from)
{
    check(out->len > from);
    check(out->len >= from + 2);
    check(out->data[out->len - 2] == '\r' && out->data[out->len - 1] == '\n');
    size_t line_start = from;
    for (size_t i = from; i < out->len; i++) {
        uint8_t c = out->data[i];
        if (c == '\r') {
            check(i + 1 < out->len && out->data[i + 1] == '\n');
            check(i > line_start); /* no empty reply line */
            i++;
            line_start = i + 1;
        } else {
            check(c >= 0x20 && c < 0x7f);
        }
    }
}

/* Keeps room for the next reply: the session lets the client read its
 * replies before it reads more lines. Draining only when the buffer runs
 * low also exercises replies appended behind earlier ones. */
static void drain_if_low(struct buf *out)
{
    if (buf_space(out) < 4 * DIALOGUE_LINE_MAX)
        buf_consume(out, out->len);
}

/* True if line[0..len) is `verb` in any case followed only by spaces,
 * after an IMAP tag (one or more non-space bytes and a space) if `tagged`. */
static bool is_bare_command(const char *line, size_t len, const char *verb, bool tagged)
{
    if (tagged) {
        const char *sp = memchr(line, ' ', len);
        if (!sp || sp == line)
            return false;
        len -= (size_t)(sp + 1 - line);
        line = sp + 1;
    }
    size_t n = strlen(verb);
    if (len < n || strncasecmp(line, verb, n) != 0)
        return false;
    for (size_t i = n; i < len; i++)
        if (line[i] != ' ')
            return false;
    return true;
}

static bool is_starttls(enum proto proto, const char *line, size_t len)
{
    switch (proto) {
    case PROTO_SMTP:
        return is_bare_command(line, len, "STARTTLS", false);
    case PROTO_IMAP:
        return is_bare_command(line, len, "STARTTLS", true);
    case PROTO_POP3:
        return is_bare_command(line, len, "STLS", false);
    case PROTO_SIEVE:
        return is_bare_command(line, len, "STARTTLS", false);
    case PROTO_HTTPS: /* no dialogue: never picked */
    case PROTO_COUNT:
        break;
    }
    return false;
}

/* RFC 9051 4.3, RFC 7888, RFC 5804 4: the line ends with "{digits}",
 * "{digits+}" or "~{digits}". */
static bool announces_literal(const char *line, size_t len)
{
    if (len == 0 || line[len - 1] != '}')
        return false;
    size_t i = len - 1;
    if (i > 0 && line[i - 1] == '+')
        i--;
    size_t digits = 0;
    while (i > 0 && line[i - 1] >= '0' && line[i - 1] <= '9')
        i--, digits++;
    return digits > 0 && i > 0 && line[i - 1] == '{';
}

static void check_state(const struct dialogue_server *ds, unsigned errors_before,
                        enum dialogue_action action)
{
    check(action == DIALOGUE_CONTINUE || action == DIALOGUE_STARTTLS || action == DIALOGUE_CLOSE ||
          action == DIALOGUE_QUIT);
    check(ds->errors >= errors_before && ds->errors <= errors_before + 1);
    check(ds->errors <= ds->max_errors);
    if (ds->errors == ds->max_errors)
        check(action == DIALOGUE_CLOSE);
    check(ds->max_errors == MAX_ERRORS);
    check(memchr(ds->tag, '\0', sizeof ds->tag) != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct buf out; /* 16 KiB: keep it off the stack */
    struct dialogue_server ds;

    if (size == 0)
        return 0;
    const struct dialogue *d = dialogue_for((enum proto)(data[0] % PROTO_MAIL_COUNT));
    check(d != NULL && d->greet && d->on_line && d->on_long_line && d->timeout_reply &&
          d->unavailable_reply && d->fresh_greeting);
    check(d->proto == (enum proto)(data[0] % PROTO_MAIL_COUNT));
    data++, size--;

    out.len = 0;
    dialogue_server_init(&ds, HOSTNAME, MAX_ERRORS);
    d->greet(&ds, &out);
    check_replies(&out, 0);
    check(ds.errors == 0);

    enum dialogue_action action = DIALOGUE_CONTINUE;
    size_t pos = 0;
    while (pos < size && action == DIALOGUE_CONTINUE) {
        const uint8_t *nl = memchr(data + pos, '\n', size - pos);
        size_t raw = nl ? (size_t)(nl - (data + pos)) : size - pos; /* without the '\n' */
        size_t line_bytes = raw + 1;                                /* as if '\n'-terminated */
        unsigned errors_before = ds.errors;

        drain_if_low(&out);
        size_t before = out.len;
        if (line_bytes > DIALOGUE_LINE_MAX) {
            action = d->on_long_line(&ds, &out);
        } else {
            size_t n = raw;
            if (n > 0 && data[pos + n - 1] == '\r')
                n--;
            /* Exact size, never NUL-terminated (ASan's malloc(0) is a
             * valid zero-size block, so an empty line is checked too). */
            char *line = malloc(n);
            check(line != NULL);
            memcpy(line, data + pos, n);
            action = d->on_line(&ds, line, n, &out);
            if (action == DIALOGUE_STARTTLS)
                check(is_starttls(d->proto, line, n));
            if ((d->proto == PROTO_IMAP || d->proto == PROTO_SIEVE) && announces_literal(line, n))
                check(action == DIALOGUE_CLOSE);
            free(line);
        }
        check_replies(&out, before);
        if (action == DIALOGUE_STARTTLS) /* the go-ahead alone, nothing behind it */
            check(memchr(out.data + before, '\n', out.len - before) == out.data + out.len - 1);
        check_state(&ds, errors_before, action);
        pos += line_bytes;
    }

    /* The session's own replies at the end of a dialogue still open. */
    if (action == DIALOGUE_CONTINUE) {
        drain_if_low(&out);
        size_t before = out.len;
        d->timeout_reply(&ds, &out);
        check_replies(&out, before);
        before = out.len;
        d->unavailable_reply(HOSTNAME, &out);
        check_replies(&out, before);
        before = out.len;
        d->fresh_greeting(HOSTNAME, &out);
        check_replies(&out, before);
    }
    return 0;
}
