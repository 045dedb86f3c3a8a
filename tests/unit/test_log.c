/* Logging: the queue drops what exceeds its bound and counts it
 * (log_queue.c); lines render as text, JSON (escaped, event lines split
 * into fields) and RFC 3164 syslog (log_line.c); and log_msg() never
 * blocks on a reader that stalls (log.c). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"
#include "log_line.h"
#include "log_queue.h"

/* 2026-12-03T04:25:00.123Z */
static const struct timespec WHEN = {.tv_sec = 1796271900, .tv_nsec = 123456789};

static struct log_record record(enum log_level level, const char *text)
{
    struct log_record r = {.time = WHEN, .level = level, .len = strlen(text)};
    assert_true(r.len <= LOG_MESSAGE_MAX);
    memcpy(r.text, text, r.len + 1);
    return r;
}

/* ---- the queue ------------------------------------------------------------ */

static void test_queue_keeps_order_across_the_wrap(void **state)
{
    (void)state;
    unsigned char storage[256];
    struct log_queue q;
    log_queue_init(&q, storage, sizeof storage);
    struct log_record out;
    char text[64];
    /* Many times round a small ring: every message comes out whole, in order. */
    for (int i = 0; i < 200; i++) {
        int n = snprintf(text, sizeof text, "message %d %.*s", i, i % 40,
                         "abcdefghijklmnopqrstuvwxyz0123456789ABCD");
        assert_true(log_queue_push(&q, &WHEN, (enum log_level)(i % 4), text, (size_t)n));
        if (i % 3 == 0)
            continue; /* sometimes two queued at once */
        while (log_queue_pop(&q, &out)) {
            assert_int_equal(out.time.tv_sec, WHEN.tv_sec);
            assert_int_equal(out.time.tv_nsec, WHEN.tv_nsec);
            assert_int_equal(strlen(out.text), out.len);
        }
    }
    assert_false(log_queue_pop(&q, &out));
    assert_int_equal(q.used, 0);
    assert_int_equal(log_queue_dropped(&q), 0);

    assert_true(log_queue_push(&q, &WHEN, LOG_LEVEL_WARN, "first", 5));
    assert_true(log_queue_push(&q, &WHEN, LOG_LEVEL_ERROR, "second", 6));
    assert_true(log_queue_pop(&q, &out));
    assert_string_equal(out.text, "first");
    assert_int_equal(out.level, LOG_LEVEL_WARN);
    assert_true(log_queue_pop(&q, &out));
    assert_string_equal(out.text, "second");
    assert_int_equal(out.level, LOG_LEVEL_ERROR);
}

static void test_queue_drops_beyond_its_bound_and_counts(void **state)
{
    (void)state;
    unsigned char storage[1024];
    struct log_queue q;
    log_queue_init(&q, storage, sizeof storage);
    char text[100];
    memset(text, 'x', sizeof text);
    size_t pushed = 0;
    for (int i = 0; i < 50; i++)
        pushed += log_queue_push(&q, &WHEN, LOG_LEVEL_INFO, text, sizeof text);
    /* Each record is its text and a small header: fewer than 1024 / 100 fit. */
    assert_true(pushed >= 8 && pushed < 10);
    assert_true(q.used <= sizeof storage);
    assert_int_equal(log_queue_dropped(&q), 50 - pushed);
    assert_int_equal(q.lines, pushed);

    /* A short line still fits where a long one did not. */
    size_t room = sizeof storage - q.used;
    assert_true(room < 100 + 16);
    if (room > 32)
        assert_true(log_queue_push(&q, &WHEN, LOG_LEVEL_INFO, "short", 5));

    /* Taking one makes room for one more; the count only grows. */
    struct log_record out;
    assert_true(log_queue_pop(&q, &out));
    assert_int_equal(out.len, sizeof text);
    assert_true(log_queue_push(&q, &WHEN, LOG_LEVEL_INFO, text, sizeof text));
    uint64_t dropped = log_queue_dropped(&q);
    assert_false(log_queue_push(&q, &WHEN, LOG_LEVEL_INFO, text, sizeof text));
    assert_int_equal(log_queue_dropped(&q), dropped + 1);
    log_queue_count_dropped(&q, 5); /* the writer's undelivered lines */
    assert_int_equal(log_queue_dropped(&q), dropped + 6);
}

static void test_queue_cuts_a_message_at_the_maximum(void **state)
{
    (void)state;
    static unsigned char storage[8192];
    static char text[LOG_MESSAGE_MAX + 100];
    memset(text, 'y', sizeof text);
    struct log_queue q;
    log_queue_init(&q, storage, sizeof storage);
    assert_true(log_queue_push(&q, &WHEN, LOG_LEVEL_INFO, text, sizeof text));
    static struct log_record out;
    assert_true(log_queue_pop(&q, &out));
    assert_int_equal(out.len, LOG_MESSAGE_MAX);
    assert_int_equal(strlen(out.text), LOG_MESSAGE_MAX);
}

/* ---- JSON escaping ---------------------------------------------------------- */

static void test_json_escape(void **state)
{
    (void)state;
    char out[128];
    bool cut;
    const char in[] = "say \"hi\" \\ back\n\t\x01\x7f\xc3\xa9 end";
    log_json_escape(out, sizeof out, in, sizeof in - 1, &cut);
    assert_false(cut);
    assert_string_equal(out,
                        "say \\\"hi\\\" \\\\ back\\u000a\\u0009\\u0001\\u007f\\u00c3\\u00a9 end");

    /* A NUL byte in the middle is escaped too, not an end. */
    log_json_escape(out, sizeof out, "a\0b", 3, &cut);
    assert_string_equal(out, "a\\u0000b");
}

static void test_json_escape_never_splits_an_escape(void **state)
{
    (void)state;
    char out[16];
    bool cut;
    /* "ab" then \u0001 (6 bytes) would need 8 + NUL: only "ab" fits in 8. */
    size_t n = log_json_escape(out, 8, "ab\x01", 3, &cut);
    assert_true(cut);
    assert_int_equal(n, 2);
    assert_string_equal(out, "ab");
    n = log_json_escape(out, 9, "ab\x01", 3, &cut);
    assert_false(cut);
    assert_string_equal(out, "ab\\u0001");
    n = log_json_escape(out, 3, "\"x", 2, &cut); /* \" fits, x does not */
    assert_true(cut);
    assert_string_equal(out, "\\\"");
    (void)n;
}

/* ---- key=value splitting ------------------------------------------------------ */

/* The field `key` of ev as a string, or NULL. */
static const char *field(const struct log_event *ev, const char *key)
{
    static char value[512];
    for (size_t i = 0; i < ev->nfields; i++) {
        const struct log_field *f = &ev->fields[i];
        if (f->key.len == strlen(key) && memcmp(f->key.p, key, f->key.len) == 0) {
            snprintf(value, sizeof value, "%.*s", (int)f->value.len, f->value.p);
            return value;
        }
    }
    return NULL;
}

static void test_event_session_line(void **state)
{
    (void)state;
    const char *line =
        "session listener=submissions client=192.0.2.7:5123 worker=0 gen=3 sni=mail.example.com "
        "route=r backend=mx1 backend_addr=10.0.0.5:465 failed=- mode=terminate tls=TLSv1.3 "
        "cipher=TLS_AES_256_GCM_SHA384 bytes_in=1200 bytes_out=3400 duration=1.250s "
        "close=\"client closed: see you\"";
    struct log_event ev;
    assert_true(log_line_event(line, strlen(line), &ev));
    assert_int_equal(ev.name.len, 7);
    assert_memory_equal(ev.name.p, "session", 7);
    assert_int_equal(ev.nfields, 16);
    assert_string_equal(field(&ev, "listener"), "submissions");
    assert_string_equal(field(&ev, "client"), "192.0.2.7:5123");
    assert_string_equal(field(&ev, "failed"), "-");
    assert_string_equal(field(&ev, "duration"), "1.250s");
    assert_string_equal(field(&ev, "close"), "client closed: see you");
}

static void test_event_mailbox_line(void **state)
{
    (void)state;
    /* NAME: becomes a field named after the event; the last value may hold spaces. */
    const char *line = "mailbox box-1: client=127.0.0.1:4000 gen=1 tls=none auth=- messages=2 "
                       "bytes_in=99 bytes_out=270 duration=0.001s close=too many errors";
    struct log_event ev;
    assert_true(log_line_event(line, strlen(line), &ev));
    assert_memory_equal(ev.name.p, "mailbox", 7);
    assert_string_equal(field(&ev, "mailbox"), "box-1");
    assert_string_equal(field(&ev, "client"), "127.0.0.1:4000");
    assert_string_equal(field(&ev, "messages"), "2");
    assert_string_equal(field(&ev, "close"), "too many errors");
}

static void test_event_quoted_values(void **state)
{
    (void)state;
    /* A quote inside a quoted value that is not followed by a space stays in it. */
    const char *line = "probe a=\"x\"y\" b=\"\" c=\"two words\"";
    struct log_event ev;
    assert_true(log_line_event(line, strlen(line), &ev));
    assert_string_equal(field(&ev, "a"), "x\"y");
    assert_string_equal(field(&ev, "b"), "");
    assert_string_equal(field(&ev, "c"), "two words");
    /* Reserved keys are not fields (they would clash with the object's own). */
    line = "weird time=1 level=2 message=3 event=4 ok=5";
    assert_true(log_line_event(line, strlen(line), &ev));
    assert_int_equal(ev.nfields, 1);
    assert_string_equal(field(&ev, "ok"), "5");
}

static void test_not_events(void **state)
{
    (void)state;
    static const char *const lines[] = {
        "sallyport ready (1 listener, 1 mailbox, 1 worker)",
        "session 127.0.0.1:4000: relay -> closed",
        "mailbox box: client=127.0.0.1:4000: ready -> mail",
        "mailbox box: client=127.0.0.1:4000 stored 17.M1P2.host from=<a@b> rcpts=1 size=3",
        "log: 12 lines dropped (the log reader was too slow)",
        "reload: reading /etc/sallyport.conf",
        "one key=value",
        "Session a=1 b=2",
        "session",
        "session ",
        "session a=1  b=2",
        "",
        /* Only keys the object has itself (left out): no field, no event
         * (found by fuzz_log_line). */
        "pro event=\"x\" time=2 event=2",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        struct log_event ev;
        if (log_line_event(lines[i], strlen(lines[i]), &ev))
            fail_msg("taken for an event: '%s'", lines[i]);
    }
}

/* ---- whole lines ------------------------------------------------------------- */

static void test_text_line_is_todays(void **state)
{
    (void)state;
    struct log_record r = record(LOG_LEVEL_WARN, "mailbox box: accept: Too many open files");
    char out[256];
    size_t n = log_line_text(out, sizeof out, &r);
    assert_string_equal(out, "2026-12-03T04:25:00.123Z sallyport[warn]: mailbox box: accept: Too "
                             "many open files\n");
    assert_int_equal(n, strlen(out));
    /* Too long for the buffer: shortened, and still one line. */
    n = log_line_text(out, 40, &r);
    assert_int_equal(n, 39);
    assert_int_equal(out[38], '\n');
}

static void test_json_line(void **state)
{
    (void)state;
    struct log_record r = record(LOG_LEVEL_INFO, "plain \"quoted\" text");
    char out[512];
    size_t n = log_line_json(out, sizeof out, &r, true);
    assert_string_equal(out, "{\"time\":\"2026-12-03T04:25:00.123Z\",\"level\":\"info\","
                             "\"message\":\"plain \\\"quoted\\\" text\"}\n");
    assert_int_equal(n, strlen(out));

    r = record(LOG_LEVEL_ERROR, "mailbox box: client=1.2.3.4:5 close=\"a \\x5c b\"");
    log_line_json(out, sizeof out, &r, false);
    assert_string_equal(out, "{\"time\":\"2026-12-03T04:25:00.123Z\",\"level\":\"error\","
                             "\"message\":\"mailbox box: client=1.2.3.4:5 close=\\\"a \\\\x5c "
                             "b\\\"\",\"event\":\"mailbox\",\"mailbox\":\"box\","
                             "\"client\":\"1.2.3.4:5\",\"close\":\"a \\\\x5c b\"}");
}

static void test_json_line_too_long_is_shortened_whole(void **state)
{
    (void)state;
    /* An event line of control bytes: escaped six times over, it fits
     * neither with its fields nor whole; what comes out is still one
     * complete object. */
    static struct log_record r;
    r = record(LOG_LEVEL_INFO, "");
    size_t len = 0;
    len += (size_t)snprintf(r.text, sizeof r.text, "session a=");
    memset(r.text + len, '\x01', 900);
    len += 900;
    len += (size_t)snprintf(r.text + len, sizeof r.text - len, " b=");
    memset(r.text + len, '\x02', 900);
    len += 900;
    r.text[len] = '\0';
    r.len = len;
    static char out[LOG_LINE_MAX];
    size_t n = log_line_json(out, sizeof out, &r, true);
    assert_true(n > 0 && n < sizeof out);
    assert_non_null(strstr(out, "\"event\":\"session\"")); /* LOG_LINE_MAX holds it all */

    n = log_line_json(out, 4096, &r, true);
    assert_true(n > 0 && n < 4096);
    assert_null(strstr(out, "\"event\"")); /* the fields went first */
    assert_memory_equal(out + n - 3, "\"}\n", 3);
    assert_memory_equal(out, "{\"time\":", 8);
    /* The message was cut between escapes, never inside one. */
    const char *msg = strstr(out, "\"message\":\"") + 11;
    size_t body = (size_t)(out + n - 3 - msg);
    assert_int_equal((body - strlen("session a=")) % 6, 0);
}

static void test_syslog_header(void **state)
{
    (void)state;
    setenv("TZ", "UTC", 1);
    tzset();
    static const struct {
        enum log_level level;
        const char *pri;
    } levels[] = {
        {LOG_LEVEL_DEBUG, "<23>"},
        {LOG_LEVEL_INFO, "<22>"},
        {LOG_LEVEL_WARN, "<20>"},
        {LOG_LEVEL_ERROR, "<19>"},
    };
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++) {
        struct log_record r = record(levels[i].level, "x");
        char out[128], want[128];
        log_line_syslog_header(out, sizeof out, &r, 4242);
        snprintf(want, sizeof want, "%sDec  3 04:25:00 sallyport[4242]: ", levels[i].pri);
        assert_string_equal(out, want);
    }
}

/* ---- the writer -------------------------------------------------------------- */

#define REPORT "lines dropped (the log reader was too slow)"

/* Reads a pipe to its end, watching for the writer's drop report. */
struct drain {
    int fd;
    bool saw_report;
};

static void *drain_main(void *arg)
{
    struct drain *d = arg;
    static char buf[65536 + sizeof REPORT];
    size_t carry = 0;
    for (;;) {
        ssize_t n = read(d->fd, buf + carry, sizeof buf - carry - 1);
        if (n <= 0)
            return NULL;
        size_t len = carry + (size_t)n;
        buf[len] = '\0';
        if (strstr(buf, REPORT))
            d->saw_report = true;
        /* Keep the tail: the report may straddle two reads. */
        carry = len < sizeof REPORT ? len : sizeof REPORT;
        memmove(buf, buf + len - carry, carry);
    }
}

static void test_a_stalled_stderr_blocks_no_caller(void **state)
{
    (void)state;
    /* stderr becomes a pipe nobody reads: the writer blocks once it is
     * full, log_msg() goes on returning, and what the queue cannot hold
     * is counted. log_stop() returns although the writer is stuck; once
     * the pipe is read, the writer says how many lines it dropped. */
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_int_equal(dup2(fds[1], STDERR_FILENO), STDERR_FILENO);
    log_set_level(LOG_LEVEL_DEBUG);
    log_configure(LOG_TO_STDERR, LOG_FORMAT_TEXT, NULL);
    assert_int_equal(log_start(), 0);
    char filler[200];
    memset(filler, 'z', sizeof filler - 1);
    filler[sizeof filler - 1] = '\0';
    /* Ten times what the queue and the pipe hold together. */
    size_t lines = 10 * (LOG_QUEUE_BYTES + 65536) / sizeof filler;
    for (size_t i = 0; i < lines; i++)
        log_info("line %zu %s", i, filler);
    uint64_t dropped = log_dropped_total();
    assert_true(dropped > lines / 2);
    assert_true(dropped < lines);
    log_stop(); /* returns, stuck writer or not */

    /* Someone reads at last: the writer catches up, reports, and finishes. */
    struct drain d = {.fd = fds[0]};
    pthread_t reader;
    assert_int_equal(pthread_create(&reader, NULL, drain_main, &d), 0);
    int tries = 0;
    while (!log_stop())
        assert_true(++tries < 60);
    assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO);
    close(saved);
    close(fds[1]); /* the last write end: the reader sees the end */
    pthread_join(reader, NULL);
    close(fds[0]);
    assert_true(d.saw_report);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_queue_keeps_order_across_the_wrap),
        cmocka_unit_test(test_queue_drops_beyond_its_bound_and_counts),
        cmocka_unit_test(test_queue_cuts_a_message_at_the_maximum),
        cmocka_unit_test(test_json_escape),
        cmocka_unit_test(test_json_escape_never_splits_an_escape),
        cmocka_unit_test(test_event_session_line),
        cmocka_unit_test(test_event_mailbox_line),
        cmocka_unit_test(test_event_quoted_values),
        cmocka_unit_test(test_not_events),
        cmocka_unit_test(test_text_line_is_todays),
        cmocka_unit_test(test_json_line),
        cmocka_unit_test(test_json_line_too_long_is_shortened_whole),
        cmocka_unit_test(test_syslog_header),
        cmocka_unit_test(test_a_stalled_stderr_blocks_no_caller),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
