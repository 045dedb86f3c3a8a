/* Unit tests for the mailbox's pure parts: smtp_data (the DATA reader),
 * maildir (streamed delivery), smtp_syntax (argument parsers) and userdb
 * (the users file and password checks). */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "maildir.h"
#include "smtp_data.h"
#include "smtp_syntax.h"
#include "userdb.h"

/* ---- smtp_data ------------------------------------------------------------ */

#define OUT_MAX (1u << 20)

struct collected {
    uint8_t *bytes;
    size_t len;
    size_t calls;
};

static void collect(void *arg, const uint8_t *bytes, size_t len)
{
    struct collected *c = arg;
    assert_true(len > 0);
    assert_true(c->len + len <= OUT_MAX);
    memcpy(c->bytes + c->len, bytes, len);
    c->len += len;
    c->calls++;
}

struct run {
    enum smtp_data_result result;
    size_t consumed; /* total over all chunks */
    struct collected out;
};

static void run_free(struct run *r)
{
    free(r->out.bytes);
}

/* Feeds `in` in chunks of `chunk` bytes (the last may be shorter), the way
 * the mailbox does: a chunk's unconsumed rest stays in front of the next. */
static struct run feed_chunks(const char *in, size_t len, size_t chunk, size_t max_size)
{
    struct run r = {.out = {.bytes = malloc(OUT_MAX)}};
    struct smtp_data d;
    smtp_data_init(&d, max_size);
    assert_non_null(r.out.bytes);
    r.result = SMTP_DATA_MORE;
    size_t pos = 0;
    while (pos < len && r.result == SMTP_DATA_MORE) {
        size_t n = len - pos < chunk ? len - pos : chunk;
        size_t used = 0;
        r.result = smtp_data_feed(&d, (const uint8_t *)in + pos, n, &used, collect, &r.out);
        assert_true(used <= n);
        if (r.result == SMTP_DATA_MORE)
            assert_int_equal(used, n);
        pos += used;
    }
    r.consumed = pos;
    return r;
}

/* Feeds `in` split at `split` into two chunks. */
static struct run feed_split(const char *in, size_t len, size_t split, size_t max_size)
{
    struct run r = {.out = {.bytes = malloc(OUT_MAX)}};
    struct smtp_data d;
    size_t used = 0;
    smtp_data_init(&d, max_size);
    assert_non_null(r.out.bytes);
    r.result = smtp_data_feed(&d, (const uint8_t *)in, split, &used, collect, &r.out);
    r.consumed = used;
    if (r.result == SMTP_DATA_MORE) {
        assert_int_equal(used, split);
        r.result =
            smtp_data_feed(&d, (const uint8_t *)in + split, len - split, &used, collect, &r.out);
        r.consumed += used;
    }
    return r;
}

static void assert_output(const struct run *r, const char *expected)
{
    size_t n = strlen(expected);
    assert_int_equal(r->out.len, n);
    assert_memory_equal(r->out.bytes, expected, n);
}

/* Checks one input against its expected result, output and consumed count,
 * fed whole, in every chunk size, and split in two at every position. */
static void check_all_ways(const char *in, enum smtp_data_result result, const char *expected,
                           size_t consumed)
{
    size_t len = strlen(in);
    for (size_t chunk = 1; chunk <= len; chunk++) {
        struct run r = feed_chunks(in, len, chunk, 1u << 20);
        assert_int_equal(r.result, result);
        assert_int_equal(r.consumed, consumed);
        if (result == SMTP_DATA_OK)
            assert_output(&r, expected);
        run_free(&r);
    }
    for (size_t split = 0; split <= len; split++) {
        struct run r = feed_split(in, len, split, 1u << 20);
        assert_int_equal(r.result, result);
        assert_int_equal(r.consumed, consumed);
        if (result == SMTP_DATA_OK)
            assert_output(&r, expected);
        run_free(&r);
    }
}

static void test_data_simple(void **state)
{
    (void)state;
    check_all_ways("Subject: hi\r\n\r\nHello\r\n.\r\n", SMTP_DATA_OK,
                   "Subject: hi\r\n\r\nHello\r\n", 25);
}

static void test_data_empty_message(void **state)
{
    (void)state;
    check_all_ways(".\r\n", SMTP_DATA_OK, "", 3);
    check_all_ways(".\r\nQUIT\r\n", SMTP_DATA_OK, "", 3);
}

static void test_data_empty_lines(void **state)
{
    (void)state;
    check_all_ways("\r\n\r\n.\r\n", SMTP_DATA_OK, "\r\n\r\n", 7);
}

static void test_data_dot_unstuffing(void **state)
{
    (void)state;
    check_all_ways("..\r\n.\r\n", SMTP_DATA_OK, ".\r\n", 7);
    check_all_ways("...\r\n.\r\n", SMTP_DATA_OK, "..\r\n", 8);
    check_all_ways("..leading\r\na.b\r\n.x\r\n.\r\n", SMTP_DATA_OK, ".leading\r\na.b\r\nx\r\n", 23);
    check_all_ways("line\r\n..\r\n.\r\n", SMTP_DATA_OK, "line\r\n.\r\n", 13);
    check_all_ways("a\r\n..\r\n..\r\n.\r\n", SMTP_DATA_OK, "a\r\n.\r\n.\r\n", 14);
}

static void test_data_terminator_split_everywhere(void **state)
{
    (void)state;
    const char *in = "From: a@b\r\n\r\n..one\r\ntwo.\r\n\r\n..\r\nlast\r\n.\r\nMAIL FROM:<x>\r\n";
    const char *out = "From: a@b\r\n\r\n.one\r\ntwo.\r\n\r\n.\r\nlast\r\n";
    check_all_ways(in, SMTP_DATA_OK, out, strlen(in) - strlen("MAIL FROM:<x>\r\n"));
}

static void test_data_pipelined_after_dot(void **state)
{
    (void)state;
    const char *in = "body\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n";
    check_all_ways(in, SMTP_DATA_OK, "body\r\n", 9);
    /* Nothing more is consumed once the end has been seen. */
    struct smtp_data d;
    struct collected c = {.bytes = malloc(OUT_MAX)};
    size_t used = 0;
    smtp_data_init(&d, 100);
    assert_int_equal(smtp_data_feed(&d, (const uint8_t *)in, strlen(in), &used, collect, &c),
                     SMTP_DATA_OK);
    assert_int_equal(used, 9);
    assert_int_equal(smtp_data_feed(&d, (const uint8_t *)in + 9, 5, &used, collect, &c),
                     SMTP_DATA_OK);
    assert_int_equal(used, 0);
    assert_int_equal(smtp_data_result(&d), SMTP_DATA_OK);
    free(c.bytes);
}

static void test_data_eight_bit_and_nul(void **state)
{
    (void)state;
    const char in[] = "caf\xc3\xa9 \x00\xff\x80\r\n.\r\n";
    size_t len = sizeof in - 1;
    for (size_t split = 0; split <= len; split++) {
        struct run r = feed_split(in, len, split, 1000);
        assert_int_equal(r.result, SMTP_DATA_OK);
        assert_int_equal(r.consumed, len);
        assert_int_equal(r.out.len, len - 3);
        assert_memory_equal(r.out.bytes, in, len - 3);
        run_free(&r);
    }
}

/* The smuggling variants: the "end" a lax server would see is message content
 * here, so the smuggled second transaction is never read as commands; the
 * whole message is refused at the real end-of-data. */
static void check_smuggling(const char *fake_end)
{
    char in[512];
    const char *tail = "QUIT\r\n";
    snprintf(in, sizeof in,
             "Subject: one\r\n\r\nfirst%sMAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\n"
             "smuggled\r\n.\r\n%s",
             fake_end, tail);
    check_all_ways(in, SMTP_DATA_BARE_EOL, NULL, strlen(in) - strlen(tail));
}

static void test_data_smuggling_lf_dot_lf(void **state)
{
    (void)state;
    check_smuggling("\n.\n");
}

static void test_data_smuggling_cr_dot_cr(void **state)
{
    (void)state;
    check_smuggling("\r.\r");
}

static void test_data_smuggling_lf_dot_crlf(void **state)
{
    (void)state;
    check_smuggling("\n.\r\n");
}

static void test_data_smuggling_crlf_dot_lf(void **state)
{
    (void)state;
    check_smuggling("\r\n.\n");
}

static void test_data_smuggling_crlf_dot_cr(void **state)
{
    (void)state;
    check_smuggling("\r\n.\r");
    check_smuggling("\r\n.\rX");
}

static void test_data_smuggling_cr_dot_crlf(void **state)
{
    (void)state;
    check_smuggling("\r.\r\n");
}

static void test_data_bare_lf_and_cr(void **state)
{
    (void)state;
    check_all_ways("a\nb\r\n.\r\n", SMTP_DATA_BARE_EOL, NULL, 8);
    check_all_ways("a\rb\r\n.\r\n", SMTP_DATA_BARE_EOL, NULL, 8);
    check_all_ways("\n.\r\n\r\n.\r\n", SMTP_DATA_BARE_EOL, NULL, 9); /* bare LF first */
    check_all_ways("a\r\r\n.\r\n", SMTP_DATA_BARE_EOL, NULL, 7);     /* CR CR LF */
    check_all_ways(".\n\r\n.\r\n", SMTP_DATA_BARE_EOL, NULL, 7);     /* ".\n" at the start */
    check_all_ways("end\r", SMTP_DATA_MORE, NULL, 4);                /* a CR may still pair */
}

static void test_data_bare_stops_sink(void **state)
{
    (void)state;
    /* After the bare LF, no byte reaches the sink, whatever the chunking. */
    const char *in = "ok\r\nbad\nafter the bare LF\r\n.\r\n";
    for (size_t chunk = 1; chunk <= strlen(in); chunk++) {
        struct run r = feed_chunks(in, strlen(in), chunk, 1000);
        assert_int_equal(r.result, SMTP_DATA_BARE_EOL);
        assert_true(r.out.len <= strlen("ok\r\nbad"));
        run_free(&r);
    }
}

static void test_data_size_limit(void **state)
{
    (void)state;
    const char *in = "0123456789\r\n.\r\nNOOP\r\n"; /* 12 message bytes */
    for (size_t chunk = 1; chunk <= strlen(in); chunk++) {
        struct run ok = feed_chunks(in, strlen(in), chunk, 12);
        assert_int_equal(ok.result, SMTP_DATA_OK);
        assert_output(&ok, "0123456789\r\n");
        run_free(&ok);

        struct run big = feed_chunks(in, strlen(in), chunk, 11);
        assert_int_equal(big.result, SMTP_DATA_TOO_BIG);
        assert_int_equal(big.consumed, 15); /* read on to the end-of-data */
        assert_true(big.out.len <= 11);
        run_free(&big);
    }
}

static void test_data_size_counts_unstuffed(void **state)
{
    (void)state;
    struct run r = feed_chunks("..\r\n.\r\n", 7, 7, 3); /* ".\r\n" is 3 bytes */
    assert_int_equal(r.result, SMTP_DATA_OK);
    run_free(&r);
}

static void test_data_large_message(void **state)
{
    (void)state;
    size_t lines = 20000;
    size_t len = lines * 50 + 3;
    char *in = malloc(len + 1);
    assert_non_null(in);
    for (size_t i = 0; i < lines; i++)
        snprintf(in + i * 50, 51, "%s%046zu\r\n", i % 7 ? "xx" : "..", i);
    memcpy(in + lines * 50, ".\r\n", 4);
    struct run r = feed_chunks(in, len, 16384, len);
    assert_int_equal(r.result, SMTP_DATA_OK);
    assert_int_equal(r.consumed, len);
    assert_int_equal(r.out.len, lines * 50 - (lines + 6) / 7);
    run_free(&r);
    free(in);
}

/* ---- maildir -------------------------------------------------------------- */

static char *make_temp_dir(void)
{
    char *dir = strdup("/tmp/sallyport-test-maildir-XXXXXX");
    assert_non_null(dir);
    assert_non_null(mkdtemp(dir));
    return dir;
}

/* Counts directory entries other than "." and "..". */
static int count_entries(const char *dir, const char *sub)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, sub);
    DIR *d = opendir(path);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    }
    closedir(d);
    return n;
}

static void remove_tree(const char *dir)
{
    char cmd[1100];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_maildir_create(void **state)
{
    (void)state;
    char *base = make_temp_dir();
    char dir[512], err[256];
    snprintf(dir, sizeof dir, "%s/a/b/Maildir", base);
    assert_int_equal(maildir_create(dir, err, sizeof err), 0);
    assert_int_equal(maildir_create(dir, err, sizeof err), 0); /* idempotent */
    const char *subs[] = {"tmp", "new", "cur"};
    for (size_t i = 0; i < 3; i++) {
        char path[600];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, subs[i]);
        assert_int_equal(stat(path, &st), 0);
        assert_true(S_ISDIR(st.st_mode));
    }
    /* A file in the way is an error with a reason. */
    char file[600];
    snprintf(file, sizeof file, "%s/file", base);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fclose(f);
    snprintf(dir, sizeof dir, "%s/file/Maildir", base);
    assert_int_equal(maildir_create(dir, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot create"));
    remove_tree(base);
    free(base);
}

static void test_maildir_deliver(void **state)
{
    (void)state;
    char *dir = make_temp_dir();
    char err[256], path[1024];
    assert_int_equal(maildir_create(dir, err, sizeof err), 0);

    struct maildir_delivery d;
    assert_int_equal(maildir_open(&d, dir, "mx.example", err, sizeof err), 0);
    assert_int_equal(count_entries(dir, "tmp"), 1);
    const char part1[] = "Subject: x\r\n\r\n";
    const char part2[] = "8-bit \xc3\xa9\x00 and a NUL\r\n";
    maildir_write(&d, part1, sizeof part1 - 1);
    maildir_write(&d, part2, sizeof part2 - 1);
    assert_int_equal(maildir_commit(&d, path, sizeof path, err, sizeof err), 0);
    assert_int_equal(d.fd, -1);

    assert_int_equal(count_entries(dir, "tmp"), 0);
    assert_int_equal(count_entries(dir, "new"), 1);
    assert_non_null(strstr(path, "/new/"));
    assert_string_equal(strrchr(path, '/') + 1, d.name);
    assert_non_null(strstr(d.name, ".mx.example"));

    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char got[256];
    size_t n = fread(got, 1, sizeof got, f);
    fclose(f);
    assert_int_equal(n, sizeof part1 - 1 + sizeof part2 - 1);
    assert_memory_equal(got, part1, sizeof part1 - 1);
    assert_memory_equal(got + sizeof part1 - 1, part2, sizeof part2 - 1);

    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    remove_tree(dir);
    free(dir);
}

static void test_maildir_unique_names(void **state)
{
    (void)state;
    char *dir = make_temp_dir();
    char err[256], path1[1024], path2[1024];
    struct maildir_delivery a, b;
    assert_int_equal(maildir_create(dir, err, sizeof err), 0);
    assert_int_equal(maildir_open(&a, dir, "host/with:odd", err, sizeof err), 0);
    assert_int_equal(maildir_open(&b, dir, "host/with:odd", err, sizeof err), 0);
    assert_string_not_equal(a.name, b.name);
    assert_null(strchr(a.name, '/'));
    assert_null(strchr(a.name, ':'));
    assert_non_null(strstr(a.name, "host\\057with\\072odd"));
    maildir_write(&a, "a", 1);
    maildir_write(&b, "b", 1);
    assert_int_equal(maildir_commit(&a, path1, sizeof path1, err, sizeof err), 0);
    assert_int_equal(maildir_commit(&b, path2, sizeof path2, err, sizeof err), 0);
    assert_int_equal(count_entries(dir, "new"), 2);
    remove_tree(dir);
    free(dir);
}

static void test_maildir_abort(void **state)
{
    (void)state;
    char *dir = make_temp_dir();
    char err[256];
    struct maildir_delivery d;
    maildir_init(&d);
    maildir_abort(&d); /* nothing open: no-op */
    assert_int_equal(maildir_create(dir, err, sizeof err), 0);
    assert_int_equal(maildir_open(&d, dir, "h", err, sizeof err), 0);
    maildir_write(&d, "partial", 7);
    maildir_abort(&d);
    maildir_abort(&d); /* twice is fine */
    assert_int_equal(count_entries(dir, "tmp"), 0);
    assert_int_equal(count_entries(dir, "new"), 0);
    remove_tree(dir);
    free(dir);
}

static void test_maildir_write_error(void **state)
{
    (void)state;
    char *dir = make_temp_dir();
    char err[256], path[1024];
    struct maildir_delivery d;
    assert_int_equal(maildir_create(dir, err, sizeof err), 0);
    assert_int_equal(maildir_open(&d, dir, "h", err, sizeof err), 0);
    maildir_write(&d, "x", 1);
    d.error = ENOSPC; /* as if the disk had filled up */
    maildir_write(&d, "y", 1);
    assert_int_equal(d.bytes, 1);
    assert_int_equal(maildir_commit(&d, path, sizeof path, err, sizeof err), -1);
    assert_non_null(strstr(err, "write failed"));
    assert_int_equal(count_entries(dir, "tmp"), 0);
    assert_int_equal(count_entries(dir, "new"), 0);
    /* Commit without an open delivery fails cleanly. */
    assert_int_equal(maildir_commit(&d, path, sizeof path, err, sizeof err), -1);
    remove_tree(dir);
    free(dir);
}

static void test_maildir_missing_dir(void **state)
{
    (void)state;
    char err[256];
    struct maildir_delivery d;
    assert_int_equal(maildir_open(&d, "/nonexistent/sallyport/Maildir", "h", err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot create"));
    assert_int_equal(d.fd, -1);
}

/* smtp_data feeding maildir, as the mailbox does. */
static void sink_to_maildir(void *arg, const uint8_t *bytes, size_t len)
{
    maildir_write(arg, bytes, len);
}

static void test_data_into_maildir(void **state)
{
    (void)state;
    char *dir = make_temp_dir();
    char err[256], path[1024];
    struct maildir_delivery m;
    struct smtp_data d;
    const char *in = "Subject: t\r\n\r\n..dot\r\nend\r\n.\r\n";
    const char *expected = "Subject: t\r\n\r\n.dot\r\nend\r\n";
    assert_int_equal(maildir_create(dir, err, sizeof err), 0);
    assert_int_equal(maildir_open(&m, dir, "h", err, sizeof err), 0);
    smtp_data_init(&d, 1000);
    size_t used = 0;
    for (size_t i = 0; i < strlen(in); i++) { /* one byte at a time */
        enum smtp_data_result r =
            smtp_data_feed(&d, (const uint8_t *)in + i, 1, &used, sink_to_maildir, &m);
        assert_int_equal(used, 1);
        assert_int_equal(r, i + 1 == strlen(in) ? SMTP_DATA_OK : SMTP_DATA_MORE);
    }
    assert_int_equal(maildir_commit(&m, path, sizeof path, err, sizeof err), 0);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char got[128];
    size_t n = fread(got, 1, sizeof got, f);
    fclose(f);
    assert_int_equal(n, strlen(expected));
    assert_memory_equal(got, expected, n);
    remove_tree(dir);
    free(dir);
}

/* ---- smtp_syntax ---------------------------------------------------------- */

static enum smtp_arg_result mail_from(const char *text, bool allow_auth, struct smtp_mail_from *out)
{
    char args[1200];
    snprintf(args, sizeof args, "%s", text);
    return smtp_parse_mail_from(args, allow_auth, out);
}

static void test_syntax_mail_from(void **state)
{
    (void)state;
    struct smtp_mail_from f;
    assert_int_equal(mail_from("FROM:<a@b.example>", false, &f), SMTP_ARG_OK);
    assert_string_equal(f.path, "a@b.example");
    assert_false(f.has_size);
    assert_int_equal(mail_from("from: <a@b>  SIZE=1000 body=8BITMIME", false, &f), SMTP_ARG_OK);
    assert_string_equal(f.path, "a@b");
    assert_true(f.has_size);
    assert_int_equal(f.size, 1000);
    assert_int_equal(mail_from("FROM:<> BODY=7BIT", false, &f), SMTP_ARG_OK);
    assert_string_equal(f.path, "");
    assert_int_equal(mail_from("FROM:<\"odd > name\"@b>", false, &f), SMTP_ARG_OK);
    assert_string_equal(f.path, "\"odd > name\"@b");
    assert_int_equal(mail_from("FROM:<a@b> SIZE=99999999999999999999999", false, &f), SMTP_ARG_OK);
    assert_true(f.size == ULLONG_MAX);

    assert_int_equal(mail_from("FROM:a@b", false, &f), SMTP_ARG_SYNTAX);
    assert_int_equal(mail_from("FROM:<a@b", false, &f), SMTP_ARG_SYNTAX);
    assert_int_equal(mail_from("FROM:<a b@c>", false, &f), SMTP_ARG_SYNTAX);
    assert_int_equal(mail_from("FROM:<a@b>x", false, &f), SMTP_ARG_SYNTAX);
    assert_int_equal(mail_from("TO:<a@b>", false, &f), SMTP_ARG_SYNTAX);
    assert_int_equal(mail_from("FROM:<a\x01@b>", false, &f), SMTP_ARG_SYNTAX);
    assert_int_equal(mail_from("FROM:<a@b> SIZE=12x", false, &f), SMTP_ARG_SYNTAX);
    assert_int_equal(mail_from("FROM:<a@b> BODY=BINARYMIME", false, &f), SMTP_ARG_SYNTAX);
    assert_int_equal(mail_from("FROM:<a@b> SMTPUTF8", false, &f), SMTP_ARG_UNKNOWN_PARAM);
    assert_int_equal(mail_from("FROM:<a@b> AUTH=<>", false, &f), SMTP_ARG_UNKNOWN_PARAM);
    assert_int_equal(mail_from("FROM:<a@b> AUTH=<>", true, &f), SMTP_ARG_OK);

    /* The path bound: 256 octets fit, 257 do not. */
    char text[400];
    memset(text, 'x', sizeof text);
    memcpy(text, "FROM:<", 6);
    memcpy(text + 6 + 256, ">", 2);
    assert_int_equal(mail_from(text, false, &f), SMTP_ARG_OK);
    assert_int_equal(strlen(f.path), 256);
    memset(text + 6, 'x', 257);
    memcpy(text + 6 + 257, ">", 2);
    assert_int_equal(mail_from(text, false, &f), SMTP_ARG_SYNTAX);
}

static void test_syntax_rcpt_to(void **state)
{
    (void)state;
    char args[300], path[SMTP_PATH_MAX + 1];
    snprintf(args, sizeof args, "TO:<c@d.example>");
    assert_int_equal(smtp_parse_rcpt_to(args, path), SMTP_ARG_OK);
    assert_string_equal(path, "c@d.example");
    snprintf(args, sizeof args, "to:<postmaster>");
    assert_int_equal(smtp_parse_rcpt_to(args, path), SMTP_ARG_OK);
    snprintf(args, sizeof args, "TO:<>");
    assert_int_equal(smtp_parse_rcpt_to(args, path), SMTP_ARG_EMPTY_PATH);
    snprintf(args, sizeof args, "TO:<c@d> NOTIFY=NEVER");
    assert_int_equal(smtp_parse_rcpt_to(args, path), SMTP_ARG_UNKNOWN_PARAM);
    snprintf(args, sizeof args, "TO:c@d");
    assert_int_equal(smtp_parse_rcpt_to(args, path), SMTP_ARG_SYNTAX);
}

static void test_syntax_helo(void **state)
{
    (void)state;
    char long_name[300];
    assert_true(smtp_valid_helo("mx.example.com"));
    assert_true(smtp_valid_helo("[192.0.2.1]"));
    assert_false(smtp_valid_helo(""));
    assert_false(smtp_valid_helo("two words"));
    assert_false(smtp_valid_helo("tab\there"));
    assert_false(smtp_valid_helo("caf\xc3\xa9"));
    memset(long_name, 'a', sizeof long_name);
    long_name[255] = '\0';
    assert_true(smtp_valid_helo(long_name));
    long_name[255] = 'a';
    long_name[256] = '\0';
    assert_false(smtp_valid_helo(long_name));
}

static void test_syntax_base64(void **state)
{
    (void)state;
    unsigned char out[64];
    assert_int_equal(smtp_base64_decode("", out, sizeof out), 0);
    assert_int_equal(smtp_base64_decode("TWFu", out, sizeof out), 3);
    assert_memory_equal(out, "Man", 3);
    assert_int_equal(smtp_base64_decode("TWE=", out, sizeof out), 2);
    assert_memory_equal(out, "Ma", 2);
    assert_int_equal(smtp_base64_decode("TQ==", out, sizeof out), 1);
    assert_memory_equal(out, "M", 1);
    assert_int_equal(smtp_base64_decode("AHVzZXIAcGFzcw==", out, sizeof out), 10);
    assert_memory_equal(out, "\0user\0pass", 10);
    assert_int_equal(smtp_base64_decode("TQ=", out, sizeof out), -1);      /* length */
    assert_int_equal(smtp_base64_decode("TQ==TWFu", out, sizeof out), -1); /* pad inside */
    assert_int_equal(smtp_base64_decode("T===", out, sizeof out), -1);
    assert_int_equal(smtp_base64_decode("TW=u", out, sizeof out), -1);
    assert_int_equal(smtp_base64_decode("TW u", out, sizeof out), -1);
    assert_int_equal(smtp_base64_decode("=", out, sizeof out), -1);
    assert_int_equal(smtp_base64_decode("TWFuTWFu", out, 5), -1); /* does not fit */
}

static void test_syntax_sasl_plain(void **state)
{
    (void)state;
    unsigned char raw[32];
    const char *z, *c, *p;
    memcpy(raw, "\0user\0secret", 12);
    assert_true(smtp_sasl_plain(raw, 12, &z, &c, &p));
    assert_string_equal(z, "");
    assert_string_equal(c, "user");
    assert_string_equal(p, "secret");
    memcpy(raw, "admin\0user\0", 11);
    assert_true(smtp_sasl_plain(raw, 11, &z, &c, &p));
    assert_string_equal(z, "admin");
    assert_string_equal(p, "");
    memcpy(raw, "user\0secret", 11);
    assert_false(smtp_sasl_plain(raw, 11, &z, &c, &p)); /* one NUL */
    memcpy(raw, "\0\0secret", 8);
    assert_false(smtp_sasl_plain(raw, 8, &z, &c, &p)); /* empty authcid */
}

static void test_syntax_date(void **state)
{
    (void)state;
    char date[64];
    setenv("TZ", "UTC", 1);
    tzset();
    smtp_date(date, sizeof date, 0);
    assert_string_equal(date, "Thu, 1 Jan 1970 00:00:00 +0000");
    setenv("TZ", "EST5", 1);
    tzset();
    smtp_date(date, sizeof date, 1763796360); /* 2025-11-22 07:26:00 UTC */
    assert_string_equal(date, "Sat, 22 Nov 2025 02:26:00 -0500");
    unsetenv("TZ");
    tzset();
}

/* ---- userdb --------------------------------------------------------------- */

/* "secret" hashed with `openssl passwd -6 -salt abcdefgh secret`. */
#define SECRET_HASH                                                                                \
    "$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/"      \
    "O6IND4WQhG."

static char *write_temp_file(const char *text)
{
    char *path = strdup("/tmp/sallyport-test-users-XXXXXX");
    assert_non_null(path);
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void test_userdb_check(void **state)
{
    (void)state;
    char *path = write_temp_file("# users\n\n  alice:" SECRET_HASH "\r\n"
                                 "bob:$6$other$invalidhashbutwellformed\n");
    char err[256];
    struct userdb *db = userdb_load(path, err, sizeof err);
    assert_non_null(db);
    assert_int_equal(userdb_count(db), 2);
    assert_true(userdb_check(db, "alice", "secret"));
    assert_false(userdb_check(db, "alice", "Secret"));
    assert_false(userdb_check(db, "alice", ""));
    assert_false(userdb_check(db, "Alice", "secret"));
    assert_false(userdb_check(db, "mallory", "secret")); /* unknown user */
    assert_false(userdb_check(db, "bob", "anything"));
    userdb_free(db);
    unlink(path);
    free(path);
}

static void test_userdb_errors(void **state)
{
    (void)state;
    char err[256];
    assert_null(userdb_load("/nonexistent/users", err, sizeof err));
    assert_non_null(strstr(err, "cannot read users file"));

    char *path = write_temp_file("alice:" SECRET_HASH "\nno-colon-here\n");
    assert_null(userdb_load(path, err, sizeof err));
    assert_non_null(strstr(err, ":2: expected name:crypt-hash"));
    unlink(path);
    free(path);

    path = write_temp_file("alice:\n");
    assert_null(userdb_load(path, err, sizeof err));
    unlink(path);
    free(path);

    path = write_temp_file("# nobody\n");
    struct userdb *db = userdb_load(path, err, sizeof err);
    assert_non_null(db);
    assert_int_equal(userdb_count(db), 0);
    assert_false(userdb_check(db, "alice", "secret"));
    userdb_free(db);
    unlink(path);
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_data_simple),
        cmocka_unit_test(test_data_empty_message),
        cmocka_unit_test(test_data_empty_lines),
        cmocka_unit_test(test_data_dot_unstuffing),
        cmocka_unit_test(test_data_terminator_split_everywhere),
        cmocka_unit_test(test_data_pipelined_after_dot),
        cmocka_unit_test(test_data_eight_bit_and_nul),
        cmocka_unit_test(test_data_smuggling_lf_dot_lf),
        cmocka_unit_test(test_data_smuggling_cr_dot_cr),
        cmocka_unit_test(test_data_smuggling_lf_dot_crlf),
        cmocka_unit_test(test_data_smuggling_crlf_dot_lf),
        cmocka_unit_test(test_data_smuggling_crlf_dot_cr),
        cmocka_unit_test(test_data_smuggling_cr_dot_crlf),
        cmocka_unit_test(test_data_bare_lf_and_cr),
        cmocka_unit_test(test_data_bare_stops_sink),
        cmocka_unit_test(test_data_size_limit),
        cmocka_unit_test(test_data_size_counts_unstuffed),
        cmocka_unit_test(test_data_large_message),
        cmocka_unit_test(test_maildir_create),
        cmocka_unit_test(test_maildir_deliver),
        cmocka_unit_test(test_maildir_unique_names),
        cmocka_unit_test(test_maildir_abort),
        cmocka_unit_test(test_maildir_write_error),
        cmocka_unit_test(test_maildir_missing_dir),
        cmocka_unit_test(test_data_into_maildir),
        cmocka_unit_test(test_syntax_mail_from),
        cmocka_unit_test(test_syntax_rcpt_to),
        cmocka_unit_test(test_syntax_helo),
        cmocka_unit_test(test_syntax_base64),
        cmocka_unit_test(test_syntax_sasl_plain),
        cmocka_unit_test(test_syntax_date),
        cmocka_unit_test(test_userdb_check),
        cmocka_unit_test(test_userdb_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
