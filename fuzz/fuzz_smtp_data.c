/* libFuzzer target for the SMTP DATA reader (src/smtp_data.c).
 *
 *   make fuzz          (or build/fuzz/fuzz_smtp_data fuzz/corpus/smtp_data)
 *
 * Input: byte 0 picks max_size (bit 7 set: 1 MiB; else (byte & 0x7f) * 8,
 * so 0 and small limits are reached), byte 1 says how many chunk sizes
 * follow (byte % 32), each one byte (0 means 1); the rest is the client's
 * stream after "354". The stream is fed in those chunk sizes (cycling), the
 * way the mailbox does: a chunk's unconsumed rest stays in front of the next.
 *
 * Besides memory errors, it aborts when the reader breaks the contract of
 * smtp_data.h. The result, the bytes consumed and (for OK) the message are
 * compared with a second, obviously slow model of RFC 5321 4.5.2 written
 * here from the header (the data ends at the first "<CRLF>.<CRLF>", the
 * first CRLF possibly the one that ended DATA; a leading dot is deleted from
 * each line; a bare CR or LF makes the message BARE_EOL, else more than
 * max_size bytes make it TOO_BIG), and with feeding the same stream whole
 * and byte by byte. Also:
 *  - MORE consumes every byte; the sink gets only non-empty runs, never
 *    more than max_size bytes in all, never more than it was fed, and
 *    nothing after the message turned out bad or too big;
 *  - a message with a bare CR or LF is never OK (smuggling);
 *  - once the end-of-data is seen, more calls consume nothing, hand nothing
 *    to the sink and return the same result. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Aborts, naming the broken invariant, when `ok` is false. */
#define check(ok) ((ok) ? (void)0 : broken(__LINE__, #ok))

static _Noreturn void broken(int line, const char *what)
{
    fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, line, what);
    abort();
}

/* ---- the model ------------------------------------------------------------ */

struct model {
    enum smtp_data_result result;
    size_t consumed;
    uint8_t *message; /* unstuffed, valid when result is OK or MORE */
    size_t len;
    bool bare; /* a bare CR or LF in the (so far) message */
};

static void model_run(const uint8_t *in, size_t n, size_t max_size, struct model *m)
{
    /* The end-of-data: "\r\n.\r\n" at the start, less its CRLF (the one that
     * ended the DATA command), or the first "\r\n.\r\n" inside. */
    size_t end = n; /* message bytes are in[0..end) */
    bool done = false;
    if (n >= 3 && memcmp(in, ".\r\n", 3) == 0) {
        end = 0, done = true;
    } else {
        for (size_t i = 0; i + 5 <= n; i++) {
            if (memcmp(in + i, "\r\n.\r\n", 5) == 0) {
                end = i + 2, done = true;
                break;
            }
        }
    }
    m->consumed = done ? end + 3 : n;
    m->bare = false;
    for (size_t i = 0; i < end; i++) {
        if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r'))
            m->bare = true;
        /* A CR at the very end of an unfinished stream may still get its LF. */
        if (in[i] == '\r' && (i + 1 < end ? in[i + 1] != '\n' : done))
            m->bare = true;
    }
    /* Unstuff: lines start at 0 and after each CRLF. */
    m->len = 0;
    for (size_t i = 0; i < end; i++) {
        bool line_start = i == 0 || (i >= 2 && in[i - 2] == '\r' && in[i - 1] == '\n');
        if (line_start && in[i] == '.')
            continue;
        m->message[m->len++] = in[i];
    }
    if (!done)
        m->result = SMTP_DATA_MORE;
    else if (m->bare)
        m->result = SMTP_DATA_BARE_EOL;
    else if (m->len > max_size)
        m->result = SMTP_DATA_TOO_BIG;
    else
        m->result = SMTP_DATA_OK;
}

/* ---- the reader under test ------------------------------------------------ */

struct sink {
    const struct smtp_data *d;
    uint8_t *bytes;
    size_t len;
    size_t cap;
};

static void sink(void *arg, const uint8_t *bytes, size_t len)
{
    struct sink *s = arg;
    check(len > 0);
    check(!s->d->too_big && !s->d->bare_eol);
    check(s->len + len <= s->cap);
    check(s->len + len <= s->d->max_size);
    memcpy(s->bytes + s->len, bytes, len);
    s->len += len;
}

struct run {
    enum smtp_data_result result;
    size_t consumed;
    struct sink out;
};

/* Feeds in[0..n) in chunks of sizes[i % nsizes] (all of it at once when
 * nsizes is 0); returns the outcome. */
static void feed(const uint8_t *in, size_t n, size_t max_size, const uint8_t *sizes, size_t nsizes,
                 struct run *r)
{
    struct smtp_data d;
    smtp_data_init(&d, max_size);
    check(smtp_data_result(&d) == SMTP_DATA_MORE);
    r->out.d = &d;
    r->out.len = 0;
    r->result = SMTP_DATA_MORE;
    size_t pos = 0, k = 0;
    do { /* at least once: an empty chunk must work too */
        size_t chunk = n - pos;
        if (nsizes) {
            chunk = sizes[k % nsizes] ? sizes[k % nsizes] : 1;
            k++;
        }
        if (chunk > n - pos)
            chunk = n - pos;
        size_t used = SIZE_MAX;
        size_t sink_before = r->out.len;
        r->result = smtp_data_feed(&d, in + pos, chunk, &used, sink, &r->out);
        check(used <= chunk);
        check(r->result == smtp_data_result(&d));
        check(r->out.len - sink_before <= used + 1); /* +1: a CR held back from before */
        if (r->result == SMTP_DATA_MORE)
            check(used == chunk);
        pos += used;
    } while (pos < n && r->result == SMTP_DATA_MORE);
    r->consumed = pos;
    check(r->out.len <= r->consumed);
    check(r->result != SMTP_DATA_OK || !d.bare_eol);

    if (r->result != SMTP_DATA_MORE) {
        /* Done: nothing more is consumed or handed over, whatever follows. */
        size_t used = SIZE_MAX, sink_before = r->out.len;
        check(smtp_data_feed(&d, in + pos, n - pos, &used, sink, &r->out) == r->result);
        check(used == 0 && r->out.len == sink_before);
        check(smtp_data_feed(&d, (const uint8_t *)".\r\n", 3, &used, sink, &r->out) == r->result);
        check(used == 0 && r->out.len == sink_before);
    }
}

static void check_against_model(const struct run *r, const struct model *m, size_t max_size)
{
    check(r->result == m->result);
    check(r->consumed == m->consumed);
    switch (r->result) {
    case SMTP_DATA_OK:
        check(r->out.len == m->len && memcmp(r->out.bytes, m->message, m->len) == 0);
        break;
    case SMTP_DATA_MORE:
        /* What reached the sink is the message so far, less a CR that
         * waits for its LF or a ".\r" that may be the end-of-data. */
        if (!m->bare && m->len <= max_size) {
            check(r->out.len <= m->len && r->out.len + 1 >= m->len);
            check(memcmp(r->out.bytes, m->message, r->out.len) == 0);
        }
        break;
    case SMTP_DATA_TOO_BIG:
    case SMTP_DATA_BARE_EOL:
        /* The caller discards what was handed over; it is still a prefix. */
        if (r->result == SMTP_DATA_TOO_BIG)
            check(memcmp(r->out.bytes, m->message, r->out.len) == 0);
        break;
    }
}

static void check_same(const struct run *a, const struct run *b)
{
    check(a->result == b->result && a->consumed == b->consumed);
    if (a->result == SMTP_DATA_OK)
        check(a->out.len == b->out.len && memcmp(a->out.bytes, b->out.bytes, a->out.len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t max_size = data[0] & 0x80 ? (size_t)1 << 20 : (size_t)(data[0] & 0x7f) * 8;
    size_t nsizes = data[1] % 32;
    if (size < 2 + nsizes)
        return 0;
    const uint8_t *sizes = data + 2;
    const uint8_t *in = data + 2 + nsizes;
    size_t n = size - 2 - nsizes;

    /* Exact-size copy of the stream, so ASan sees reads past its end. */
    uint8_t *stream = malloc(n);
    struct model m = {.message = malloc(n)};
    struct run chunked = {.out.bytes = malloc(n + 1), .out.cap = n + 1};
    struct run whole = {.out.bytes = malloc(n + 1), .out.cap = n + 1};
    struct run bytewise = {.out.bytes = malloc(n + 1), .out.cap = n + 1};
    check(stream && m.message && chunked.out.bytes && whole.out.bytes && bytewise.out.bytes);
    memcpy(stream, in, n);

    static const uint8_t one = 1;
    model_run(stream, n, max_size, &m);
    feed(stream, n, max_size, sizes, nsizes, &chunked);
    feed(stream, n, max_size, NULL, 0, &whole);
    feed(stream, n, max_size, &one, 1, &bytewise);
    check_against_model(&chunked, &m, max_size);
    check_against_model(&whole, &m, max_size);
    check_against_model(&bytewise, &m, max_size);
    check_same(&chunked, &whole);
    check_same(&chunked, &bytewise);

    free(stream);
    free(m.message);
    free(chunked.out.bytes);
    free(whole.out.bytes);
    free(bytewise.out.bytes);
    return 0;
}
