/* Unit tests for the POP3 table (src/dialogue/pop3.c): the cleartext
 * dialogue a client of a pop3 listener sees before STLS (RFC 1939, RFC 2449,
 * RFC 2595), and the client side sallyport runs against a POP3 backend.
 * Replies and queued commands are compared byte for byte. */
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
#define GREETING  "+OK " HOST " sallyport ready\r\n"
#define CAPA_LIST "+OK Capability list follows\r\nSTLS\r\nIMPLEMENTATION sallyport\r\n.\r\n"
#define GO_AHEAD  "+OK Begin TLS negotiation\r\n"
#define MUST_STLS "-ERR Must issue a STLS command first\r\n"
#define TOO_MANY  "-ERR " HOST " Too many errors, closing connection\r\n"
#define LONG_LINE "-ERR Line too long\r\n"

#define HARNESS_PROTO PROTO_POP3
#include "dialogue_harness.h"

static const struct dialogue *pop3(void)
{
    return harness_dialogue();
}

/* ---- table ---- */

static void test_table(void **state)
{
    (void)state;
    const struct dialogue *d = pop3();
    assert_int_equal(d->proto, PROTO_POP3);
    assert_string_equal(d->name, "pop3");
    assert_false(d->greets_after_starttls);
    assert_non_null(d->greet);
    assert_non_null(d->on_line);
    assert_non_null(d->on_long_line);
    assert_non_null(d->timeout_reply);
    assert_non_null(d->unavailable_reply);
    assert_non_null(d->fresh_greeting);
    assert_non_null(d->backend_start);
    assert_non_null(d->on_backend_line);
}

/* ---- server side ---- */

static void test_greeting(void **state)
{
    struct fx *f = *state;
    pop3()->greet(&f->ds, &f->out);
    assert_out(&f->out, GREETING);
}

static void test_capa(void **state)
{
    struct fx *f = *state;
    expect(f, "CAPA", DIALOGUE_CONTINUE, CAPA_LIST);
    assert_int_equal(f->ds.errors, 0);
    /* STLS, and no way to send a password, before TLS; "." ends the list. */
    static char list[BUF_CAPACITY + 1];
    memcpy(list, f->out.data, f->out.len);
    list[f->out.len] = '\0';
    assert_non_null(strstr(list, "\r\nSTLS\r\n"));
    assert_string_equal(list + f->out.len - 3, ".\r\n");
    for (char *l = strtok(list, "\r\n"); l; l = strtok(NULL, "\r\n")) {
        assert_true(strncmp(l, "USER", 4) != 0);
        assert_true(strncmp(l, "SASL", 4) != 0);
        assert_true(strncmp(l, "APOP", 4) != 0);
    }
}

static void test_capa_with_argument(void **state)
{
    struct fx *f = *state;
    expect(f, "CAPA x", DIALOGUE_CONTINUE, "-ERR CAPA takes no arguments\r\n");
    assert_int_equal(f->ds.errors, 1);
    /* Trailing spaces are no argument. */
    expect(f, "CAPA  ", DIALOGUE_CONTINUE, CAPA_LIST);
    assert_int_equal(f->ds.errors, 1);
}

static void test_stls(void **state)
{
    struct fx *f = *state;
    expect(f, "STLS", DIALOGUE_STARTTLS, GO_AHEAD);
    assert_int_equal(f->ds.errors, 0);
}

static void test_stls_with_argument(void **state)
{
    struct fx *f = *state;
    expect(f, "STLS x", DIALOGUE_CONTINUE, "-ERR STLS takes no arguments\r\n");
    assert_int_equal(f->ds.errors, 1);
    expect_bytes(f, "STLS \0x", 7, DIALOGUE_CONTINUE, "-ERR STLS takes no arguments\r\n");
    assert_int_equal(f->ds.errors, 2);
}

static void test_stls_after_errors(void **state)
{
    struct fx *f = *state;
    dialogue_server_init(&f->ds, HOST, 3);
    expect(f, "USER bob", DIALOGUE_CONTINUE, MUST_STLS);
    expect(f, "PASS secret", DIALOGUE_CONTINUE, MUST_STLS);
    expect(f, "STLS", DIALOGUE_STARTTLS, GO_AHEAD);
}

static void test_quit(void **state)
{
    struct fx *f = *state;
    expect(f, "QUIT", DIALOGUE_QUIT, "+OK " HOST " signing off\r\n");
    assert_int_equal(f->ds.errors, 0);
}

static void test_case_insensitive(void **state)
{
    struct fx *f = *state;
    expect(f, "capa", DIALOGUE_CONTINUE, CAPA_LIST);
    expect(f, "Stls", DIALOGUE_STARTTLS, GO_AHEAD);
    expect(f, "stls", DIALOGUE_STARTTLS, GO_AHEAD);
    expect(f, "user bob", DIALOGUE_CONTINUE, MUST_STLS);
    expect(f, "qUiT", DIALOGUE_QUIT, "+OK " HOST " signing off\r\n");
    assert_int_equal(f->ds.errors, 1);
}

/* Each line gets the generic refusal and counts as an error. */
static void expect_refused(struct fx *f, const char *const *lines, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        expect(f, lines[i], DIALOGUE_CONTINUE, MUST_STLS);
        assert_int_equal(f->ds.errors, i + 1);
    }
}

static void test_refused_commands(void **state)
{
    const char *lines[] = {"USER bob",
                           "USER",
                           "PASS secret",
                           "APOP mrose c4c9334bac560ecc979e58001b3e22fb",
                           "AUTH PLAIN AGJvYgBzZWNyZXQ=",
                           "AUTH",
                           "RETR 1",
                           "STAT",
                           "LIST",
                           "TOP 1 10",
                           "UIDL",
                           "DELE 1",
                           "NOOP",
                           "RSET",
                           "UTF8"};
    expect_refused(*state, lines, sizeof lines / sizeof lines[0]);
}

static void test_near_misses_refused(void **state)
{
    const char *lines[] = {"garbage", "",      "STLSX",   "CAPAX",
                           "QUITX",   " STLS", "STLS\tx", "\x16\x03\x01\x02"};
    expect_refused(*state, lines, sizeof lines / sizeof lines[0]);
}

static void test_nul_bytes(void **state)
{
    struct fx *f = *state;
    expect_bytes(f, "STLS\0", 5, DIALOGUE_CONTINUE, MUST_STLS);
    expect_bytes(f, "QUIT\0", 5, DIALOGUE_CONTINUE, MUST_STLS);
    expect_bytes(f, "\0STLS", 5, DIALOGUE_CONTINUE, MUST_STLS);
    expect_bytes(f, "\0", 1, DIALOGUE_CONTINUE, MUST_STLS);
    assert_int_equal(f->ds.errors, 4);
}

static void test_error_limit(void **state)
{
    struct fx *f = *state;
    dialogue_server_init(&f->ds, HOST, 3);
    expect(f, "USER bob", DIALOGUE_CONTINUE, MUST_STLS);
    expect(f, "PASS secret", DIALOGUE_CONTINUE, MUST_STLS);
    /* The final reply alone, not the refusal as well. */
    expect(f, "RETR 1", DIALOGUE_CLOSE, TOO_MANY);
}

static void test_error_limit_counts_every_kind(void **state)
{
    struct fx *f = *state;
    dialogue_server_init(&f->ds, HOST, 3);
    expect(f, "STLS now", DIALOGUE_CONTINUE, "-ERR STLS takes no arguments\r\n");
    /* Accepted commands neither count nor reset the count. */
    expect(f, "CAPA", DIALOGUE_CONTINUE, CAPA_LIST);
    expect(f, "CAPA x", DIALOGUE_CONTINUE, "-ERR CAPA takes no arguments\r\n");
    assert_int_equal(f->ds.errors, 2);
    f->out.len = 0;
    assert_int_equal(pop3()->on_long_line(&f->ds, &f->out), DIALOGUE_CLOSE);
    assert_out(&f->out, TOO_MANY);
}

static void test_error_limit_of_one(void **state)
{
    struct fx *f = *state;
    dialogue_server_init(&f->ds, HOST, 1);
    expect(f, "AUTH", DIALOGUE_CLOSE, TOO_MANY);
}

static void test_long_line(void **state)
{
    struct fx *f = *state;
    assert_int_equal(pop3()->on_long_line(&f->ds, &f->out), DIALOGUE_CONTINUE);
    assert_out(&f->out, LONG_LINE);
    assert_int_equal(f->ds.errors, 1);
    f->out.len = 0;
    assert_int_equal(pop3()->on_long_line(&f->ds, &f->out), DIALOGUE_CONTINUE);
    assert_out(&f->out, LONG_LINE);
    assert_int_equal(f->ds.errors, 2);
}

static void test_session_replies(void **state)
{
    struct fx *f = *state;
    pop3()->timeout_reply(&f->ds, &f->out);
    assert_out(&f->out, "-ERR " HOST " Timeout, closing connection\r\n");

    f->out.len = 0;
    pop3()->unavailable_reply("other.example.net", &f->out);
    assert_out(&f->out, "-ERR [SYS/TEMP] other.example.net Service temporarily unavailable\r\n");

    f->out.len = 0;
    pop3()->fresh_greeting("other.example.net", &f->out);
    assert_out(&f->out, "+OK other.example.net sallyport ready\r\n");
}

static void test_replies_append(void **state)
{
    struct fx *f = *state;
    pop3()->greet(&f->ds, &f->out);
    assert_int_equal(pop3()->on_line(&f->ds, "CAPA", 4, &f->out), DIALOGUE_CONTINUE);
    assert_out(&f->out, GREETING CAPA_LIST);
}

/* ---- client side helpers ---- */

static void backend_init(struct fx *f, enum backend_mode mode)
{
    dialogue_backend_init(&f->db, pop3(), mode, SELF);
}

/* Feeds a backend line; asserts the step and exactly what was queued. */
static void step_bytes(struct fx *f, const char *line, size_t len, enum backend_step want,
                       const char *queued)
{
    char in[256];
    f->out.len = 0;
    enum backend_step got = pop3()->on_backend_line(&f->db, line, len, &f->out);
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

/* A STARTTLS backend that greeted and accepted CAPA (its list follows). */
static void backend_listing(struct fx *f)
{
    backend_init(f, BACKEND_STARTTLS);
    step(f, "+OK POP3 backend ready", BACKEND_NEED_MORE, "CAPA\r\n");
    step(f, "+OK Capability list follows", BACKEND_NEED_MORE, "");
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

static void test_greeting_only(void **state)
{
    struct fx *f = *state;
    backend_init(f, BACKEND_GREETING_ONLY);
    step(f, "+OK POP3 ready <1896.697170952@dbc.mtview.ca.us>", BACKEND_GREETED, "");
    /* The prelude is over: nothing more is read as greeting. */
    step_fails(f, "+OK again", "unexpected");

    backend_init(f, BACKEND_GREETING_ONLY);
    step(f, "+OK", BACKEND_GREETED, "");
}

static void test_stls_negotiation(void **state)
{
    struct fx *f = *state;
    backend_init(f, BACKEND_STARTTLS);
    step(f, "+OK POP3 backend ready", BACKEND_NEED_MORE, "CAPA\r\n");
    step(f, "+OK", BACKEND_NEED_MORE, "");
    step(f, "TOP", BACKEND_NEED_MORE, "");
    step(f, "USER", BACKEND_NEED_MORE, "");
    step(f, "SASL PLAIN LOGIN", BACKEND_NEED_MORE, "");
    step(f, "STLS", BACKEND_NEED_MORE, "");
    /* STLS only goes out once the list is complete. */
    step(f, "PIPELINING", BACKEND_NEED_MORE, "");
    step(f, ".", BACKEND_NEED_MORE, "STLS\r\n");
    assert_true(f->db.offers_starttls);
    step(f, "+OK Begin TLS negotiation", BACKEND_TLS_READY, "");
    /* Anything after the go-ahead is response injection. */
    step_fails(f, "+OK injected", "unexpected");
}

static void test_stls_capability_case(void **state)
{
    struct fx *f = *state;
    backend_listing(f);
    step(f, "stls", BACKEND_NEED_MORE, "");
    step(f, ".", BACKEND_NEED_MORE, "STLS\r\n");
    step(f, "+OK", BACKEND_TLS_READY, "");
}

static void test_no_stls_no_downgrade(void **state)
{
    struct fx *f = *state;
    backend_listing(f);
    step(f, "USER", BACKEND_NEED_MORE, "");
    step(f, "SASL PLAIN", BACKEND_NEED_MORE, "");
    step_fails(f, ".", "downgrade");
    assert_false(f->db.offers_starttls);
    step_fails(f, "+OK", "unexpected");

    backend_listing(f);
    step_fails(f, ".", "downgrade");
}

static void test_stls_lookalikes(void **state)
{
    struct fx *f = *state;
    const char *fakes[] = {"STLSX", "XSTLS", "STL", " STLS", "STLS\t", "X-STLS", "+OK STLS"};
    for (size_t i = 0; i < sizeof fakes / sizeof fakes[0]; i++) {
        backend_listing(f);
        step(f, fakes[i], BACKEND_NEED_MORE, "");
        step_fails(f, ".", "downgrade");
    }
    /* STLS in the greeting or the CAPA status line is not a capability. */
    backend_init(f, BACKEND_STARTTLS);
    step(f, "+OK STLS", BACKEND_NEED_MORE, "CAPA\r\n");
    step(f, "+OK STLS", BACKEND_NEED_MORE, "");
    step_fails(f, ".", "downgrade");
}

static void test_dot_stuffed_line(void **state)
{
    struct fx *f = *state;
    /* ".." is a byte-stuffed ".", not the end of the list. */
    backend_listing(f);
    step(f, "..", BACKEND_NEED_MORE, "");
    step(f, ". ", BACKEND_NEED_MORE, "");
    step(f, "STLS", BACKEND_NEED_MORE, "");
    step(f, ".", BACKEND_NEED_MORE, "STLS\r\n");
}

static void test_capa_refused(void **state)
{
    struct fx *f = *state;
    const char *answers[] = {"-ERR unknown command", "-ERR", "+OKAY", "STLS", ""};
    for (size_t i = 0; i < sizeof answers / sizeof answers[0]; i++) {
        backend_init(f, BACKEND_STARTTLS);
        step(f, "+OK hi", BACKEND_NEED_MORE, "CAPA\r\n");
        step_fails(f, answers[i], "CAPA");
    }
}

static void test_greeting_refused(void **state)
{
    struct fx *f = *state;
    const char *greetings[] = {"-ERR busy", "+OKAY hi", "+OK\thi", "OK hi", "", "* OK imap"};
    for (size_t i = 0; i < sizeof greetings / sizeof greetings[0]; i++) {
        backend_init(f, BACKEND_STARTTLS);
        step_fails(f, greetings[i], "refused");
        backend_init(f, BACKEND_GREETING_ONLY);
        step_fails(f, greetings[i], "refused");
    }
}

static void test_stls_refused(void **state)
{
    struct fx *f = *state;
    const char *answers[] = {"-ERR TLS not available", "+OKAY", "-ERR", ".", "STLS"};
    for (size_t i = 0; i < sizeof answers / sizeof answers[0]; i++) {
        backend_listing(f);
        step(f, "STLS", BACKEND_NEED_MORE, "");
        step(f, ".", BACKEND_NEED_MORE, "STLS\r\n");
        step_fails(f, answers[i], "refused STLS");
        step_fails(f, "+OK", "unexpected");
    }
}

static void test_too_many_lines(void **state)
{
    struct fx *f = *state;
    /* Greeting, status and 62 capabilities are 64 lines; one more fails. */
    backend_listing(f);
    step(f, "STLS", BACKEND_NEED_MORE, "");
    for (int i = 4; i <= 64; i++)
        step(f, "X-CAPABILITY", BACKEND_NEED_MORE, "");
    step_fails(f, ".", "too many");
}

static void test_reason_is_printable(void **state)
{
    struct fx *f = *state;
    backend_init(f, BACKEND_STARTTLS);
    static const char start[] = "-ERR \x01\x1b[2J\r\n";
    char line[300];
    memcpy(line, start, sizeof start - 1);
    memset(line + sizeof start - 1, 'x', sizeof line - (sizeof start - 1));
    step_bytes(f, line, sizeof line, BACKEND_FAILED, "");
    size_t n = strlen(f->db.reason);
    assert_true(n > 0 && n < sizeof f->db.reason);
    for (size_t i = 0; i < n; i++)
        assert_true(f->db.reason[i] >= 0x20 && f->db.reason[i] < 0x7f);
}

#define FX(t) cmocka_unit_test_setup_teardown(t, fx_setup, fx_teardown)

/* ---- client side: naming the client (xclient = yes) ---- */

static void identify(struct fx *f, enum backend_mode mode)
{
    struct client_identity who = harness_client("203.0.113.7", 4711, "192.0.2.1", 995);
    backend_init(f, mode);
    f->out.len = 0;
    dialogue_backend_identify(&f->db, pop3(), &who, &f->out);
}

static void test_backend_xclient_after_greeting(void **state)
{
    struct fx *f = *state;
    identify(f, BACKEND_GREETING_ONLY);
    assert_int_equal(f->out.len, 0);
    step(f, "+OK [XCLIENT] Dovecot ready.", BACKEND_NEED_MORE,
         "XCLIENT ADDR=203.0.113.7 PORT=4711\r\n");
    assert_true(f->db.greeted);
    step(f, "+OK", BACKEND_GREETED, "");
}

static void test_backend_xclient_after_stls(void **state)
{
    struct fx *f = *state;
    identify(f, BACKEND_IDENTIFY);
    assert_out(&f->out, "XCLIENT ADDR=203.0.113.7 PORT=4711\r\n");
    step_fails(f, "-ERR You're not allowed to use XCLIENT", "login_trusted_networks");
    identify(f, BACKEND_IDENTIFY);
    step_fails(f, "+OKAY", "refused XCLIENT");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        FX(test_greeting),
        FX(test_capa),
        FX(test_capa_with_argument),
        FX(test_stls),
        FX(test_stls_with_argument),
        FX(test_stls_after_errors),
        FX(test_quit),
        FX(test_case_insensitive),
        FX(test_refused_commands),
        FX(test_near_misses_refused),
        FX(test_nul_bytes),
        FX(test_error_limit),
        FX(test_error_limit_counts_every_kind),
        FX(test_error_limit_of_one),
        FX(test_long_line),
        FX(test_session_replies),
        FX(test_replies_append),
        FX(test_backend_init),
        FX(test_greeting_only),
        FX(test_stls_negotiation),
        FX(test_stls_capability_case),
        FX(test_no_stls_no_downgrade),
        FX(test_stls_lookalikes),
        FX(test_dot_stuffed_line),
        FX(test_capa_refused),
        FX(test_greeting_refused),
        FX(test_stls_refused),
        FX(test_too_many_lines),
        FX(test_reason_is_printable),
        cmocka_unit_test_setup_teardown(test_backend_xclient_after_greeting, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_backend_xclient_after_stls, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests_name("dialogue (POP3 server and backend sides)", tests, NULL,
                                       NULL);
}
