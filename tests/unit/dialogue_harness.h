/* dialogue_harness — the fixture and byte-exact helpers shared by the unit
 * tests of the dialogue tables (SMTP, IMAP, POP3, ManageSieve). A test file
 * defines HARNESS_PROTO, HOST (the listener hostname) and includes this.
 * Not a module: everything is static inline, for cmocka test files only. */
#ifndef SALLYPORT_TEST_DIALOGUE_HARNESS_H
#define SALLYPORT_TEST_DIALOGUE_HARNESS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dialogue/dialogue.h"

#ifndef HARNESS_PROTO
#error "define HARNESS_PROTO before including dialogue_harness.h"
#endif

struct fx {
    struct dialogue_server ds;
    struct dialogue_backend db;
    struct buf out;
};

/* The dialogue under test: HARNESS_PROTO, defined before the #include. */
static inline const struct dialogue *harness_dialogue(void)
{
    const struct dialogue *d = dialogue_for(HARNESS_PROTO);
    assert_non_null(d);
    return d;
}

static inline int fx_setup(void **state)
{
    struct fx *f = test_calloc(1, sizeof *f);
    assert_non_null(f);
    /* A generous error budget; tests of the limit re-initialise. */
    dialogue_server_init(&f->ds, HOST, 100);
    *state = f;
    return 0;
}

static inline int fx_teardown(void **state)
{
    test_free(*state);
    return 0;
}

/* A client to name to a backend (local_addr "" when unknown). */
static inline struct client_identity harness_client(const char *addr, unsigned port,
                                                    const char *local_addr, unsigned local_port)
{
    struct client_identity who = {.port = port, .local_port = local_port};
    snprintf(who.addr, sizeof who.addr, "%s", addr);
    snprintf(who.local_addr, sizeof who.local_addr, "%s", local_addr);
    who.ipv6 = strchr(addr, ':') != NULL;
    return who;
}

/* Renders bytes for a failure message, escaping anything unprintable. */
static inline const char *shown(const void *bytes, size_t len, char *to, size_t size)
{
    const unsigned char *p = bytes;
    size_t n = 0;
    for (size_t i = 0; i < len && n + 5 < size; i++) {
        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\')
            to[n++] = (char)p[i];
        else
            n += (size_t)snprintf(to + n, size - n, "\\x%02x", p[i]);
    }
    to[n] = '\0';
    return to;
}

/* Fails, showing both, unless `out` holds exactly the bytes of `want`. */
static inline bool out_contains(const struct buf *out, const char *needle)
{
    char got[BUF_CAPACITY + 1];
    memcpy(got, out->data, out->len);
    got[out->len] = '\0';
    return strstr(got, needle) != NULL;
}

static inline void assert_out(const struct buf *out, const char *want)
{
    size_t n = strlen(want);
    if (out->len == n && memcmp(out->data, want, n) == 0)
        return;
    char got_s[2048], want_s[2048];
    fail_msg("queued \"%s\"\n  expected \"%s\"", shown(out->data, out->len, got_s, sizeof got_s),
             shown(want, n, want_s, sizeof want_s));
}

/* Feeds `len` bytes of `line` to on_line; asserts the action and the reply. */
static inline void expect_bytes(struct fx *f, const char *line, size_t len,
                                enum dialogue_action action, const char *reply)
{
    char in[256];
    f->out.len = 0;
    enum dialogue_action got = harness_dialogue()->on_line(&f->ds, line, len, &f->out);
    if (got != action)
        fail_msg("\"%s\": action %d, expected %d", shown(line, len, in, sizeof in), (int)got,
                 (int)action);
    assert_out(&f->out, reply);
}

static inline void expect(struct fx *f, const char *line, enum dialogue_action action,
                          const char *reply)
{
    expect_bytes(f, line, strlen(line), action, reply);
}

#endif
