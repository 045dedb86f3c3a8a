/* Unit tests for dialogue (src/dialogue/dialogue.c) and its SMTP table
 * (src/dialogue/smtp.c): the server side a client of a STARTTLS listener
 * talks to before TLS, and the client side sallyport runs against a backend.
 * Replies are compared byte for byte. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dialogue/dialogue.h"

#define HOST      "mx.example.net"
#define SELF      "gw.example.org"
#define MUST_TLS  "530 5.7.0 Must issue a STARTTLS command first\r\n"
#define TOO_MANY  "421 4.7.0 " HOST " Too many errors, closing connection\r\n"
#define LONG_LINE "500 5.5.6 Line too long\r\n"

/* ---- fixture ---- */

#define HARNESS_PROTO PROTO_SMTP
#include "dialogue_harness.h"

static const struct dialogue *smtp(void)
{
    return harness_dialogue();
}

/* ---- server side helpers ---- */

/* Runs `len` bytes of `line` through on_line with an empty output buffer. */
static enum dialogue_action server_bytes(struct fx *f, const char *line, size_t len)
{
    f->out.len = 0;
    return smtp()->on_line(&f->ds, line, len, &f->out);
}

static enum dialogue_action server_line(struct fx *f, const char *line)
{
    return server_bytes(f, line, strlen(line));
}

/* ---- table ---- */

static void test_table(void **state)
{
    (void)state;
    const struct dialogue *d = dialogue_for(PROTO_SMTP);
    assert_non_null(d);
    assert_int_equal(d->proto, PROTO_SMTP);
    assert_string_equal(d->name, "smtp");
    assert_non_null(d->greet);
    assert_non_null(d->on_line);
    assert_non_null(d->on_long_line);
    assert_non_null(d->timeout_reply);
    assert_non_null(d->unavailable_reply);
    assert_non_null(d->fresh_greeting);
    assert_non_null(d->on_backend_line);
}

static void test_server_init(void **state)
{
    (void)state;
    struct dialogue_server ds;
    memset(&ds, 0xa5, sizeof ds);
    dialogue_server_init(&ds, HOST, 7);
    assert_string_equal(ds.hostname, HOST);
    assert_int_equal(ds.max_errors, 7);
    assert_int_equal(ds.errors, 0);
    assert_int_equal(ds.state, 0);
}

static void test_verb_is(void **state)
{
    (void)state;
    assert_true(dialogue_verb_is("EHLO", 4, "EHLO"));
    assert_true(dialogue_verb_is("ehlo x", 6, "EHLO"));
    assert_true(dialogue_verb_is("StartTLS", 8, "STARTTLS"));
    assert_false(dialogue_verb_is("EHLOX", 5, "EHLO"));
    assert_false(dialogue_verb_is("EHL", 3, "EHLO"));
    assert_false(dialogue_verb_is("", 0, "EHLO"));
    assert_false(dialogue_verb_is("EHLO\tx", 6, "EHLO"));
    /* Only `len` bytes count: "EHLO" cut to 3 bytes is not EHLO. */
    assert_false(dialogue_verb_is("EHLO", 3, "EHLO"));
    /* A verb then a NUL is not the verb followed by an argument. */
    assert_false(dialogue_verb_is("NOOP\0", 5, "NOOP"));
}

/* ---- server side ---- */

static void test_greeting(void **state)
{
    struct fx *f = *state;
    smtp()->greet(&f->ds, &f->out);
    assert_out(&f->out, "220 " HOST " ESMTP sallyport\r\n");
}

static void test_ehlo(void **state)
{
    struct fx *f = *state;
    assert_int_equal(server_line(f, "EHLO client.example.com"), DIALOGUE_CONTINUE);
    assert_out(&f->out, "250-" HOST "\r\n"
                        "250-ENHANCEDSTATUSCODES\r\n"
                        "250 STARTTLS\r\n");
    /* Nothing that belongs after TLS is advertised before it. */
    assert_false(out_contains(&f->out, "AUTH"));
    assert_false(out_contains(&f->out, "PIPELINING"));
    assert_int_equal(f->ds.errors, 0);
}

static void test_ehlo_without_argument(void **state)
{
    struct fx *f = *state;
    const char *lines[] = {"EHLO", "EHLO ", "EHLO    "};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        assert_int_equal(server_line(f, lines[i]), DIALOGUE_CONTINUE);
        assert_out(&f->out, "501 5.5.4 Syntax: EHLO hostname\r\n");
        assert_int_equal(f->ds.errors, i + 1);
    }
}

static void test_helo(void **state)
{
    struct fx *f = *state;
    assert_int_equal(server_line(f, "HELO client.example.com"), DIALOGUE_CONTINUE);
    assert_out(&f->out, "250 " HOST "\r\n");
    assert_int_equal(f->ds.errors, 0);

    assert_int_equal(server_line(f, "HELO"), DIALOGUE_CONTINUE);
    assert_out(&f->out, "501 5.5.4 Syntax: HELO hostname\r\n");
    assert_int_equal(f->ds.errors, 1);
}

static void test_noop_rset(void **state)
{
    struct fx *f = *state;
    const char *lines[] = {"NOOP", "RSET", "NOOP hello", "noop", "Rset"};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        assert_int_equal(server_line(f, lines[i]), DIALOGUE_CONTINUE);
        assert_out(&f->out, "250 2.0.0 OK\r\n");
    }
    assert_int_equal(f->ds.errors, 0);
}

static void test_quit(void **state)
{
    struct fx *f = *state;
    assert_int_equal(server_line(f, "QUIT"), DIALOGUE_QUIT);
    assert_out(&f->out, "221 2.0.0 " HOST " Bye\r\n");
}

static void test_starttls(void **state)
{
    struct fx *f = *state;
    assert_int_equal(server_line(f, "STARTTLS"), DIALOGUE_STARTTLS);
    assert_out(&f->out, "220 2.0.0 Ready to start TLS\r\n");
    assert_int_equal(f->ds.errors, 0);
}

static void test_starttls_after_errors(void **state)
{
    struct fx *f = *state;
    dialogue_server_init(&f->ds, HOST, 3);
    assert_int_equal(server_line(f, "MAIL FROM:<a@b>"), DIALOGUE_CONTINUE);
    assert_int_equal(server_line(f, "RCPT TO:<c@d>"), DIALOGUE_CONTINUE);
    assert_int_equal(server_line(f, "STARTTLS"), DIALOGUE_STARTTLS);
    assert_out(&f->out, "220 2.0.0 Ready to start TLS\r\n");
}

static void test_starttls_with_argument(void **state)
{
    struct fx *f = *state;
    assert_int_equal(server_line(f, "STARTTLS now"), DIALOGUE_CONTINUE);
    assert_out(&f->out, "501 5.5.4 Syntax: STARTTLS\r\n");
    assert_int_equal(f->ds.errors, 1);
}

static void test_case_insensitive(void **state)
{
    struct fx *f = *state;
    assert_int_equal(server_line(f, "ehlo x"), DIALOGUE_CONTINUE);
    assert_out(&f->out, "250-" HOST "\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n");
    assert_int_equal(server_line(f, "hElO x"), DIALOGUE_CONTINUE);
    assert_out(&f->out, "250 " HOST "\r\n");
    assert_int_equal(server_line(f, "StartTLS"), DIALOGUE_STARTTLS);
    assert_out(&f->out, "220 2.0.0 Ready to start TLS\r\n");
    assert_int_equal(server_line(f, "starttls"), DIALOGUE_STARTTLS);
    assert_int_equal(server_line(f, "quit"), DIALOGUE_QUIT);
    assert_out(&f->out, "221 2.0.0 " HOST " Bye\r\n");
    assert_int_equal(f->ds.errors, 0);
}

static void test_refused_commands(void **state)
{
    struct fx *f = *state;
    const char *lines[] = {
        "MAIL FROM:<a@b>",
        "RCPT TO:<a@b>",
        "DATA",
        "AUTH PLAIN xxx",
        "AUTH LOGIN",
        "AUTH",
        "VRFY postmaster",
        "EXPN list",
        "HELP",
        "BDAT 10 LAST",
        "ETRN example.com",
        "STARTTLSX",
        "EHLOX",
        "HELOX x",
        "NOOPX",
        "QUITX",
        "STARTTLS\tnow",
        " STARTTLS",
        "",
        "garbage",
        "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        "GET / HTTP/1.1",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        assert_int_equal(server_line(f, lines[i]), DIALOGUE_CONTINUE);
        assert_out(&f->out, MUST_TLS);
        assert_int_equal(f->ds.errors, i + 1);
    }
}

static void test_nul_bytes(void **state)
{
    struct fx *f = *state;
    static const struct {
        const char *bytes;
        size_t len;
    } lines[] = {
        {"\0", 1},         {"\0\0\0\0", 4},     {"NOOP\0", 5},
        {"STARTTLS\0", 9}, {"STARTTLS\0x", 10}, {"EHLO\0x", 6},
        {"QUIT\0", 5},     {"\0STARTTLS", 9},   {"MAIL\0FROM:<a@b>", 15},
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        assert_int_equal(server_bytes(f, lines[i].bytes, lines[i].len), DIALOGUE_CONTINUE);
        assert_out(&f->out, MUST_TLS);
        assert_int_equal(f->ds.errors, i + 1);
    }
}

/* The line is `len` bytes: an argument hidden behind a NUL is still an
 * argument. "STARTTLS <NUL>now" has one, so RFC 3207 says 501, not go-ahead. */
static void test_argument_behind_nul(void **state)
{
    struct fx *f = *state;
    assert_int_equal(server_bytes(f, "STARTTLS \0now", 13), DIALOGUE_CONTINUE);
    assert_out(&f->out, "501 5.5.4 Syntax: STARTTLS\r\n");
    assert_int_equal(f->ds.errors, 1);
}

/* Nothing past `len` is part of the line (nor may be read): "EHLO   " cut
 * from a longer array has no argument. */
static void test_argument_within_len(void **state)
{
    struct fx *f = *state;
    static const char ehlo[] = "EHLO   client.example.com";
    assert_int_equal(server_bytes(f, ehlo, 7), DIALOGUE_CONTINUE);
    assert_out(&f->out, "501 5.5.4 Syntax: EHLO hostname\r\n");
    assert_int_equal(f->ds.errors, 1);
}

static void test_error_limit(void **state)
{
    struct fx *f = *state;
    dialogue_server_init(&f->ds, HOST, 3);
    assert_int_equal(server_line(f, "AUTH PLAIN xxx"), DIALOGUE_CONTINUE);
    assert_out(&f->out, MUST_TLS);
    assert_int_equal(server_line(f, "MAIL FROM:<a@b>"), DIALOGUE_CONTINUE);
    assert_out(&f->out, MUST_TLS);
    assert_int_equal(server_line(f, "DATA"), DIALOGUE_CLOSE);
    /* The final reply alone, not the 530 as well. */
    assert_out(&f->out, TOO_MANY);
}

static void test_error_limit_counts_every_kind(void **state)
{
    struct fx *f = *state;
    dialogue_server_init(&f->ds, HOST, 3);
    assert_int_equal(server_line(f, "EHLO"), DIALOGUE_CONTINUE);
    /* Accepted commands do not count, nor reset the count. */
    assert_int_equal(server_line(f, "NOOP"), DIALOGUE_CONTINUE);
    assert_int_equal(server_line(f, "EHLO x"), DIALOGUE_CONTINUE);
    assert_int_equal(server_line(f, "RSET"), DIALOGUE_CONTINUE);
    assert_int_equal(server_line(f, "STARTTLS now"), DIALOGUE_CONTINUE);
    assert_int_equal(f->ds.errors, 2);
    f->out.len = 0;
    assert_int_equal(smtp()->on_long_line(&f->ds, &f->out), DIALOGUE_CLOSE);
    assert_out(&f->out, TOO_MANY);
}

static void test_error_limit_of_one(void **state)
{
    struct fx *f = *state;
    dialogue_server_init(&f->ds, HOST, 1);
    assert_int_equal(server_line(f, "VRFY root"), DIALOGUE_CLOSE);
    assert_out(&f->out, TOO_MANY);
}

static void test_long_line(void **state)
{
    struct fx *f = *state;
    assert_int_equal(smtp()->on_long_line(&f->ds, &f->out), DIALOGUE_CONTINUE);
    assert_out(&f->out, LONG_LINE);
    assert_int_equal(f->ds.errors, 1);
    f->out.len = 0;
    assert_int_equal(smtp()->on_long_line(&f->ds, &f->out), DIALOGUE_CONTINUE);
    assert_out(&f->out, LONG_LINE);
    assert_int_equal(f->ds.errors, 2);
}

static void test_session_replies(void **state)
{
    struct fx *f = *state;
    smtp()->timeout_reply(&f->ds, &f->out);
    assert_out(&f->out, "421 4.4.2 " HOST " Timeout, closing connection\r\n");

    f->out.len = 0;
    smtp()->unavailable_reply("other.example.net", &f->out);
    assert_out(&f->out,
               "421 4.3.0 other.example.net Service temporarily unavailable, try again later\r\n");

    f->out.len = 0;
    smtp()->fresh_greeting("other.example.net", &f->out);
    assert_out(&f->out, "220 other.example.net ESMTP sallyport\r\n");
}

static void test_replies_append(void **state)
{
    struct fx *f = *state;
    /* Replies are appended after what the buffer already holds. */
    smtp()->greet(&f->ds, &f->out);
    assert_int_equal(smtp()->on_line(&f->ds, "NOOP", 4, &f->out), DIALOGUE_CONTINUE);
    assert_out(&f->out, "220 " HOST " ESMTP sallyport\r\n250 2.0.0 OK\r\n");
}

/* ---- client side helpers ---- */

static void backend_init(struct fx *f, enum backend_mode mode)
{
    dialogue_backend_init(&f->db, smtp(), mode, SELF);
}

static enum backend_step backend_bytes(struct fx *f, const char *line, size_t len)
{
    f->out.len = 0;
    return smtp()->on_backend_line(&f->db, line, len, &f->out);
}

static enum backend_step backend_line(struct fx *f, const char *line)
{
    return backend_bytes(f, line, strlen(line));
}

/* Asserts the step is FAILED, nothing was queued, and the reason mentions `why`. */
static void assert_failed(struct fx *f, enum backend_step step, const char *why)
{
    assert_int_equal(step, BACKEND_FAILED);
    assert_int_equal(f->out.len, 0);
    assert_non_null(strstr(f->db.reason, why));
}

/* Takes a STARTTLS backend through its greeting (EHLO queued). */
static void backend_greeted(struct fx *f)
{
    backend_init(f, BACKEND_STARTTLS);
    assert_int_equal(backend_line(f, "220 backend.example ESMTP"), BACKEND_NEED_MORE);
    assert_out(&f->out, "EHLO " SELF "\r\n");
}

/* ---- client side: greeting only ---- */

static void test_backend_init(void **state)
{
    struct fx *f = *state;
    memset(&f->db, 0xa5, sizeof f->db);
    backend_init(f, BACKEND_STARTTLS);
    assert_int_equal(f->db.mode, BACKEND_STARTTLS);
    assert_string_equal(f->db.hostname, SELF);
    assert_int_equal(f->db.lines, 0);
    assert_false(f->db.offers_starttls);
    assert_string_equal(f->db.reason, "");
}

static void test_greeting_only_single(void **state)
{
    struct fx *f = *state;
    backend_init(f, BACKEND_GREETING_ONLY);
    assert_int_equal(backend_line(f, "220 backend.example ESMTP Postfix"), BACKEND_GREETED);
    assert_int_equal(f->out.len, 0);
}

static void test_greeting_only_bare_code(void **state)
{
    struct fx *f = *state;
    backend_init(f, BACKEND_GREETING_ONLY);
    assert_int_equal(backend_line(f, "220"), BACKEND_GREETED);
    assert_int_equal(f->out.len, 0);
}

static void test_greeting_only_multiline(void **state)
{
    struct fx *f = *state;
    backend_init(f, BACKEND_GREETING_ONLY);
    assert_int_equal(backend_line(f, "220-a"), BACKEND_NEED_MORE);
    assert_int_equal(f->out.len, 0);
    assert_int_equal(backend_line(f, "220-"), BACKEND_NEED_MORE);
    assert_int_equal(f->out.len, 0);
    assert_int_equal(backend_line(f, "220 b"), BACKEND_GREETED);
    assert_int_equal(f->out.len, 0);
}

static void test_greeting_refused(void **state)
{
    struct fx *f = *state;
    backend_init(f, BACKEND_GREETING_ONLY);
    assert_failed(f, backend_line(f, "554 5.3.2 go away"), "refused");

    backend_init(f, BACKEND_STARTTLS);
    assert_failed(f, backend_line(f, "554 5.3.2 go away"), "refused");

    backend_init(f, BACKEND_GREETING_ONLY);
    assert_failed(f, backend_line(f, "421 4.3.2 busy"), "refused");

    /* A multi-line greeting whose code changes half-way. */
    backend_init(f, BACKEND_GREETING_ONLY);
    assert_int_equal(backend_line(f, "220-hello"), BACKEND_NEED_MORE);
    assert_failed(f, backend_line(f, "554 no"), "refused");
}

static void test_greeting_only_nothing_after(void **state)
{
    struct fx *f = *state;
    backend_init(f, BACKEND_GREETING_ONLY);
    assert_int_equal(backend_line(f, "220 hi"), BACKEND_GREETED);
    /* The prelude is over; another reply is not accepted as more greeting. */
    assert_int_equal(backend_line(f, "220 again"), BACKEND_FAILED);
    assert_int_equal(f->out.len, 0);
}

static void test_reason_is_printable(void **state)
{
    struct fx *f = *state;
    backend_init(f, BACKEND_GREETING_ONLY);
    char line[300];
    memcpy(line, "554 \x01\x1b[2J\r\n", 12);
    memset(line + 12, 'x', sizeof line - 12);
    assert_int_equal(backend_bytes(f, line, sizeof line), BACKEND_FAILED);
    size_t n = strlen(f->db.reason);
    assert_true(n > 0 && n < sizeof f->db.reason);
    for (size_t i = 0; i < n; i++)
        assert_true(f->db.reason[i] >= 0x20 && f->db.reason[i] < 0x7f);
}

/* ---- client side: STARTTLS ---- */

static void test_starttls_negotiation(void **state)
{
    struct fx *f = *state;
    backend_greeted(f);
    assert_int_equal(backend_line(f, "250-backend.example"), BACKEND_NEED_MORE);
    assert_int_equal(f->out.len, 0);
    assert_int_equal(backend_line(f, "250-PIPELINING"), BACKEND_NEED_MORE);
    assert_int_equal(f->out.len, 0);
    assert_int_equal(backend_line(f, "250-STARTTLS"), BACKEND_NEED_MORE);
    assert_int_equal(f->out.len, 0);
    assert_int_equal(backend_line(f, "250 SIZE 100"), BACKEND_NEED_MORE);
    assert_out(&f->out, "STARTTLS\r\n");
    assert_true(f->db.offers_starttls);
    assert_int_equal(backend_line(f, "220 2.0.0 ready"), BACKEND_TLS_READY);
    assert_int_equal(f->out.len, 0);
}

static void test_starttls_multiline_greeting(void **state)
{
    struct fx *f = *state;
    backend_init(f, BACKEND_STARTTLS);
    assert_int_equal(backend_line(f, "220-backend.example"), BACKEND_NEED_MORE);
    /* No EHLO before the greeting is complete. */
    assert_int_equal(f->out.len, 0);
    assert_int_equal(backend_line(f, "220 ESMTP"), BACKEND_NEED_MORE);
    assert_out(&f->out, "EHLO " SELF "\r\n");
}

static void test_starttls_last_extension(void **state)
{
    struct fx *f = *state;
    backend_greeted(f);
    assert_int_equal(backend_line(f, "250-backend.example"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "250 starttls"), BACKEND_NEED_MORE);
    assert_out(&f->out, "STARTTLS\r\n");
    assert_int_equal(backend_line(f, "220 ready"), BACKEND_TLS_READY);
    assert_int_equal(f->out.len, 0);
}

static void test_starttls_multiline_go_ahead(void **state)
{
    struct fx *f = *state;
    backend_greeted(f);
    assert_int_equal(backend_line(f, "250-backend.example"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "250 STARTTLS"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "220-go"), BACKEND_NEED_MORE);
    assert_int_equal(f->out.len, 0);
    assert_int_equal(backend_line(f, "220 ahead"), BACKEND_TLS_READY);
}

static void test_no_starttls_no_downgrade(void **state)
{
    struct fx *f = *state;
    backend_greeted(f);
    assert_int_equal(backend_line(f, "250-backend.example"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "250-PIPELINING"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "250-AUTH PLAIN LOGIN"), BACKEND_NEED_MORE);
    assert_failed(f, backend_line(f, "250 SIZE 100"), "downgrade");
    assert_false(f->db.offers_starttls);
    /* Nothing more is accepted (no way on to TLS_READY). */
    assert_failed(f, backend_line(f, "220 ready"), "unexpected");
}

static void test_no_starttls_single_line(void **state)
{
    struct fx *f = *state;
    backend_greeted(f);
    assert_failed(f, backend_line(f, "250 backend.example"), "STARTTLS");
}

static void test_starttls_only_in_name_line(void **state)
{
    struct fx *f = *state;
    /* The first line of an EHLO reply is the server's name, not an extension. */
    backend_greeted(f);
    assert_int_equal(backend_line(f, "250-STARTTLS"), BACKEND_NEED_MORE);
    assert_int_equal(f->out.len, 0);
    assert_failed(f, backend_line(f, "250 SIZE 100"), "downgrade");
    assert_false(f->db.offers_starttls);

    backend_greeted(f);
    assert_failed(f, backend_line(f, "250 STARTTLS"), "downgrade");
    assert_false(f->db.offers_starttls);
}

static void test_starttls_lookalikes(void **state)
{
    struct fx *f = *state;
    const char *fakes[] = {"250-STARTTLSX", "250-XSTARTTLS", "250-STARTTLS-NOT",
                           "250-STARTTL",   "250- STARTTLS", "250-STARTTLS\tX"};
    for (size_t i = 0; i < sizeof fakes / sizeof fakes[0]; i++) {
        backend_greeted(f);
        assert_int_equal(backend_line(f, "250-backend.example"), BACKEND_NEED_MORE);
        assert_int_equal(backend_line(f, fakes[i]), BACKEND_NEED_MORE);
        assert_failed(f, backend_line(f, "250 SIZE 100"), "downgrade");
        assert_false(f->db.offers_starttls);
    }
}

static void test_starttls_with_parameters(void **state)
{
    struct fx *f = *state;
    backend_greeted(f);
    assert_int_equal(backend_line(f, "250-backend.example"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "250-STARTTLS REQUIRED"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "250 8BITMIME"), BACKEND_NEED_MORE);
    assert_out(&f->out, "STARTTLS\r\n");
}

static void test_starttls_refused(void **state)
{
    struct fx *f = *state;
    backend_greeted(f);
    assert_int_equal(backend_line(f, "250-backend.example"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "250 STARTTLS"), BACKEND_NEED_MORE);
    assert_out(&f->out, "STARTTLS\r\n");
    assert_failed(f, backend_line(f, "454 4.7.0 TLS not available due to temporary reason"),
                  "refused STARTTLS");
    /* Not TLS_READY afterwards either. */
    assert_failed(f, backend_line(f, "220 ready"), "unexpected");
}

static void test_starttls_go_ahead_code_changes(void **state)
{
    struct fx *f = *state;
    backend_greeted(f);
    assert_int_equal(backend_line(f, "250-backend.example"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "250 STARTTLS"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "220-go"), BACKEND_NEED_MORE);
    assert_failed(f, backend_line(f, "454 changed my mind"), "refused STARTTLS");
}

static void test_ehlo_refused(void **state)
{
    struct fx *f = *state;
    backend_greeted(f);
    assert_failed(f, backend_line(f, "500 5.5.1 what"), "EHLO");

    backend_greeted(f);
    assert_failed(f, backend_line(f, "502 5.5.2 not implemented"), "EHLO");

    /* A 250 reply that turns into an error half-way. */
    backend_greeted(f);
    assert_int_equal(backend_line(f, "250-backend.example"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "250-STARTTLS"), BACKEND_NEED_MORE);
    assert_failed(f, backend_line(f, "500 oops"), "EHLO");
}

static void test_malformed_lines(void **state)
{
    struct fx *f = *state;
    static const struct {
        const char *bytes;
        size_t len;
    } lines[] = {
        {"hello", 5}, {"22", 2},     {"2200 x", 6}, {"220x", 4},     {"", 0},
        {"2a0 x", 5}, {" 220 x", 6}, {"220\tx", 5}, {"\0\0\0 x", 6}, {"-220 x", 6},
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        /* In the greeting ... */
        backend_init(f, BACKEND_GREETING_ONLY);
        assert_failed(f, backend_bytes(f, lines[i].bytes, lines[i].len), "malformed");

        /* ... in the EHLO reply ... */
        backend_greeted(f);
        assert_int_equal(backend_line(f, "250-backend.example"), BACKEND_NEED_MORE);
        assert_failed(f, backend_bytes(f, lines[i].bytes, lines[i].len), "malformed");

        /* ... and in the STARTTLS reply. */
        backend_greeted(f);
        assert_int_equal(backend_line(f, "250-backend.example"), BACKEND_NEED_MORE);
        assert_int_equal(backend_line(f, "250 STARTTLS"), BACKEND_NEED_MORE);
        assert_out(&f->out, "STARTTLS\r\n");
        assert_failed(f, backend_bytes(f, lines[i].bytes, lines[i].len), "malformed");
    }
}

static void test_greeting_too_long(void **state)
{
    struct fx *f = *state;
    backend_init(f, BACKEND_GREETING_ONLY);
    for (int i = 0; i < 64; i++)
        assert_int_equal(backend_line(f, "220-more"), BACKEND_NEED_MORE);
    assert_failed(f, backend_line(f, "220-more"), "too long");
}

static void test_greeting_of_64_lines(void **state)
{
    struct fx *f = *state;
    backend_init(f, BACKEND_GREETING_ONLY);
    for (int i = 0; i < 63; i++)
        assert_int_equal(backend_line(f, "220-more"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "220 done"), BACKEND_GREETED);
}

static void test_ehlo_reply_too_long(void **state)
{
    struct fx *f = *state;
    backend_greeted(f);
    assert_int_equal(backend_line(f, "250-backend.example"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "250-STARTTLS"), BACKEND_NEED_MORE);
    for (int i = 2; i < 64; i++)
        assert_int_equal(backend_line(f, "250-X-EXT"), BACKEND_NEED_MORE);
    assert_failed(f, backend_line(f, "250 SIZE 100"), "too long");
}

static void test_line_count_is_per_reply(void **state)
{
    struct fx *f = *state;
    /* A 64-line greeting then a 64-line EHLO reply: each within the limit. */
    backend_init(f, BACKEND_STARTTLS);
    for (int i = 0; i < 63; i++)
        assert_int_equal(backend_line(f, "220-more"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "220 done"), BACKEND_NEED_MORE);
    assert_out(&f->out, "EHLO " SELF "\r\n");
    assert_int_equal(backend_line(f, "250-backend.example"), BACKEND_NEED_MORE);
    for (int i = 1; i < 63; i++)
        assert_int_equal(backend_line(f, "250-X-EXT"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "250 STARTTLS"), BACKEND_NEED_MORE);
    assert_out(&f->out, "STARTTLS\r\n");
    assert_int_equal(backend_line(f, "220 go ahead"), BACKEND_TLS_READY);
}

static void test_nothing_after_tls_ready(void **state)
{
    struct fx *f = *state;
    backend_greeted(f);
    assert_int_equal(backend_line(f, "250-backend.example"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "250 STARTTLS"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "220 ready"), BACKEND_TLS_READY);
    assert_failed(f, backend_line(f, "250 injected"), "unexpected");
}

/* ---- client side: naming the client (xclient = yes) ---- */

static void identify(struct fx *f, enum backend_mode mode, const char *addr)
{
    struct client_identity who = harness_client(addr, 4711, "192.0.2.1", 465);
    backend_init(f, mode);
    f->out.len = 0;
    dialogue_backend_identify(&f->db, smtp(), &who, &f->out);
}

static void test_backend_xclient_after_greeting(void **state)
{
    struct fx *f = *state;
    identify(f, BACKEND_GREETING_ONLY, "203.0.113.7");
    assert_int_equal(f->out.len, 0); /* nothing before the greeting */
    assert_int_equal(backend_line(f, "220-backend.example ESMTP"), BACKEND_NEED_MORE);
    assert_false(f->db.greeted);
    assert_int_equal(backend_line(f, "220 more"), BACKEND_NEED_MORE);
    assert_true(f->db.greeted); /* lines so far are the client's greeting */
    assert_out(&f->out, "EHLO " SELF "\r\n");
    assert_int_equal(backend_line(f, "250-backend.example"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "250-XCLIENT NAME ADDR PROTO HELO PORT DESTADDR DESTPORT"),
                     BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "250 8BITMIME"), BACKEND_NEED_MORE);
    assert_out(&f->out, "XCLIENT ADDR=203.0.113.7 NAME=[UNAVAILABLE] PORT=4711 "
                        "DESTADDR=192.0.2.1 DESTPORT=465\r\n");
    assert_int_equal(backend_line(f, "220 backend.example ESMTP"), BACKEND_GREETED);
    assert_int_equal(f->out.len, 0);
}

static void test_backend_xclient_sends_only_what_is_listed(void **state)
{
    struct fx *f = *state;
    identify(f, BACKEND_IDENTIFY, "2001:db8::7");
    assert_out(&f->out, "EHLO " SELF "\r\n"); /* at once: the greeting came before STARTTLS */
    assert_int_equal(backend_line(f, "250-b"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "250 xclient addr"), BACKEND_NEED_MORE);
    assert_out(&f->out, "XCLIENT ADDR=IPV6:2001:db8::7\r\n");
    assert_int_equal(backend_line(f, "250 ok"), BACKEND_GREETED); /* any 2xx */
}

static void test_backend_xclient_refusals(void **state)
{
    struct fx *f = *state;
    /* Not offered (sallyport is not in smtpd_authorized_xclient_hosts). */
    identify(f, BACKEND_IDENTIFY, "203.0.113.7");
    assert_int_equal(backend_line(f, "250-b"), BACKEND_NEED_MORE);
    assert_failed(f, backend_line(f, "250 PIPELINING"), "does not offer XCLIENT ADDR");
    /* Offered without ADDR, or a look-alike keyword. */
    identify(f, BACKEND_IDENTIFY, "203.0.113.7");
    assert_int_equal(backend_line(f, "250-b"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "250-XCLIENTS ADDR"), BACKEND_NEED_MORE);
    assert_failed(f, backend_line(f, "250 XCLIENT NAME HELO"), "does not offer XCLIENT ADDR");
    /* The first line is the server's name, not a keyword. */
    identify(f, BACKEND_IDENTIFY, "203.0.113.7");
    assert_failed(f, backend_line(f, "250 XCLIENT ADDR"), "does not offer XCLIENT ADDR");
    /* EHLO refused, XCLIENT refused. */
    identify(f, BACKEND_IDENTIFY, "203.0.113.7");
    assert_failed(f, backend_line(f, "502 no"), "refused EHLO");
    identify(f, BACKEND_IDENTIFY, "203.0.113.7");
    assert_int_equal(backend_line(f, "250-b"), BACKEND_NEED_MORE);
    assert_int_equal(backend_line(f, "250 XCLIENT ADDR"), BACKEND_NEED_MORE);
    assert_failed(f, backend_line(f, "550 5.7.0 insufficient authorization"), "refused XCLIENT");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_server_init),
        cmocka_unit_test(test_verb_is),
        cmocka_unit_test_setup_teardown(test_greeting, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_ehlo, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_ehlo_without_argument, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_helo, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_noop_rset, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_quit, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_starttls, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_starttls_after_errors, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_starttls_with_argument, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_case_insensitive, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_refused_commands, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_nul_bytes, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_argument_behind_nul, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_argument_within_len, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_error_limit, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_error_limit_counts_every_kind, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_error_limit_of_one, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_long_line, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_session_replies, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_replies_append, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_backend_init, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_greeting_only_single, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_greeting_only_bare_code, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_greeting_only_multiline, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_greeting_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_greeting_only_nothing_after, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_reason_is_printable, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_starttls_negotiation, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_starttls_multiline_greeting, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_starttls_last_extension, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_starttls_multiline_go_ahead, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_no_starttls_no_downgrade, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_no_starttls_single_line, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_starttls_only_in_name_line, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_starttls_lookalikes, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_starttls_with_parameters, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_starttls_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_starttls_go_ahead_code_changes, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_ehlo_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_malformed_lines, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_greeting_too_long, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_greeting_of_64_lines, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_ehlo_reply_too_long, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_line_count_is_per_reply, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_nothing_after_tls_ready, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_backend_xclient_after_greeting, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_backend_xclient_sends_only_what_is_listed, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_backend_xclient_refusals, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests_name("dialogue (SMTP server and backend sides)", tests, NULL,
                                       NULL);
}
