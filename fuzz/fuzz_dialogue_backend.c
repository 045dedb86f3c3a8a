/* libFuzzer target for the client side of the plaintext dialogues
 * (src/dialogue/): what sallyport reads from a backend before TLS.
 *
 *   make fuzz          (or build/fuzz/fuzz_dialogue_backend fuzz/corpus/dialogue_backend)
 *
 * Input: the first byte picks the protocol (byte % PROTO_MAIL_COUNT: smtp, imap,
 * pop3, sieve), the mode (bit 2: BACKEND_STARTTLS; else bit 3:
 * BACKEND_IDENTIFY; else BACKEND_GREETING_ONLY) and, outside STARTTLS mode
 * and for a protocol that can, whether the client is named to the backend
 * (bit 4; always in IDENTIFY mode; bit 5: an IPv6 client); the rest is what the backend sends,
 * split into lines at
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
 *  - GREETED only in BACKEND_GREETING_ONLY or IDENTIFY mode, and when the
 *    client is to be named, only after the naming command was queued;
 *    TLS_READY only in BACKEND_STARTTLS mode, after the backend advertised
 *    STARTTLS and after the dialogue itself asked for it (never a
 *    downgrade, never a go-ahead nobody asked for);
 *  - every queued command is one known command of the protocol ending in
 *    "\r\n", or (naming the client) XCLIENT / "S2 ID (" with printable
 *    bytes only (nothing the backend sent is echoed), and GREETING_ONLY
 *    without naming queues nothing. */
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

/* The command that names the client, per protocol (NULL: none). */
static const char *const naming[PROTO_COUNT] = {
    [PROTO_SMTP] = "XCLIENT ADDR=",
    [PROTO_IMAP] = "S2 ID (\"x-originating-ip\" ",
    [PROTO_POP3] = "XCLIENT ADDR=",
};

enum queued { QUEUED_NOTHING, QUEUED_OTHER, QUEUED_TLS, QUEUED_NAMING };

/* Checks what one call queued (out->data[from..len)). */
static enum queued check_queued(enum proto proto, const struct buf *out, size_t from, bool identify)
{
    size_t n = out->len - from;
    if (n == 0)
        return QUEUED_NOTHING;
    check(n >= 2 && out->data[out->len - 2] == '\r' && out->data[out->len - 1] == '\n');
    for (size_t i = 0; commands[proto][i]; i++) {
        if (n == strlen(commands[proto][i]) && memcmp(out->data + from, commands[proto][i], n) == 0)
            return i == 0 ? QUEUED_TLS : QUEUED_OTHER;
    }
    const char *prefix = naming[proto];
    check(identify && prefix != NULL);
    check(n > strlen(prefix) && memcmp(out->data + from, prefix, strlen(prefix)) == 0);
    for (size_t i = from; i < out->len - 2; i++)
        check(out->data[i] >= 0x20 && out->data[i] < 0x7f);
    return QUEUED_NAMING;
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
    enum proto proto = (enum proto)(data[0] % PROTO_MAIL_COUNT);
    const struct dialogue *d = dialogue_for(proto);
    check(d != NULL && d->on_backend_line);
    enum backend_mode mode = data[0] & 4   ? BACKEND_STARTTLS
                             : data[0] & 8 ? BACKEND_IDENTIFY
                                           : BACKEND_GREETING_ONLY;
    if (mode == BACKEND_IDENTIFY && !d->identify_start)
        mode = BACKEND_GREETING_ONLY;
    bool identify = mode == BACKEND_IDENTIFY ||
                    (mode == BACKEND_GREETING_ONLY && d->identify_start && (data[0] & 16));
    bool ipv6 = data[0] & 32;
    data++, size--;

    out.len = 0;
    dialogue_backend_init(&db, d, mode, HOSTNAME);
    check(db.mode == mode && db.reason[0] == '\0' && !db.offers_starttls && out.len == 0);
    bool named = false;
    if (identify) {
        struct client_identity who = {.port = 4711, .local_port = 465, .ipv6 = ipv6};
        snprintf(who.addr, sizeof who.addr, "%s", ipv6 ? "2001:db8::7" : "198.51.100.7");
        snprintf(who.local_addr, sizeof who.local_addr, "%s", ipv6 ? "2001:db8::1" : "192.0.2.1");
        dialogue_backend_identify(&db, d, &who, &out);
        /* IDENTIFY mode starts at once (SMTP first asks EHLO for the attributes). */
        if (mode == BACKEND_IDENTIFY)
            named = check_queued(proto, &out, 0, true) == QUEUED_NAMING;
        else
            check(out.len == 0);
    }

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
        check(mode == BACKEND_STARTTLS || identify || out.len == before);
        switch (check_queued(proto, &out, before, identify)) {
        case QUEUED_TLS:
            check(mode == BACKEND_STARTTLS);
            check(!asked_for_tls); /* asked once */
            asked_for_tls = true;
            check(db.offers_starttls);
            break;
        case QUEUED_NAMING:
            check(!named); /* named once */
            named = true;
            break;
        default:
            break;
        }
        switch (step) {
        case BACKEND_NEED_MORE:
            check(db.reason[0] == '\0');
            break;
        case BACKEND_GREETED:
            check(mode != BACKEND_STARTTLS && db.reason[0] == '\0' && db.greeted);
            check(!identify || named);
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
