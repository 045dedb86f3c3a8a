/* Unit tests for the ManageSieve table (src/dialogue/sieve.c): the cleartext
 * dialogue a client of a sieve listener sees before STARTTLS (RFC 5804), and
 * the client side sallyport runs against a ManageSieve backend. Replies and
 * queued commands are compared byte for byte. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dialogue/dialogue.h"

#define HOST "mx.example.net"
#define SELF "gw.example.org"
/* The capabilities before TLS: STARTTLS, and no SASL mechanism. */
#define CAPS                                                                                       \
    "\"IMPLEMENTATION\" \"sallyport\"\r\n"                                                         \
    "\"SASL\" \"\"\r\n"                                                                            \
    "\"SIEVE\" \"\"\r\n"                                                                           \
    "\"STARTTLS\"\r\n"                                                                             \
    "\"VERSION\" \"1.0\"\r\n"
#define GREETING  CAPS "OK \"" HOST " sallyport ready\"\r\n"
#define GO_AHEAD  "OK \"Begin TLS negotiation now\"\r\n"
#define MUST_TLS  "NO \"Must issue a STARTTLS command first\"\r\n"
#define ENCRYPT   "NO (ENCRYPT-NEEDED) \"Must issue a STARTTLS command first\"\r\n"
#define LITERAL   "BYE \"Literals are not allowed before STARTTLS\"\r\n"
#define TOO_MANY  "BYE \"Too many errors, closing connection\"\r\n"
#define LONG_LINE "BYE \"Line too long, closing connection\"\r\n"

#define HARNESS_PROTO PROTO_SIEVE
#include "dialogue_harness.h"

static const struct dialogue *sieve(void)
{
    return harness_dialogue();
}

/* ---- table ---- */

static void test_table(void **state)
{
    (void)state;
    const struct dialogue *d = sieve();
    assert_int_equal(d->proto, PROTO_SIEVE);
    assert_string_equal(d->name, "sieve");
    assert_non_null(d->greet);
    assert_non_null(d->on_line);
    assert_non_null(d->on_long_line);
    assert_non_null(d->timeout_reply);
    assert_non_null(d->unavailable_reply);
    assert_non_null(d->fresh_greeting);
    assert_non_null(d->backend_start);
    assert_non_null(d->on_backend_line);
}

static void test_greets_after_starttls(void **state)
{
    (void)state;
    /* RFC 5804 2.2: a ManageSieve server re-sends its capabilities after
     * STARTTLS; the others start the TLS session without a greeting. */
    assert_true(dialogue_for(PROTO_SIEVE)->greets_after_starttls);
    assert_false(dialogue_for(PROTO_SMTP)->greets_after_starttls);
    assert_false(dialogue_for(PROTO_IMAP)->greets_after_starttls);
    assert_false(dialogue_for(PROTO_POP3)->greets_after_starttls);
}

/* ---- server side ---- */

static void test_greeting(void **state)
{
    struct fx *f = *state;
    sieve()->greet(&f->ds, &f->out);
    assert_out(&f->out, GREETING);
    /* The capabilities RFC 5804 1.7 requires, and no mechanism before TLS. */
    assert_true(out_contains(&f->out, "\r\n\"STARTTLS\"\r\n"));
    assert_true(out_contains(&f->out, "\r\n\"SASL\" \"\"\r\n"));
    assert_true(out_contains(&f->out, "\"IMPLEMENTATION\" \""));
    assert_true(out_contains(&f->out, "\r\n\"VERSION\" \"1.0\"\r\n"));
    assert_true(out_contains(&f->out, "\r\n\"SIEVE\" \""));
}

static void test_capability(void **state)
{
    struct fx *f = *state;
    expect(f, "CAPABILITY", DIALOGUE_CONTINUE, CAPS "OK \"Capability completed\"\r\n");
    assert_int_equal(f->ds.errors, 0);
    expect(f, "CAPABILITY x", DIALOGUE_CONTINUE, "NO \"CAPABILITY takes no arguments\"\r\n");
    assert_int_equal(f->ds.errors, 1);
}

static void test_starttls(void **state)
{
    struct fx *f = *state;
    expect(f, "STARTTLS", DIALOGUE_STARTTLS, GO_AHEAD);
    assert_int_equal(f->ds.errors, 0);
}

static void test_starttls_with_argument(void **state)
{
    struct fx *f = *state;
    expect(f, "STARTTLS x", DIALOGUE_CONTINUE, "NO \"STARTTLS takes no arguments\"\r\n");
    assert_int_equal(f->ds.errors, 1);
    expect_bytes(f, "STARTTLS \0x", 11, DIALOGUE_CONTINUE,
                 "NO \"STARTTLS takes no arguments\"\r\n");
    assert_int_equal(f->ds.errors, 2);
}

static void test_starttls_after_errors(void **state)
{
    struct fx *f = *state;
    dialogue_server_init(&f->ds, HOST, 3);
    expect(f, "LISTSCRIPTS", DIALOGUE_CONTINUE, MUST_TLS);
    expect(f, "AUTHENTICATE \"PLAIN\"", DIALOGUE_CONTINUE, ENCRYPT);
    expect(f, "STARTTLS", DIALOGUE_STARTTLS, GO_AHEAD);
}

static void test_logout(void **state)
{
    struct fx *f = *state;
    expect(f, "LOGOUT", DIALOGUE_QUIT, "OK \"Logout completed\"\r\n");
    assert_int_equal(f->ds.errors, 0);
}

static void test_noop(void **state)
{
    struct fx *f = *state;
    expect(f, "NOOP", DIALOGUE_CONTINUE, "OK \"NOOP completed\"\r\n");
    assert_int_equal(f->ds.errors, 0);
}

static void test_case_insensitive(void **state)
{
    struct fx *f = *state;
    expect(f, "capability", DIALOGUE_CONTINUE, CAPS "OK \"Capability completed\"\r\n");
    expect(f, "Noop", DIALOGUE_CONTINUE, "OK \"NOOP completed\"\r\n");
    expect(f, "authenticate \"PLAIN\"", DIALOGUE_CONTINUE, ENCRYPT);
    expect(f, "StartTls", DIALOGUE_STARTTLS, GO_AHEAD);
    expect(f, "logout", DIALOGUE_QUIT, "OK \"Logout completed\"\r\n");
}

static void test_authenticate_refused(void **state)
{
    struct fx *f = *state;
    expect(f, "AUTHENTICATE \"PLAIN\"", DIALOGUE_CONTINUE, ENCRYPT);
    assert_int_equal(f->ds.errors, 1);
    /* The initial response on the line: still no. */
    expect(f, "AUTHENTICATE \"PLAIN\" \"AGJvYgBzZWNyZXQ=\"", DIALOGUE_CONTINUE, ENCRYPT);
    expect(f, "AUTHENTICATE", DIALOGUE_CONTINUE, ENCRYPT);
    assert_int_equal(f->ds.errors, 3);
}

/* Each line gets the generic refusal and counts as an error. */
static void expect_refused(struct fx *f, const char *const *lines, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        expect(f, lines[i], DIALOGUE_CONTINUE, MUST_TLS);
        assert_int_equal(f->ds.errors, i + 1);
    }
}

static void test_refused_commands(void **state)
{
    const char *lines[] = {"PUTSCRIPT \"a\" \"keep;\"", "HAVESPACE \"a\" 100", "LISTSCRIPTS",
                           "GETSCRIPT \"a\"",           "SETACTIVE \"a\"",     "DELETESCRIPT \"a\"",
                           "RENAMESCRIPT \"a\" \"b\"",  "CHECKSCRIPT \"x\"",   "UNAUTHENTICATE"};
    expect_refused(*state, lines, sizeof lines / sizeof lines[0]);
}

static void test_near_misses_refused(void **state)
{
    const char *lines[] = {
        "garbage",     "",        "STARTTLSX", "\"STARTTLS\"",  " STARTTLS",
        "STARTTLS\tx", "LOGOUTX", "NOOPX",     "AUTHENTICATEX", "\x16\x03\x01\x02"};
    expect_refused(*state, lines, sizeof lines / sizeof lines[0]);
}

static void test_nul_bytes(void **state)
{
    struct fx *f = *state;
    expect_bytes(f, "STARTTLS\0", 9, DIALOGUE_CONTINUE, MUST_TLS);
    expect_bytes(f, "\0STARTTLS", 9, DIALOGUE_CONTINUE, MUST_TLS);
    expect_bytes(f, "\0", 1, DIALOGUE_CONTINUE, MUST_TLS);
    assert_int_equal(f->ds.errors, 3);
}

/* A literal's bytes would follow the line and be read as commands. */
static void test_literals_close(void **state)
{
    struct fx *f = *state;
    const char *lines[] = {
        "PUTSCRIPT \"a\" {10+}",
        "AUTHENTICATE \"PLAIN\" {20}",
        "AUTHENTICATE {5+}",
        "NOOP {3+}",
        "HAVESPACE {1} 100 {0}",
        "{5}",
        "garbage {99999999999999999999}",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        dialogue_server_init(&f->ds, HOST, 100);
        expect(f, lines[i], DIALOGUE_CLOSE, LITERAL);
    }
}

static void test_not_literals(void **state)
{
    struct fx *f = *state;
    const char *lines[] = {"PUTSCRIPT \"a\" {}", "PUTSCRIPT \"a\" {x}", "PUTSCRIPT \"a\" {+}",
                           "PUTSCRIPT \"a\" {5} ", "PUTSCRIPT \"a{5}\""};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        expect(f, lines[i], DIALOGUE_CONTINUE, MUST_TLS);
        assert_int_equal(f->ds.errors, i + 1);
    }
}

static void test_error_limit(void **state)
{
    struct fx *f = *state;
    dialogue_server_init(&f->ds, HOST, 3);
    expect(f, "LISTSCRIPTS", DIALOGUE_CONTINUE, MUST_TLS);
    expect(f, "AUTHENTICATE \"PLAIN\"", DIALOGUE_CONTINUE, ENCRYPT);
    /* The final reply alone, not the NO as well. */
    expect(f, "HAVESPACE \"a\" 1", DIALOGUE_CLOSE, TOO_MANY);
}

static void test_error_limit_counts_every_kind(void **state)
{
    struct fx *f = *state;
    dialogue_server_init(&f->ds, HOST, 3);
    expect(f, "STARTTLS now", DIALOGUE_CONTINUE, "NO \"STARTTLS takes no arguments\"\r\n");
    /* Accepted commands neither count nor reset the count. */
    expect(f, "NOOP", DIALOGUE_CONTINUE, "OK \"NOOP completed\"\r\n");
    expect(f, "CAPABILITY x", DIALOGUE_CONTINUE, "NO \"CAPABILITY takes no arguments\"\r\n");
    assert_int_equal(f->ds.errors, 2);
    expect(f, "PUTSCRIPT \"a\"", DIALOGUE_CLOSE, TOO_MANY);
}

static void test_error_limit_of_one(void **state)
{
    struct fx *f = *state;
    dialogue_server_init(&f->ds, HOST, 1);
    expect(f, "AUTHENTICATE \"PLAIN\"", DIALOGUE_CLOSE, TOO_MANY);
}

/* An over-long line may hide a literal announcement: the connection closes. */
static void test_long_line(void **state)
{
    struct fx *f = *state;
    assert_int_equal(sieve()->on_long_line(&f->ds, &f->out), DIALOGUE_CLOSE);
    assert_out(&f->out, LONG_LINE);
}

static void test_session_replies(void **state)
{
    struct fx *f = *state;
    sieve()->timeout_reply(&f->ds, &f->out);
    assert_out(&f->out, "BYE \"Timeout, closing connection\"\r\n");

    f->out.len = 0;
    sieve()->unavailable_reply("other.example.net", &f->out);
    assert_out(&f->out, "BYE (TRYLATER) \"other.example.net Service temporarily unavailable\"\r\n");
}

static void test_replies_append(void **state)
{
    struct fx *f = *state;
    sieve()->greet(&f->ds, &f->out);
    assert_int_equal(sieve()->on_line(&f->ds, "NOOP", 4, &f->out), DIALOGUE_CONTINUE);
    assert_out(&f->out, GREETING "OK \"NOOP completed\"\r\n");
}

/* ---- client side helpers ---- */

static void backend_init(struct fx *f, enum backend_mode mode)
{
    dialogue_backend_init(&f->db, sieve(), mode, SELF);
}

/* Feeds a backend line; asserts the step and exactly what was queued. */
static void step_bytes(struct fx *f, const char *line, size_t len, enum backend_step want,
                       const char *queued)
{
    char in[256];
    f->out.len = 0;
    enum backend_step got = sieve()->on_backend_line(&f->db, line, len, &f->out);
    if (got != want)
        fail_msg("\"%s\": step %d, expected %d (%s)", shown(line, len, in, sizeof in), (int)got,
                 (int)want, f->db.reason);
    assert_out(&f->out, queued);
}

static void step(struct fx *f, const char *line, enum backend_step want, const char *queued)
{
    step_bytes(f, line, strlen(line), want, queued);
}

/* Asserts the line fails the backend, queues nothing, and the reason says `why`. */
static void step_fails(struct fx *f, const char *line, const char *why)
{
    step(f, line, BACKEND_FAILED, "");
    if (!strstr(f->db.reason, why))
        fail_msg("reason \"%s\" does not mention \"%s\"", f->db.reason, why);
}

/* A STARTTLS backend that sent part of its capability list. */
static void backend_listing(struct fx *f)
{
    backend_init(f, BACKEND_STARTTLS);
    step(f, "\"IMPLEMENTATION\" \"Dovecot Pigeonhole\"", BACKEND_NEED_MORE, "");
    step(f, "\"SIEVE\" \"fileinto reject envelope\"", BACKEND_NEED_MORE, "");
}

/* ---- client side ---- */

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

static void test_starttls_negotiation(void **state)
{
    struct fx *f = *state;
    backend_listing(f);
    step(f, "\"NOTIFY\" \"mailto\"", BACKEND_NEED_MORE, "");
    step(f, "\"SASL\" \"\"", BACKEND_NEED_MORE, "");
    step(f, "\"STARTTLS\"", BACKEND_NEED_MORE, "");
    /* STARTTLS only goes out after the OK that ends the greeting. */
    step(f, "\"VERSION\" \"1.0\"", BACKEND_NEED_MORE, "");
    step(f, "OK \"Dovecot ready.\"", BACKEND_NEED_MORE, "STARTTLS\r\n");
    assert_true(f->db.offers_starttls);
    step(f, "OK \"Begin TLS negotiation now.\"", BACKEND_TLS_READY, "");
    /* Anything after the go-ahead is response injection. */
    step_fails(f, "\"STARTTLS\"", "unexpected");
}

static void test_starttls_variants(void **state)
{
    struct fx *f = *state;
    const char *lines[] = {"\"STARTTLS\"", "\"starttls\"", "\"StartTLS\" \"\""};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        backend_listing(f);
        step(f, lines[i], BACKEND_NEED_MORE, "");
        step(f, "ok", BACKEND_NEED_MORE, "STARTTLS\r\n");
        step(f, "Ok", BACKEND_TLS_READY, "");
    }
}

static void test_no_starttls_no_downgrade(void **state)
{
    struct fx *f = *state;
    backend_listing(f);
    step(f, "\"SASL\" \"PLAIN LOGIN\"", BACKEND_NEED_MORE, "");
    step_fails(f, "OK \"ready\"", "downgrade");
    assert_false(f->db.offers_starttls);
    step_fails(f, "OK", "unexpected");

    backend_init(f, BACKEND_STARTTLS);
    step_fails(f, "OK", "downgrade");
}

static void test_starttls_lookalikes(void **state)
{
    struct fx *f = *state;
    const char *fakes[] = {"\"STARTTLSX\"", "\"XSTARTTLS\"",         "\"STARTTLS",
                           "\"STARTTLS\"x", "\"SASL\" \"STARTTLS\"", "\" STARTTLS\""};
    for (size_t i = 0; i < sizeof fakes / sizeof fakes[0]; i++) {
        backend_listing(f);
        step(f, fakes[i], BACKEND_NEED_MORE, "");
        step_fails(f, "OK", "downgrade");
    }
    /* STARTTLS in the text of the OK is not a capability. */
    backend_listing(f);
    step_fails(f, "OK \"STARTTLS\"", "downgrade");
}

static void test_greeting_refused(void **state)
{
    struct fx *f = *state;
    backend_init(f, BACKEND_STARTTLS);
    step_fails(f, "NO \"go away\"", "refused");
    backend_init(f, BACKEND_GREETING_ONLY);
    step_fails(f, "BYE \"busy\"", "refused");
    backend_listing(f);
    step(f, "\"STARTTLS\"", BACKEND_NEED_MORE, "");
    step_fails(f, "BYE (TRYLATER) \"overloaded\"", "refused");
    backend_init(f, BACKEND_STARTTLS);
    step_fails(f, "no", "refused");
}

static void test_malformed_capability(void **state)
{
    struct fx *f = *state;
    const char *lines[] = {
        "STARTTLS", "IMPLEMENTATION \"x\"", "", " \"STARTTLS\"", "OKAY", "* OK imap", "+OK pop3",
        "220 smtp"};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        backend_listing(f);
        step_fails(f, lines[i], "malformed");
        backend_init(f, BACKEND_GREETING_ONLY);
        step_fails(f, lines[i], "malformed");
    }
}

static void test_starttls_refused(void **state)
{
    struct fx *f = *state;
    const char *answers[] = {"NO \"not now\"", "BYE \"bye\"", "\"STARTTLS\"", "OKAY", ""};
    for (size_t i = 0; i < sizeof answers / sizeof answers[0]; i++) {
        backend_listing(f);
        step(f, "\"STARTTLS\"", BACKEND_NEED_MORE, "");
        step(f, "OK", BACKEND_NEED_MORE, "STARTTLS\r\n");
        step_fails(f, answers[i], "refused STARTTLS");
        step_fails(f, "OK", "unexpected");
    }
}

static void test_greeting_only(void **state)
{
    struct fx *f = *state;
    backend_init(f, BACKEND_GREETING_ONLY);
    step(f, "\"IMPLEMENTATION\" \"Dovecot Pigeonhole\"", BACKEND_NEED_MORE, "");
    step(f, "\"SASL\" \"PLAIN\"", BACKEND_NEED_MORE, "");
    step(f, "\"VERSION\" \"1.0\"", BACKEND_NEED_MORE, "");
    step(f, "OK \"ready\"", BACKEND_GREETED, "");
    /* The prelude is over: nothing more is read as greeting. */
    step_fails(f, "OK", "unexpected");
}

static void test_backend_literal(void **state)
{
    struct fx *f = *state;
    backend_init(f, BACKEND_STARTTLS);
    step_fails(f, "\"IMPLEMENTATION\" {5}", "literal");
    backend_init(f, BACKEND_GREETING_ONLY);
    step_fails(f, "\"SIEVE\" {100+}", "literal");
    backend_listing(f);
    step(f, "\"STARTTLS\"", BACKEND_NEED_MORE, "");
    step_fails(f, "OK {8}", "literal");
}

static void test_too_many_lines(void **state)
{
    struct fx *f = *state;
    backend_listing(f);
    step(f, "\"STARTTLS\"", BACKEND_NEED_MORE, "");
    for (int i = 4; i <= 64; i++)
        step(f, "\"X-CAPABILITY\"", BACKEND_NEED_MORE, "");
    step_fails(f, "OK", "too many");
}

#define FX(t) cmocka_unit_test_setup_teardown(t, fx_setup, fx_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_greets_after_starttls),
        FX(test_greeting),
        FX(test_capability),
        FX(test_starttls),
        FX(test_starttls_with_argument),
        FX(test_starttls_after_errors),
        FX(test_logout),
        FX(test_noop),
        FX(test_case_insensitive),
        FX(test_authenticate_refused),
        FX(test_refused_commands),
        FX(test_near_misses_refused),
        FX(test_nul_bytes),
        FX(test_literals_close),
        FX(test_not_literals),
        FX(test_error_limit),
        FX(test_error_limit_counts_every_kind),
        FX(test_error_limit_of_one),
        FX(test_long_line),
        FX(test_session_replies),
        FX(test_replies_append),
        FX(test_backend_init),
        FX(test_starttls_negotiation),
        FX(test_starttls_variants),
        FX(test_no_starttls_no_downgrade),
        FX(test_starttls_lookalikes),
        FX(test_greeting_refused),
        FX(test_malformed_capability),
        FX(test_starttls_refused),
        FX(test_greeting_only),
        FX(test_backend_literal),
        FX(test_too_many_lines),
    };
    return cmocka_run_group_tests_name("dialogue (ManageSieve server and backend sides)", tests,
                                       NULL, NULL);
}
