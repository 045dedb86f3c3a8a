/* libFuzzer target for the client side of the plaintext dialogues
 * (src/dialogue/): what sallyport reads from a backend before TLS.
 *
 *   make fuzz          (or build/fuzz/fuzz_dialogue_backend fuzz/corpus/dialogue_backend)
 *
 * Input: the first byte picks the protocol (byte % PROTO_COUNT: smtp, imap,
 * pop3, sieve) and the mode (bit 2: 0 = BACKEND_GREETING_ONLY, 1 =
 * BACKEND_STARTTLS); the rest is what the backend sends, split into lines at
 * '\n' the way session.c does (a trailing '\r' is stripped; a line of more
 * than DIALOGUE_LINE_MAX bytes with its '\n' ends the prelude, as the session
 * fails it without calling the dialogue). Each line is handed over in an
 * exact-size heap copy, not NUL-terminated, so that ASan catches any read
 * past `len`.
 *
 * Besides memory errors, it aborts when a dialogue breaks its contract:
 *  - after FAILED, TLS_READY or GREETED the harness makes no further call,
 *    and a backend cannot keep the dialogue going forever: it ends within
 *    MAX_CALLS lines;
 *  - FAILED leaves a non-empty, NUL-terminated, printable reason;
 *  - GREETED only in BACKEND_GREETING_ONLY mode, TLS_READY only in
 *    BACKEND_STARTTLS mode, after the backend advertised STARTTLS and after
 *    the dialogue itself asked for it (never a downgrade, never a go-ahead
 *    nobody asked for);
 *  - every queued command is one known command of the protocol ending in
 *    "\r\n" (nothing the backend sent is echoed), and GREETING_ONLY queues
 *    nothing. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "dialogue/dialogue.h"

#define HOSTNAME "gw.test"
/* Every protocol bounds the lines of one reply at 64, and SMTP has three
 * replies before TLS; anything beyond this is a backend stalling us. */
#define MAX_CALLS (3 * 64 + 3)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Aborts, naming the broken invariant, when `ok` is false. */
#define check(ok) ((ok) ? (void)0 : broken(__LINE__, #ok))

static _Noreturn void broken(int line, const char *what)
{
    fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, line, what);
    abort();
}

/* The commands each protocol may send before TLS; the first of each pair is
 * the one that asks for TLS. */
static const char *const commands[PROTO_COUNT][3] = {
    [PROTO_SMTP] = {"STARTTLS\r\n", "EHLO " HOSTNAME "\r\n", NULL},
    [PROTO_IMAP] = {"S1 STARTTLS\r\n", "S0 CAPABILITY\r\n", NULL},
    [PROTO_POP3] = {"STLS\r\n", "CAPA\r\n", NULL},
    [PROTO_SIEVE] = {"STARTTLS\r\n", NULL, NULL},
};

/* Checks what one call queued (out->data[from..len)); returns true if it
 * was the request for TLS. */
static bool check_queued(enum proto proto, const struct buf *out, size_t from)
{
    size_t n = out->len - from;
    if (n == 0)
        return false;
    check(n >= 2 && out->data[out->len - 2] == '\r' && out->data[out->len - 1] == '\n');
    for (size_t i = 0; commands[proto][i]; i++) {
        if (n == strlen(commands[proto][i]) && memcmp(out->data + from, commands[proto][i], n) == 0)
            return i == 0;
    }
    broken(__LINE__, "a queued command is not one of the protocol's commands");
}

static void check_reason(const struct dialogue_backend *db)
{
    const char *end = memchr(db->reason, '\0', sizeof db->reason);
    check(end != NULL && end > db->reason);
    for (const char *p = db->reason; p < end; p++)
        check(*p >= 0x20 && *p < 0x7f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct buf out; /* 16 KiB: keep it off the stack */
    struct dialogue_backend db;

    if (size == 0)
        return 0;
    enum proto proto = (enum proto)(data[0] % PROTO_COUNT);
    enum backend_mode mode = data[0] & 4 ? BACKEND_STARTTLS : BACKEND_GREETING_ONLY;
    const struct dialogue *d = dialogue_for(proto);
    check(d != NULL && d->on_backend_line);
    data++, size--;

    out.len = 0;
    dialogue_backend_init(&db, d, mode, HOSTNAME);
    check(db.mode == mode && db.reason[0] == '\0' && !db.offers_starttls && out.len == 0);

    enum backend_step step = BACKEND_NEED_MORE;
    bool asked_for_tls = false;
    size_t pos = 0, calls = 0;
    while (pos < size && step == BACKEND_NEED_MORE) {
        const uint8_t *nl = memchr(data + pos, '\n', size - pos);
        size_t raw = nl ? (size_t)(nl - (data + pos)) : size - pos; /* without the '\n' */
        if (raw + 1 > DIALOGUE_LINE_MAX)
            break; /* the session fails the backend: "line too long" */
        size_t n = raw;
        if (n > 0 && data[pos + n - 1] == '\r')
            n--;
        /* Exact size, never NUL-terminated (ASan's malloc(0) is a valid
         * zero-size block, so an empty line is checked too). */
        char *line = malloc(n);
        check(line != NULL);
        memcpy(line, data + pos, n);

        /* Only the STARTTLS path sends commands; the session writes them
         * out between lines, so drain as it would. */
        if (buf_space(&out) < 1024)
            buf_consume(&out, out.len);
        size_t before = out.len;
        step = d->on_backend_line(&db, line, n, &out);
        free(line);
        calls++;

        check(step == BACKEND_NEED_MORE || step == BACKEND_GREETED || step == BACKEND_TLS_READY ||
              step == BACKEND_FAILED);
        check(mode == BACKEND_STARTTLS || out.len == before);
        if (check_queued(proto, &out, before)) {
            check(!asked_for_tls); /* asked once */
            asked_for_tls = true;
            check(db.offers_starttls);
        }
        switch (step) {
        case BACKEND_NEED_MORE:
            check(db.reason[0] == '\0');
            break;
        case BACKEND_GREETED:
            check(mode == BACKEND_GREETING_ONLY && db.reason[0] == '\0');
            break;
        case BACKEND_TLS_READY:
            check(mode == BACKEND_STARTTLS && db.offers_starttls && asked_for_tls);
            check(out.len == before && db.reason[0] == '\0');
            break;
        case BACKEND_FAILED:
            check_reason(&db);
            break;
        }
        check(calls <= MAX_CALLS);
        pos += raw + 1;
    }
    check(db.mode == mode);
    return 0;
}
