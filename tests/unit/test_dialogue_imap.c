/* Unit tests for the IMAP table (src/dialogue/imap.c): the cleartext
 * dialogue a client of an imap listener sees before STARTTLS (RFC 9051,
 * RFC 2595), and the client side sallyport runs against an IMAP backend.
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

#define HOST     "mx.example.net"
#define SELF     "gw.example.org"
#define CAPS     "IMAP4rev1 STARTTLS LOGINDISABLED"
#define GREETING "* OK [CAPABILITY " CAPS "] " HOST " sallyport ready\r\n"
#define BAD_TAG  "* BAD Invalid tag or missing command\r\n"
#define LITERAL  "* BYE " HOST " Literals are not allowed before STARTTLS\r\n"
#define TOO_MANY "* BYE " HOST " Too many errors, closing connection\r\n"
#define PRIVACY  " NO [PRIVACYREQUIRED] Must issue a STARTTLS command first\r\n"
#define REFUSED  " BAD Command not allowed before STARTTLS\r\n"
#define S0       "S0 CAPABILITY\r\n"
#define S1       "S1 STARTTLS\r\n"

#define HARNESS_PROTO PROTO_IMAP
#include "dialogue_harness.h"

static const struct dialogue *imap(void)
{
    return harness_dialogue();
}

/* ---- table ---- */

static void test_table(void **state)
{
    (void)state;
    const struct dialogue *d = imap();
    assert_int_equal(d->proto, PROTO_IMAP);
    assert_string_equal(d->name, "imap");
    /* The backend's post-STARTTLS session starts without a greeting. */
    assert_false(d->greets_after_starttls);
}

/* ---- server side ---- */

static void test_greeting(void **state)
{
    struct fx *f = *state;
    imap()->greet(&f->ds, &f->out);
    assert_out(&f->out, GREETING);
}

static void test_capability(void **state)
{
    struct fx *f = *state;
    expect(f, "a CAPABILITY", DIALOGUE_CONTINUE,
           "* CAPABILITY " CAPS "\r\na OK CAPABILITY completed\r\n");
    assert_int_equal(f->ds.errors, 0);
    expect(f, "a1 CAPABILITY now", DIALOGUE_CONTINUE, "a1 BAD CAPABILITY takes no arguments\r\n");
    assert_int_equal(f->ds.errors, 1);
}

static void test_noop(void **state)
{
    struct fx *f = *state;
    expect(f, "b NOOP", DIALOGUE_CONTINUE, "b OK NOOP completed\r\n");
    assert_int_equal(f->ds.errors, 0);
    expect(f, "b2 NOOP x", DIALOGUE_CONTINUE, "b2 BAD NOOP takes no arguments\r\n");
    assert_int_equal(f->ds.errors, 1);
}

static void test_logout(void **state)
{
    struct fx *f = *state;
    expect(f, "c LOGOUT", DIALOGUE_QUIT, "* BYE " HOST " logging out\r\nc OK LOGOUT completed\r\n");
    assert_int_equal(f->ds.errors, 0);
}

static void test_starttls(void **state)
{
    struct fx *f = *state;
    expect(f, "d STARTTLS", DIALOGUE_STARTTLS, "d OK Begin TLS negotiation now\r\n");
    assert_int_equal(f->ds.errors, 0);
    /* STARTTLS takes no argument: one means BAD, never the go-ahead. */
    expect(f, "d STARTTLS x", DIALOGUE_CONTINUE, "d BAD STARTTLS takes no arguments\r\n");
    assert_int_equal(f->ds.errors, 1);
    /* An argument hidden behind a NUL is still an argument. */
    expect_bytes(f, "d STARTTLS \0x", 13, DIALOGUE_CONTINUE,
                 "d BAD STARTTLS takes no arguments\r\n");
    assert_int_equal(f->ds.errors, 2);
}

static void test_starttls_after_errors(void **state)
{
    struct fx *f = *state;
    dialogue_server_init(&f->ds, HOST, 3);
    expect(f, "a SELECT INBOX", DIALOGUE_CONTINUE, "a" REFUSED);
    expect(f, "b LOGIN u p", DIALOGUE_CONTINUE, "b" PRIVACY);
    expect(f, "c STARTTLS", DIALOGUE_STARTTLS, "c OK Begin TLS negotiation now\r\n");
}

static void test_case_insensitive(void **state)
{
    struct fx *f = *state;
    expect(f, "a capability", DIALOGUE_CONTINUE,
           "* CAPABILITY " CAPS "\r\na OK CAPABILITY completed\r\n");
    expect(f, "B noOp", DIALOGUE_CONTINUE, "B OK NOOP completed\r\n");
    expect(f, "x1 StartTls", DIALOGUE_STARTTLS, "x1 OK Begin TLS negotiation now\r\n");
    expect(f, "e login u p", DIALOGUE_CONTINUE, "e" PRIVACY);
    expect(f, "q Logout", DIALOGUE_QUIT, "* BYE " HOST " logging out\r\nq OK LOGOUT completed\r\n");
}

static void test_login_refused(void **state)
{
    struct fx *f = *state;
    expect(f, "e LOGIN user pass", DIALOGUE_CONTINUE, "e" PRIVACY);
    assert_int_equal(f->ds.errors, 1);
    expect(f, "f AUTHENTICATE PLAIN", DIALOGUE_CONTINUE, "f" PRIVACY);
    assert_int_equal(f->ds.errors, 2);
    /* SASL-IR: the credentials are on the line; still no. */
    expect(f, "g AUTHENTICATE PLAIN AHVzZXIAcGFzcw==", DIALOGUE_CONTINUE, "g" PRIVACY);
    expect(f, "h LOGIN", DIALOGUE_CONTINUE, "h" PRIVACY);
    assert_int_equal(f->ds.errors, 4);
}

/* Sends each command under its own tag; each gets a tagged BAD and counts. */
static void expect_refused(struct fx *f, const char *const *commands, size_t n)
{
    char line[128], reply[128];
    for (size_t i = 0; i < n; i++) {
        dialogue_server_init(&f->ds, HOST, 100);
        snprintf(line, sizeof line, "t%zu %s", i, commands[i]);
        snprintf(reply, sizeof reply, "t%zu" REFUSED, i);
        expect(f, line, DIALOGUE_CONTINUE, reply);
        assert_int_equal(f->ds.errors, 1);
    }
}

static void test_other_commands_refused(void **state)
{
    const char *commands[] = {
        "SELECT INBOX",     "EXAMINE INBOX", "ID NIL",          "ID (\"name\" \"x\")",
        "ENABLE IMAP4rev2", "LIST \"\" *",   "STATUS INBOX ()", "UID FETCH 1",
        "COMPRESS DEFLATE", "IDLE",          "GET / HTTP/1.1"};
    expect_refused(*state, commands, sizeof commands / sizeof commands[0]);
}

static void test_near_misses_refused(void **state)
{
    const char *commands[] = {"garbage",    "STARTTLSX", "XSTARTTLS", "NOOPX",   "LOGOUTX",
                              "LOGINX u p", "",          " NOOP",     "NOOP\tx", " STARTTLS"};
    expect_refused(*state, commands, sizeof commands / sizeof commands[0]);
}

static void test_nul_bytes(void **state)
{
    struct fx *f = *state;
    expect_bytes(f, "a NOOP\0", 7, DIALOGUE_CONTINUE, "a" REFUSED);
    expect_bytes(f, "a STARTTLS\0", 11, DIALOGUE_CONTINUE, "a" REFUSED);
    expect_bytes(f, "a\0STARTTLS", 10, DIALOGUE_CONTINUE, BAD_TAG);
    expect_bytes(f, "\0", 1, DIALOGUE_CONTINUE, BAD_TAG);
    assert_int_equal(f->ds.errors, 4);
}

static void test_invalid_tags(void **state)
{
    struct fx *f = *state;
    const char *lines[] = {
        "",         "+",        "+ NOOP",    "a(b NOOP",  "a)b NOOP",      "a{b NOOP",
        "a%b NOOP", "a*b NOOP", "a\"b NOOP", "a\\b NOOP", "a+b NOOP",      "* NOOP",
        "a",        "STARTTLS", " a NOOP",   "a\tNOOP",   "\xc3\xa9 NOOP", "\x16\x03\x01"};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        expect(f, lines[i], DIALOGUE_CONTINUE, BAD_TAG);
        assert_int_equal(f->ds.errors, i + 1);
    }
}

static void test_tag_echo(void **state)
{
    struct fx *f = *state;
    /* Any ATOM-CHAR but "+" may be in a tag; it is echoed as sent. */
    expect(f, "A.1-_!#$&'=?^`|~/:;<>@, NOOP", DIALOGUE_CONTINUE,
           "A.1-_!#$&'=?^`|~/:;<>@, OK NOOP completed\r\n");
    /* 63 bytes is the longest tag echoed; one more is refused untagged. */
    char line[100], reply[100];
    memset(line, 'T', 63);
    memcpy(line + 63, " NOOP", 6);
    memcpy(reply, line, 63);
    memcpy(reply + 63, " OK NOOP completed\r\n", 21);
    expect(f, line, DIALOGUE_CONTINUE, reply);
    memset(line, 'T', 64);
    memcpy(line + 64, " NOOP", 6);
    expect(f, line, DIALOGUE_CONTINUE, BAD_TAG);
    assert_int_equal(f->ds.errors, 1);
}

/* A literal's bytes would follow the line and be read as commands. */
static void test_literals_close(void **state)
{
    struct fx *f = *state;
    const char *lines[] = {
        "a LOGIN {5}",         "a LOGIN {5+}", "a LOGIN ~{5}", "a NOOP {0+}", "a APPEND x ~{5+}",
        "a LOGIN u {4}",       "{5}",          "* {5}",        "+ {12}",      "garbage{1}",
        "a NOOP {99999999999}"};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        dialogue_server_init(&f->ds, HOST, 100);
        expect(f, lines[i], DIALOGUE_CLOSE, LITERAL);
    }
}

static void test_not_literals(void **state)
{
    struct fx *f = *state;
    const char *lines[] = {"a NOOP {x}",   "a NOOP {}",   "a NOOP {+}", "a NOOP {5",
                           "a NOOP 5}",    "a NOOP {5} ", "a NOOP }",   "a NOOP {5-}",
                           "a NOOP {5++}", "a NOOP {5}x"};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        expect(f, lines[i], DIALOGUE_CONTINUE, "a BAD NOOP takes no arguments\r\n");
        assert_int_equal(f->ds.errors, i + 1);
    }
    expect_bytes(f, "a NOOP {5}\0", 11, DIALOGUE_CONTINUE, "a BAD NOOP takes no arguments\r\n");
}

static void test_error_limit(void **state)
{
    struct fx *f = *state;
    dialogue_server_init(&f->ds, HOST, 3);
    expect(f, "a SELECT INBOX", DIALOGUE_CONTINUE, "a" REFUSED);
    expect(f, "b LOGIN u p", DIALOGUE_CONTINUE, "b" PRIVACY);
    /* The final reply alone, not the tagged BAD as well. */
    expect(f, "c ID NIL", DIALOGUE_CLOSE, TOO_MANY);
}

static void test_error_limit_counts_every_kind(void **state)
{
    struct fx *f = *state;
    dialogue_server_init(&f->ds, HOST, 4);
    expect(f, "+", DIALOGUE_CONTINUE, BAD_TAG);
    /* Accepted commands neither count nor reset the count. */
    expect(f, "a NOOP", DIALOGUE_CONTINUE, "a OK NOOP completed\r\n");
    expect(f, "a NOOP x", DIALOGUE_CONTINUE, "a BAD NOOP takes no arguments\r\n");
    expect(f, "b CAPABILITY", DIALOGUE_CONTINUE,
           "* CAPABILITY " CAPS "\r\nb OK CAPABILITY completed\r\n");
    expect(f, "c AUTHENTICATE PLAIN", DIALOGUE_CONTINUE, "c" PRIVACY);
    assert_int_equal(f->ds.errors, 3);
    expect(f, "d SELECT INBOX", DIALOGUE_CLOSE, TOO_MANY);
}

static void test_error_limit_of_one(void **state)
{
    struct fx *f = *state;
    dialogue_server_init(&f->ds, HOST, 1);
    expect(f, "", DIALOGUE_CLOSE, TOO_MANY);
}

/* An over-long line may hide a literal announcement: the connection closes. */
static void test_long_line(void **state)
{
    struct fx *f = *state;
    assert_int_equal(imap()->on_long_line(&f->ds, &f->out), DIALOGUE_CLOSE);
    assert_out(&f->out, "* BYE " HOST " Line too long, closing connection\r\n");
}

static void test_session_replies(void **state)
{
    struct fx *f = *state;
    imap()->timeout_reply(&f->ds, &f->out);
    assert_out(&f->out, "* BYE " HOST " Autologout; idle for too long\r\n");

    f->out.len = 0;
    imap()->unavailable_reply("other.example.net", &f->out);
    assert_out(&f->out,
               "* BYE [UNAVAILABLE] other.example.net Service temporarily unavailable\r\n");

    /* After TLS: no CAPABILITY code, the pre-TLS list would be stale. */
    f->out.len = 0;
    imap()->fresh_greeting("other.example.net", &f->out);
    assert_out(&f->out, "* OK other.example.net sallyport ready\r\n");
}

/* ---- client side helpers ---- */

static void backend_init(struct fx *f, enum backend_mode mode)
{
    dialogue_backend_init(&f->db, imap(), mode, SELF);
}

/* Feeds a backend line; asserts the step and exactly what was queued. */
static void step_bytes(struct fx *f, const char *line, size_t len, enum backend_step want,
                       const char *queued)
{
    char in[256];
    f->out.len = 0;
    enum backend_step got = imap()->on_backend_line(&f->db, line, len, &f->out);
    if (got != want)
        fail_msg("\"%s\": step %d, expected %d (%s)", shown(line, len, in, sizeof in), (int)got,
                 (int)want, f->db.reason);
    assert_out(&f->out, queued);
}

static void step(struct fx *f, const char *line, enum backend_step expected, const char *queued)
{
    step_bytes(f, line, strlen(line), expected, queued);
}

/* Asserts the line fails the backend, queues nothing, and the reason says `why`. */
static void step_fails(struct fx *f, const char *line, const char *why)
{
    step(f, line, BACKEND_FAILED, "");
    if (!strstr(f->db.reason, why))
        fail_msg("reason \"%s\" does not mention \"%s\"", f->db.reason, why);
}

/* A new STARTTLS backend greets; asserts what that queues. */
static void greeted(struct fx *f, const char *greeting, const char *queued)
{
    backend_init(f, BACKEND_STARTTLS);
    step(f, greeting, BACKEND_NEED_MORE, queued);
}

/* A STARTTLS backend whose greeting had no CAPABILITY code (S0 queued). */
static void backend_asked(struct fx *f)
{
    greeted(f, "* OK backend ready", S0);
}

/* ---- client side ---- */

static void test_greeting_only(void **state)
{
    struct fx *f = *state;
    backend_init(f, BACKEND_GREETING_ONLY);
    step(f, "* OK [CAPABILITY IMAP4rev1 STARTTLS] hi", BACKEND_GREETED, "");
    /* The prelude is over: nothing more is read as greeting. */
    step_fails(f, "* OK again", "unexpected");

    backend_init(f, BACKEND_GREETING_ONLY);
    step(f, "* OK", BACKEND_GREETED, "");
}

static void test_greeting_with_starttls(void **state)
{
    struct fx *f = *state;
    greeted(f, "* OK [CAPABILITY IMAP4rev1 STARTTLS] hi", S1);
    assert_true(f->db.offers_starttls);
    step(f, "S1 OK go", BACKEND_TLS_READY, "");
    /* Anything after the go-ahead is response injection. */
    step_fails(f, "* OK injected", "unexpected");

    greeted(f, "* ok [capability imap4rev1 starttls logindisabled] hi", S1);
}

static void test_greeting_without_capability(void **state)
{
    struct fx *f = *state;
    backend_asked(f);
    step(f, "* CAPABILITY IMAP4rev1 STARTTLS", BACKEND_NEED_MORE, "");
    step(f, "S0 OK done", BACKEND_NEED_MORE, S1);
    step(f, "S1 OK go", BACKEND_TLS_READY, "");

    backend_asked(f);
    step(f, "* capability imap4rev1 starttls", BACKEND_NEED_MORE, "");
    step(f, "S0 OK done", BACKEND_NEED_MORE, S1);
}

static void test_capability_without_starttls(void **state)
{
    struct fx *f = *state;
    backend_asked(f);
    step(f, "* CAPABILITY IMAP4rev1 AUTH=PLAIN LOGINDISABLED", BACKEND_NEED_MORE, "");
    step_fails(f, "S0 OK done", "downgrade");
    assert_false(f->db.offers_starttls);
    /* No way on to TLS_READY afterwards. */
    step_fails(f, "S1 OK go", "unexpected");

    backend_asked(f);
    step_fails(f, "S0 OK no capability at all", "downgrade");
}

static void test_starttls_in_text_only(void **state)
{
    struct fx *f = *state;
    /* Only the capability code counts, not the human text after "]". */
    greeted(f, "* OK [CAPABILITY IMAP4rev1] STARTTLS ready", S0);
    greeted(f, "* OK STARTTLS", S0);
    greeted(f, "* OK [ALERT] STARTTLS", S0);
    greeted(f, "* OK [CAPABILITY IMAP4rev1 STARTTLS", S0);
    assert_false(f->db.offers_starttls);
    step(f, "* OK [CAPABILITY IMAP4rev1 STARTTLS] not a CAPABILITY response", BACKEND_NEED_MORE,
         "");
    step_fails(f, "S0 OK done", "downgrade");
}

static void test_starttls_lookalikes(void **state)
{
    struct fx *f = *state;
    const char *fakes[] = {"STARTTLSX",  "XSTARTTLS",  "STARTTL",
                           "X-STARTTLS", "STARTTLS=1", "STARTTLS\tX"};
    char line[128];
    for (size_t i = 0; i < sizeof fakes / sizeof fakes[0]; i++) {
        snprintf(line, sizeof line, "* OK [CAPABILITY IMAP4rev1 %s] hi", fakes[i]);
        greeted(f, line, S0);
        snprintf(line, sizeof line, "* CAPABILITY IMAP4rev1 %s", fakes[i]);
        step(f, line, BACKEND_NEED_MORE, "");
        step_fails(f, "S0 OK done", "downgrade");
    }
}

static void test_preauth_refused(void **state)
{
    struct fx *f = *state;
    backend_init(f, BACKEND_STARTTLS);
    step_fails(f, "* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] logged in", "PREAUTH");
    backend_init(f, BACKEND_GREETING_ONLY);
    step_fails(f, "* PREAUTH IMAP4rev1 server logged in as Smith", "PREAUTH");
    backend_init(f, BACKEND_GREETING_ONLY);
    step_fails(f, "* preauth hi", "PREAUTH");
}

static void test_greeting_refused(void **state)
{
    struct fx *f = *state;
    backend_init(f, BACKEND_STARTTLS);
    step_fails(f, "* BYE [UNAVAILABLE] busy", "refused");
    backend_init(f, BACKEND_GREETING_ONLY);
    step_fails(f, "* BYE busy", "refused");

    const char *malformed[] = {"hello", "", "+ go", "S1 OK", "*OK hi", "220 smtp.example ESMTP"};
    for (size_t i = 0; i < sizeof malformed / sizeof malformed[0]; i++) {
        backend_init(f, BACKEND_STARTTLS);
        step_fails(f, malformed[i], "malformed");
    }
}

static void test_capability_refused(void **state)
{
    struct fx *f = *state;
    const char *answers[] = {"S0 NO not now", "S0 BAD what", "S1 OK wrong tag", "+ go", "S0", "*x"};
    for (size_t i = 0; i < sizeof answers / sizeof answers[0]; i++) {
        backend_asked(f);
        step(f, "* CAPABILITY IMAP4rev1 STARTTLS", BACKEND_NEED_MORE, "");
        step_fails(f, answers[i], "refused CAPABILITY");
    }
}

static void test_starttls_refused(void **state)
{
    struct fx *f = *state;
    const char *answers[] = {"S1 NO TLS unavailable", "S1 BAD what", "S0 OK wrong tag", "+ go"};
    for (size_t i = 0; i < sizeof answers / sizeof answers[0]; i++) {
        greeted(f, "* OK [CAPABILITY IMAP4rev1 STARTTLS] hi", S1);
        step_fails(f, answers[i], "refused STARTTLS");
        step_fails(f, "S1 OK go", "unexpected");
    }
    greeted(f, "* OK [CAPABILITY IMAP4rev1 STARTTLS] hi", S1);
    step_fails(f, "* BYE shutting down", "closed");
}

static void test_untagged_tolerated(void **state)
{
    struct fx *f = *state;
    backend_asked(f);
    step(f, "* OK [ALERT] maintenance tonight", BACKEND_NEED_MORE, "");
    step(f, "* CAPABILITY IMAP4rev1 ID", BACKEND_NEED_MORE, "");
    step(f, "* CAPABILITY STARTTLS", BACKEND_NEED_MORE, "");
    step(f, "* ID NIL", BACKEND_NEED_MORE, "");
    step(f, "S0 OK done", BACKEND_NEED_MORE, S1);
    step(f, "* OK still here", BACKEND_NEED_MORE, "");
    step(f, "S1 OK Begin TLS negotiation now", BACKEND_TLS_READY, "");
}

static void test_too_many_lines(void **state)
{
    struct fx *f = *state;
    backend_asked(f);
    for (int i = 2; i <= 64; i++)
        step(f, "* CAPABILITY IMAP4rev1 STARTTLS", BACKEND_NEED_MORE, "");
    step_fails(f, "* CAPABILITY IMAP4rev1 STARTTLS", "too many");

    backend_asked(f);
    for (int i = 2; i <= 64; i++)
        step(f, "* OK noise", BACKEND_NEED_MORE, "");
    step_fails(f, "S0 OK done", "too many");
}

static void test_backend_literal(void **state)
{
    struct fx *f = *state;
    backend_init(f, BACKEND_STARTTLS);
    step_fails(f, "* OK [CAPABILITY IMAP4rev1 STARTTLS] {5}", "literal");
    backend_init(f, BACKEND_GREETING_ONLY);
    step_fails(f, "* OK hi {5+}", "literal");
    backend_asked(f);
    step_fails(f, "* CAPABILITY IMAP4rev1 STARTTLS {12}", "literal");
    backend_asked(f);
    step_fails(f, "* ID (\"name\" ~{3}", "literal");
    greeted(f, "* OK [CAPABILITY IMAP4rev1 STARTTLS] hi", S1);
    step_fails(f, "S1 OK {8}", "literal");
}

#define FX(t) cmocka_unit_test_setup_teardown(t, fx_setup, fx_teardown)

/* RFC 9051: "]" is an ASTRING-CHAR, so it may appear in a tag. */
static void test_tag_with_bracket(void **state)
{
    struct fx *f = *state;
    expect(f, "a]1 NOOP", DIALOGUE_CONTINUE, "a]1 OK NOOP completed\r\n");
}

static void test_logout_with_argument(void **state)
{
    struct fx *f = *state;
    expect(f, "c LOGOUT x", DIALOGUE_CONTINUE, "c BAD LOGOUT takes no arguments\r\n");
}

/* "S1 OKAY" is not "S1 OK": a go-ahead needs the exact status word. */
static void test_backend_okay_is_not_ok(void **state)
{
    (void)state;
    struct dialogue_backend db;
    struct buf *out = calloc(1, sizeof *out);
    assert_non_null(out);
    dialogue_backend_init(&db, imap(), BACKEND_STARTTLS, HOST);
    assert_int_equal(
        imap()->on_backend_line(&db, "* OK [CAPABILITY IMAP4rev1 STARTTLS] hi", 39, out),
        BACKEND_NEED_MORE);
    assert_int_equal(imap()->on_backend_line(&db, "S1 OKAY", 7, out), BACKEND_FAILED);
    dialogue_backend_init(&db, imap(), BACKEND_GREETING_ONLY, HOST);
    assert_int_equal(imap()->on_backend_line(&db, "* OKAY", 6, out), BACKEND_FAILED);
    free(out);
}

/* ---- client side: naming the client (xclient = yes) ---- */

static void identify(struct fx *f, enum backend_mode mode, const char *local)
{
    struct client_identity who = harness_client("203.0.113.7", 4711, local, 993);
    backend_init(f, mode);
    f->out.len = 0;
    dialogue_backend_identify(&f->db, imap(), &who, &f->out);
}

#define ID_FULL                                                                                    \
    "S2 ID (\"x-originating-ip\" \"203.0.113.7\" \"x-originating-port\" \"4711\" "                 \
    "\"x-connected-ip\" \"192.0.2.1\" \"x-connected-port\" \"993\")\r\n"

static void test_backend_id_after_greeting(void **state)
{
    struct fx *f = *state;
    identify(f, BACKEND_GREETING_ONLY, "192.0.2.1");
    assert_int_equal(f->out.len, 0);
    step(f, "* OK [CAPABILITY IMAP4rev1 ID] ready", BACKEND_NEED_MORE, ID_FULL);
    assert_true(f->db.greeted);
    step(f, "* ID (\"name\" \"Dovecot\")", BACKEND_NEED_MORE, "");
    step(f, "S2 OK ID completed.", BACKEND_GREETED, "");
}

static void test_backend_id_after_starttls(void **state)
{
    struct fx *f = *state;
    identify(f, BACKEND_IDENTIFY, "");
    assert_out(&f->out, "S2 ID (\"x-originating-ip\" \"203.0.113.7\" \"x-originating-port\" "
                        "\"4711\")\r\n");
    step(f, "* ID NIL", BACKEND_NEED_MORE, "");
    step(f, "S2 OK", BACKEND_GREETED, "");
}

static void test_backend_id_refused(void **state)
{
    struct fx *f = *state;
    identify(f, BACKEND_IDENTIFY, "192.0.2.1");
    step(f, "S2 NO not now", BACKEND_FAILED, "");
    assert_non_null(strstr(f->db.reason, "refused ID"));
    identify(f, BACKEND_IDENTIFY, "192.0.2.1");
    step(f, "* BYE going away", BACKEND_FAILED, "");
    identify(f, BACKEND_IDENTIFY, "192.0.2.1");
    step(f, "S2 OKAY", BACKEND_FAILED, "");
    identify(f, BACKEND_IDENTIFY, "192.0.2.1");
    step(f, "* ID {5}", BACKEND_FAILED, ""); /* no literal before the relay */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        FX(test_greeting),
        FX(test_capability),
        FX(test_noop),
        FX(test_logout),
        FX(test_starttls),
        FX(test_starttls_after_errors),
        FX(test_case_insensitive),
        FX(test_login_refused),
        FX(test_other_commands_refused),
        FX(test_near_misses_refused),
        FX(test_nul_bytes),
        FX(test_invalid_tags),
        FX(test_tag_echo),
        FX(test_literals_close),
        FX(test_not_literals),
        FX(test_error_limit),
        FX(test_error_limit_counts_every_kind),
        FX(test_error_limit_of_one),
        FX(test_long_line),
        FX(test_tag_with_bracket),
        FX(test_logout_with_argument),
        cmocka_unit_test(test_backend_okay_is_not_ok),
        FX(test_session_replies),
        FX(test_greeting_only),
        FX(test_greeting_with_starttls),
        FX(test_greeting_without_capability),
        FX(test_capability_without_starttls),
        FX(test_starttls_in_text_only),
        FX(test_starttls_lookalikes),
        FX(test_preauth_refused),
        FX(test_greeting_refused),
        FX(test_capability_refused),
        FX(test_starttls_refused),
        FX(test_untagged_tolerated),
        FX(test_too_many_lines),
        FX(test_backend_literal),
        cmocka_unit_test_setup_teardown(test_backend_id_after_greeting, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_backend_id_after_starttls, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_backend_id_refused, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests_name("dialogue (IMAP server and backend sides)", tests, NULL,
                                       NULL);
}
