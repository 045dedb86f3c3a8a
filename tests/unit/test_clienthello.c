/* Unit tests for clienthello: captured ClientHellos from real clients (see
 * tests/fixtures/clienthello/README), and synthetic ones built field by field
 * to reach each rule of the parser. Run from tests/unit (fixtures are loaded
 * through a relative path). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clienthello.h"

#define FIXTURE_DIR "../fixtures/clienthello/"
#define SNI         "mail.example.com"

/* ---- byte builder ---- */

/* Room for the largest input a test builds: an oversized hello in small records. */
#define BYTES_CAP (2 * CLIENTHELLO_MAX_BYTES)

struct bytes {
    size_t len;
    uint8_t data[BYTES_CAP];
};

/* Returns a zeroed, empty builder; free it with test_free(). */
static struct bytes *bytes_new(void)
{
    struct bytes *b = test_calloc(1, sizeof *b);
    assert_non_null(b);
    return b;
}

static void put(struct bytes *b, const void *p, size_t n)
{
    assert_true(n <= BYTES_CAP - b->len);
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void put_fill(struct bytes *b, uint8_t value, size_t n)
{
    assert_true(n <= BYTES_CAP - b->len);
    memset(b->data + b->len, value, n);
    b->len += n;
}

static void put_u8(struct bytes *b, unsigned v)
{
    uint8_t x[] = {(uint8_t)v};
    put(b, x, sizeof x);
}

static void put_u16(struct bytes *b, unsigned v)
{
    uint8_t x[] = {(uint8_t)(v >> 8), (uint8_t)v};
    put(b, x, sizeof x);
}

/* Opens a vector with a `width`-byte length prefix; returns where the prefix
 * is, for vec_end() to fill in once the contents are written. */
static size_t vec_begin(struct bytes *b, int width)
{
    size_t at = b->len;
    put_fill(b, 0, (size_t)width);
    return at;
}

static void vec_end(struct bytes *b, size_t at, int width)
{
    size_t n = b->len - at - (size_t)width;
    for (int i = width - 1; i >= 0; i--, n >>= 8)
        b->data[at + (size_t)i] = (uint8_t)n;
    assert_int_equal(n, 0);
}

/* ---- extensions ---- */

static void add_extension(struct bytes *exts, unsigned type, const void *body, size_t len)
{
    put_u16(exts, type);
    put_u16(exts, (unsigned)len);
    put(exts, body, len);
}

/* server_name with one host_name entry of `len` bytes. */
static void add_server_name(struct bytes *exts, const char *name, size_t len)
{
    put_u16(exts, 0);
    size_t ext = vec_begin(exts, 2);
    size_t list = vec_begin(exts, 2);
    put_u8(exts, 0);
    size_t entry = vec_begin(exts, 2);
    put(exts, name, len);
    vec_end(exts, entry, 2);
    vec_end(exts, list, 2);
    vec_end(exts, ext, 2);
}

static void add_alpn(struct bytes *exts, const char *const *names, size_t count)
{
    put_u16(exts, 16);
    size_t ext = vec_begin(exts, 2);
    size_t list = vec_begin(exts, 2);
    for (size_t i = 0; i < count; i++) {
        put_u8(exts, (unsigned)strlen(names[i]));
        put(exts, names[i], strlen(names[i]));
    }
    vec_end(exts, list, 2);
    vec_end(exts, ext, 2);
}

static void add_supported_versions(struct bytes *exts, const uint16_t *versions, size_t count)
{
    put_u16(exts, 43);
    size_t ext = vec_begin(exts, 2);
    size_t list = vec_begin(exts, 1);
    for (size_t i = 0; i < count; i++)
        put_u16(exts, versions[i]);
    vec_end(exts, list, 1);
    vec_end(exts, ext, 2);
}

/* key_share with a post-quantum hybrid share (group 0x11ec, X25519MLKEM768,
 * 1216 bytes) and an X25519 share, as current browsers send. */
static void add_pq_key_share(struct bytes *exts)
{
    put_u16(exts, 51);
    size_t ext = vec_begin(exts, 2);
    size_t list = vec_begin(exts, 2);
    put_u16(exts, 0x11ec);
    put_u16(exts, 1216);
    put_fill(exts, 0x5c, 1216);
    put_u16(exts, 0x001d);
    put_u16(exts, 32);
    put_fill(exts, 0x3a, 32);
    vec_end(exts, list, 2);
    vec_end(exts, ext, 2);
}

/* ---- handshake message and records ---- */

struct hello_spec {
    unsigned legacy_version;
    size_t session_id_len;
    size_t cipher_suites_len;
    size_t compression_methods_len;
    const struct bytes *extensions; /* NULL: the hello ends after compression_methods */
    size_t trailing_len;            /* bytes appended after everything, inside the message */
};

/* A plain TLS 1.2-style hello carrying `exts` (NULL: no extensions block). */
static struct hello_spec hello_defaults(const struct bytes *exts)
{
    return (struct hello_spec){.legacy_version = 0x0303,
                               .session_id_len = 32,
                               .cipher_suites_len = 4,
                               .compression_methods_len = 1,
                               .extensions = exts};
}

/* Appends a ClientHello handshake message (header included) built from `spec`. */
static void build_hello(struct bytes *msg, const struct hello_spec *spec)
{
    put_u8(msg, 1);
    size_t body = vec_begin(msg, 3);
    put_u16(msg, spec->legacy_version);
    put_fill(msg, 0x42, 32);
    put_u8(msg, (unsigned)spec->session_id_len);
    put_fill(msg, 0xaa, spec->session_id_len);
    put_u16(msg, (unsigned)spec->cipher_suites_len);
    for (size_t i = 0; i < spec->cipher_suites_len; i++)
        put_u8(msg, i % 2 == 0 ? 0x13 : 0x01 + (unsigned)(i / 2 % 3));
    put_u8(msg, (unsigned)spec->compression_methods_len);
    put_fill(msg, 0, spec->compression_methods_len);
    if (spec->extensions != NULL) {
        put_u16(msg, (unsigned)spec->extensions->len);
        put(msg, spec->extensions->data, spec->extensions->len);
    }
    put_fill(msg, 0xee, spec->trailing_len);
    vec_end(msg, body, 3);
}

/* Appends `msg` as handshake records of at most `fragment` bytes each. */
static void frame(struct bytes *out, const uint8_t *msg, size_t len, size_t fragment)
{
    for (size_t off = 0; off < len; off += fragment) {
        size_t n = len - off < fragment ? len - off : fragment;
        put_u8(out, 22);
        put_u16(out, 0x0301);
        put_u16(out, (unsigned)n);
        put(out, msg + off, n);
    }
}

/* Appends the handshake bytes carried by the records in `in` (trusted input). */
static void unframe(struct bytes *msg, const struct bytes *in)
{
    for (size_t off = 0; off + 5 <= in->len;) {
        size_t n = (size_t)in->data[off + 3] << 8 | in->data[off + 4];
        assert_int_equal(in->data[off], 22);
        assert_true(off + 5 + n <= in->len);
        put(msg, in->data + off + 5, n);
        off += 5 + n;
    }
}

/* Builds `spec` as one record and parses it. */
static enum clienthello_result parse_spec(const struct hello_spec *spec, struct clienthello *ch)
{
    struct bytes *msg = bytes_new(), *records = bytes_new();
    build_hello(msg, spec);
    frame(records, msg->data, msg->len, 16384);
    enum clienthello_result r = clienthello_parse(records->data, records->len, ch);
    test_free(msg);
    test_free(records);
    return r;
}

/* Builds a default hello carrying `exts` as one record and parses it. */
static enum clienthello_result parse_exts(const struct bytes *exts, struct clienthello *ch)
{
    struct hello_spec spec = hello_defaults(exts);
    return parse_spec(&spec, ch);
}

/* Parses data[0..len) from an allocation of exactly `len` bytes, so that a
 * sanitizer build sees any read past the end. */
static enum clienthello_result parse_exact(const uint8_t *data, size_t len, struct clienthello *ch)
{
    uint8_t *copy = test_malloc(len > 0 ? len : 1);
    if (len > 0)
        memcpy(copy, data, len);
    enum clienthello_result r = clienthello_parse(copy, len, ch);
    test_free(copy);
    return r;
}

/* Feeds every strict prefix of data[0..len), expecting NEED_MORE, then all of
 * it, expecting OK with record_bytes == len. */
static void expect_ok_byte_by_byte(const uint8_t *data, size_t len, struct clienthello *ch)
{
    for (size_t i = 0; i < len; i++) {
        enum clienthello_result r = parse_exact(data, i, ch);
        if (r != CLIENTHELLO_NEED_MORE)
            fail_msg("prefix of %zu/%zu bytes: %s", i, len, clienthello_result_name(r));
    }
    assert_int_equal(parse_exact(data, len, ch), CLIENTHELLO_OK);
    assert_int_equal(ch->record_bytes, len);
}

/* ---- captured ClientHellos ---- */

struct capture {
    const char *file;
    size_t alpn_count;
    const char *alpn[2];
    uint16_t max_version;
};

static const struct capture captures[] = {
    {"openssl-s_client.bin", 0, {NULL}, 0x0304},
    {"openssl-s_client-tls1_1.bin", 0, {NULL}, 0x0302},
    {"curl-https.bin", 2, {"h2", "http/1.1"}, 0x0304},
    {"curl-smtps.bin", 0, {NULL}, 0x0304},
    {"python-ssl.bin", 0, {NULL}, 0x0304},
};
#define NCAPTURES (sizeof captures / sizeof captures[0])

static void load_fixture(const char *file, struct bytes *b)
{
    char path[256];
    snprintf(path, sizeof path, "%s%s", FIXTURE_DIR, file);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        fail_msg("cannot open %s (run from tests/unit)", path);
    b->len = fread(b->data, 1, sizeof b->data, f);
    assert_int_equal(ferror(f), 0);
    assert_true(feof(f));
    fclose(f);
    assert_true(b->len > 0);
}

static void expect_capture(const struct capture *c, const struct clienthello *ch)
{
    assert_true(ch->has_sni);
    assert_string_equal(ch->sni, SNI);
    assert_int_equal(ch->max_version, c->max_version);
    assert_int_equal(ch->alpn_count, c->alpn_count);
    for (size_t i = 0; i < c->alpn_count; i++)
        assert_string_equal(ch->alpn[i], c->alpn[i]);
}

static void test_captures_whole(void **state)
{
    (void)state;
    struct bytes *b = bytes_new();
    for (size_t i = 0; i < NCAPTURES; i++) {
        struct clienthello ch;
        b->len = 0;
        load_fixture(captures[i].file, b);
        assert_int_equal(clienthello_parse(b->data, b->len, &ch), CLIENTHELLO_OK);
        assert_int_equal(ch.record_bytes, b->len);
        expect_capture(&captures[i], &ch);
    }
    test_free(b);
}

static void test_captures_byte_by_byte(void **state)
{
    (void)state;
    struct bytes *b = bytes_new();
    for (size_t i = 0; i < NCAPTURES; i++) {
        struct clienthello ch;
        b->len = 0;
        load_fixture(captures[i].file, b);
        expect_ok_byte_by_byte(b->data, b->len, &ch);
        expect_capture(&captures[i], &ch);
    }
    test_free(b);
}

/* Bytes after the ClientHello's records (here: a ChangeCipherSpec record and
 * early data, as a TLS 1.3 client may send) are not the parser's business. */
static void test_captures_with_trailing_bytes(void **state)
{
    (void)state;
    static const uint8_t after[] = {20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 3, 'a', 'b', 'c', 0};
    struct bytes *b = bytes_new();
    for (size_t i = 0; i < NCAPTURES; i++) {
        struct clienthello ch;
        b->len = 0;
        load_fixture(captures[i].file, b);
        size_t hello_len = b->len;
        put(b, after, sizeof after);
        assert_int_equal(clienthello_parse(b->data, b->len, &ch), CLIENTHELLO_OK);
        assert_int_equal(ch.record_bytes, hello_len);
        expect_capture(&captures[i], &ch);
    }
    test_free(b);
}

/* The handshake message of each capture, re-framed into records of 1, 7 and
 * 100 bytes, is reassembled whatever the TCP segmentation. */
static void test_captures_refragmented(void **state)
{
    (void)state;
    static const size_t fragments[] = {1, 7, 100};
    struct bytes *b = bytes_new(), *msg = bytes_new(), *records = bytes_new();
    for (size_t i = 0; i < NCAPTURES; i++) {
        b->len = msg->len = 0;
        load_fixture(captures[i].file, b);
        unframe(msg, b);
        for (size_t f = 0; f < sizeof fragments / sizeof fragments[0]; f++) {
            struct clienthello ch;
            records->len = 0;
            frame(records, msg->data, msg->len, fragments[f]);
            assert_true(records->len > b->len);
            expect_ok_byte_by_byte(records->data, records->len, &ch);
            expect_capture(&captures[i], &ch);
        }
    }
    test_free(b);
    test_free(msg);
    test_free(records);
}

/* ---- synthetic ClientHellos ---- */

static void test_pq_key_share_spanning_records(void **state)
{
    (void)state;
    static const uint16_t versions[] = {0x0304, 0x0303};
    struct bytes *exts = bytes_new(), *msg = bytes_new(), *records = bytes_new();
    add_server_name(exts, SNI, strlen(SNI));
    add_supported_versions(exts, versions, 2);
    add_pq_key_share(exts);
    struct hello_spec spec = hello_defaults(exts);
    build_hello(msg, &spec);
    frame(records, msg->data, msg->len, 512);
    assert_true(records->len > 2 * (5 + 512)); /* three records */

    struct clienthello ch;
    expect_ok_byte_by_byte(records->data, records->len, &ch);
    assert_string_equal(ch.sni, SNI);
    assert_int_equal(ch.max_version, 0x0304);
    test_free(exts);
    test_free(msg);
    test_free(records);
}

static void test_valid_prefixes_need_more(void **state)
{
    (void)state;
    static const uint8_t prefix[] = {22, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3};
    struct clienthello ch;
    assert_int_equal(clienthello_parse(NULL, 0, &ch), CLIENTHELLO_NEED_MORE);
    for (size_t i = 1; i <= sizeof prefix; i++)
        assert_int_equal(parse_exact(prefix, i, &ch), CLIENTHELLO_NEED_MORE);
}

static void test_no_sni(void **state)
{
    (void)state;
    static const char *const alpn[] = {"imap"};
    struct bytes *exts = bytes_new();
    add_alpn(exts, alpn, 1);
    struct clienthello ch;
    assert_int_equal(parse_exts(exts, &ch), CLIENTHELLO_OK);
    assert_false(ch.has_sni);
    assert_string_equal(ch.sni, "");
    assert_int_equal(ch.alpn_count, 1);
    test_free(exts);
}

static void test_sni_lower_cased(void **state)
{
    (void)state;
    struct bytes *exts = bytes_new();
    add_server_name(exts, "Mail.EXAMPLE.Com", 16);
    struct clienthello ch;
    assert_int_equal(parse_exts(exts, &ch), CLIENTHELLO_OK);
    assert_true(ch.has_sni);
    assert_string_equal(ch.sni, SNI);
    test_free(exts);
}

/* Names that would smuggle bytes into logs or backends fail the hello. */
static void test_sni_forbidden_bytes_malformed(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        size_t len;
    } bad[] = {
        {"mail.example.com\r\n", 18}, {"mail.example.com\r\nRCPT", 22},
        {"mail\0example.com", 16},    {"mail example.com", 16},
        {"mail/example.com", 16},     {"mail.example.com:465", 20},
        {"caf\xc3\xa9.example", 13},  {"mail.example.com\x7f", 17},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct bytes *exts = bytes_new();
        struct clienthello ch;
        add_server_name(exts, bad[i].name, bad[i].len);
        if (parse_exts(exts, &ch) != CLIENTHELLO_MALFORMED)
            fail_msg("SNI #%zu accepted", i);
        assert_false(ch.has_sni);
        test_free(exts);
    }
}

static void test_sni_shape(void **state)
{
    (void)state;
    char long_name[257];
    memset(long_name, 'a', sizeof long_name);
    for (size_t i = 63; i < sizeof long_name; i += 64)
        long_name[i] = '.';
    static const struct {
        const char *name; /* NULL: long_name */
        size_t len;
        enum clienthello_result want;
    } cases[] = {
        {"", 0, CLIENTHELLO_MALFORMED},
        {".example.com", 12, CLIENTHELLO_MALFORMED},
        {".", 1, CLIENTHELLO_MALFORMED},
        {"mail..example.com", 17, CLIENTHELLO_MALFORMED},
        {NULL, 256, CLIENTHELLO_MALFORMED},
        {NULL, 255, CLIENTHELLO_OK},
        {"_submission._tcp.mx-1.example.com", 33, CLIENTHELLO_OK},
        {"mail.example.com.", 17, CLIENTHELLO_OK}, /* kept as sent */
        {"localhost", 9, CLIENTHELLO_OK},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct bytes *exts = bytes_new();
        struct clienthello ch;
        const char *name = cases[i].name != NULL ? cases[i].name : long_name;
        add_server_name(exts, name, cases[i].len);
        enum clienthello_result r = parse_exts(exts, &ch);
        if (r != cases[i].want)
            fail_msg("case #%zu: %s", i, clienthello_result_name(r));
        if (r == CLIENTHELLO_OK) {
            assert_int_equal(strlen(ch.sni), cases[i].len);
            assert_memory_equal(ch.sni, name, cases[i].len);
        }
        test_free(exts);
    }
}

static void test_two_server_name_extensions_malformed(void **state)
{
    (void)state;
    struct bytes *exts = bytes_new();
    struct clienthello ch;
    add_server_name(exts, SNI, strlen(SNI));
    assert_int_equal(parse_exts(exts, &ch), CLIENTHELLO_OK);
    add_server_name(exts, "evil.example.net", 16);
    assert_int_equal(parse_exts(exts, &ch), CLIENTHELLO_MALFORMED);
    test_free(exts);
}

/* Any extension type repeated fails the hello, not only server_name. */
static void test_duplicate_extension_malformed(void **state)
{
    (void)state;
    struct bytes *exts = bytes_new();
    struct clienthello ch;
    add_extension(exts, 0xff01, "\0", 1);
    add_server_name(exts, SNI, strlen(SNI));
    assert_int_equal(parse_exts(exts, &ch), CLIENTHELLO_OK);
    add_extension(exts, 0xff01, "\0", 1);
    assert_int_equal(parse_exts(exts, &ch), CLIENTHELLO_MALFORMED);
    test_free(exts);
}

/* Inside one server_name list: entries of unknown type are skipped, the
 * host_name is taken, and a second host_name is refused (RFC 6066 §3). */
static void test_server_name_list_entries(void **state)
{
    (void)state;
    static const uint8_t other_then_host[] = {
        0,   24,  7,   0,   2,   'x', 'y', 0,   0,   16,  'm', 'a', 'i',
        'l', '.', 'e', 'x', 'a', 'm', 'p', 'l', 'e', '.', 'c', 'o', 'm',
    };
    static const uint8_t two_hosts[] = {
        0, 14, 0, 0, 4, 'a', '.', 'c', 'o', 0, 0, 4, 'b', '.', 'c', 'o',
    };
    static const uint8_t empty_list[] = {0, 0};
    static const uint8_t list_overruns[] = {0, 9, 0, 0, 4, 'a', '.', 'c', 'o'};
    static const uint8_t list_short[] = {0, 6, 0, 0, 4, 'a', '.', 'c', 'o'};
    static const uint8_t after_list[] = {0, 7, 0, 0, 4, 'a', '.', 'c', 'o', 0};
    static const struct {
        const uint8_t *body;
        size_t len;
        enum clienthello_result want;
    } cases[] = {
        {other_then_host, sizeof other_then_host, CLIENTHELLO_OK},
        {two_hosts, sizeof two_hosts, CLIENTHELLO_MALFORMED},
        {empty_list, sizeof empty_list, CLIENTHELLO_MALFORMED},
        {list_overruns, sizeof list_overruns, CLIENTHELLO_MALFORMED},
        {list_short, sizeof list_short, CLIENTHELLO_MALFORMED},
        {after_list, sizeof after_list, CLIENTHELLO_MALFORMED},
        {NULL, 0, CLIENTHELLO_MALFORMED},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct bytes *exts = bytes_new();
        struct clienthello ch;
        add_extension(exts, 0, cases[i].body, cases[i].len);
        enum clienthello_result r = parse_exts(exts, &ch);
        if (r != cases[i].want)
            fail_msg("case #%zu: %s", i, clienthello_result_name(r));
        test_free(exts);
    }
    struct bytes *exts = bytes_new();
    struct clienthello ch;
    add_extension(exts, 0, other_then_host, sizeof other_then_host);
    assert_int_equal(parse_exts(exts, &ch), CLIENTHELLO_OK);
    assert_string_equal(ch.sni, SNI);
    test_free(exts);
}

/* ---- record layer ---- */

static void test_not_tls(void **state)
{
    (void)state;
    static const uint8_t ehlo[] = "EHLO client.example.org\r\n";
    static const uint8_t sslv2_hello[] = {0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15};
    static const uint8_t application_data[] = {23, 3, 3, 0, 5, 1, 2, 3, 4, 5};
    struct clienthello ch;
    assert_int_equal(parse_exact(ehlo, sizeof ehlo - 1, &ch), CLIENTHELLO_NOT_TLS);
    assert_int_equal(parse_exact(ehlo, 1, &ch), CLIENTHELLO_NOT_TLS);
    assert_int_equal(parse_exact(sslv2_hello, sizeof sslv2_hello, &ch), CLIENTHELLO_NOT_TLS);
    assert_int_equal(parse_exact(application_data, sizeof application_data, &ch),
                     CLIENTHELLO_NOT_TLS);
}

/* Record version: major 3, minor 1..4, refused as soon as the byte arrives. */
static void test_record_version(void **state)
{
    (void)state;
    static const uint8_t bad_major[] = {22, 2};
    static const uint8_t ssl3[] = {22, 3, 0};
    static const uint8_t minor5[] = {22, 3, 5};
    struct clienthello ch;
    assert_int_equal(parse_exact(bad_major, sizeof bad_major, &ch), CLIENTHELLO_MALFORMED);
    assert_int_equal(parse_exact(ssl3, sizeof ssl3, &ch), CLIENTHELLO_MALFORMED);
    assert_int_equal(parse_exact(minor5, sizeof minor5, &ch), CLIENTHELLO_MALFORMED);

    struct bytes *b = bytes_new();
    load_fixture("openssl-s_client.bin", b);
    for (uint8_t minor = 1; minor <= 4; minor++) {
        b->data[2] = minor;
        assert_int_equal(clienthello_parse(b->data, b->len, &ch), CLIENTHELLO_OK);
    }
    test_free(b);
}

static void test_record_length_bounds(void **state)
{
    (void)state;
    static const uint8_t zero[] = {22, 3, 1, 0, 0, 1, 0, 0, 0};
    static const uint8_t over[] = {22, 3, 1, 0x40, 0x01};
    static const uint8_t max_fragment[] = {22, 3, 1, 0x40, 0x00};
    struct clienthello ch;
    assert_int_equal(parse_exact(zero, 5, &ch), CLIENTHELLO_MALFORMED);
    assert_int_equal(parse_exact(zero, sizeof zero, &ch), CLIENTHELLO_MALFORMED);
    assert_int_equal(parse_exact(over, sizeof over, &ch), CLIENTHELLO_MALFORMED);
    /* a legal record, but 5 + 16384 bytes is more than sallyport buffers */
    assert_int_equal(parse_exact(max_fragment, sizeof max_fragment, &ch), CLIENTHELLO_TOO_LARGE);
}

static void test_handshake_type_2_malformed(void **state)
{
    (void)state;
    struct bytes *b = bytes_new();
    struct clienthello ch;
    load_fixture("openssl-s_client.bin", b);
    b->data[5] = 2; /* ServerHello */
    assert_int_equal(parse_exact(b->data, 6, &ch), CLIENTHELLO_MALFORMED);
    assert_int_equal(clienthello_parse(b->data, b->len, &ch), CLIENTHELLO_MALFORMED);
    test_free(b);
}

/* Handshake bytes after the ClientHello inside its last record. */
static void test_bytes_after_hello_in_its_record_malformed(void **state)
{
    (void)state;
    struct bytes *msg = bytes_new(), *records = bytes_new();
    struct hello_spec spec = hello_defaults(NULL);
    build_hello(msg, &spec);
    put_fill(msg, 0, 4); /* an empty HelloRequest-shaped message */
    frame(records, msg->data, msg->len, 16384);
    struct clienthello ch;
    assert_int_equal(clienthello_parse(records->data, records->len, &ch), CLIENTHELLO_MALFORMED);
    /* also in a later record, the hello's length being known from an earlier one */
    records->len = 0;
    frame(records, msg->data, msg->len, 100);
    assert_int_equal(clienthello_parse(records->data, records->len, &ch), CLIENTHELLO_MALFORMED);
    test_free(msg);
    test_free(records);
}

static void test_other_record_between_fragments_malformed(void **state)
{
    (void)state;
    static const uint8_t alert[] = {21, 3, 3, 0, 2, 1, 0};
    static const unsigned types[] = {20, 21, 23, 0};
    struct bytes *b = bytes_new(), *msg = bytes_new(), *records = bytes_new();
    load_fixture("curl-https.bin", b);
    unframe(msg, b);
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        struct clienthello ch;
        records->len = 0;
        frame(records, msg->data, 100, 100);
        put(records, alert, sizeof alert);
        records->data[100 + 5] = (uint8_t)types[i];
        frame(records, msg->data + 100, msg->len - 100, 100);
        assert_int_equal(parse_exact(records->data, 106, &ch), CLIENTHELLO_MALFORMED);
        assert_int_equal(clienthello_parse(records->data, records->len, &ch),
                         CLIENTHELLO_MALFORMED);
    }
    test_free(b);
    test_free(msg);
    test_free(records);
}

/* ---- sizes ---- */

static void test_handshake_length_over_max_too_large(void **state)
{
    (void)state;
    static const uint8_t huge[] = {22, 3, 1, 0, 200, 1, 0xff, 0xff, 0xff, 3, 3};
    static const uint8_t over[] = {22, 3, 1, 0, 200, 1, 0, 0x40, 0x01, 3, 3};
    struct clienthello ch;
    assert_int_equal(parse_exact(huge, sizeof huge, &ch), CLIENTHELLO_TOO_LARGE);
    assert_int_equal(parse_exact(over, sizeof over, &ch), CLIENTHELLO_TOO_LARGE);
}

/* Builds a hello padded (extension 21) so that its records, `fragment` bytes
 * each, take exactly `record_bytes` bytes. */
static void build_sized(struct bytes *records, size_t record_bytes, size_t fragment)
{
    struct bytes *exts = bytes_new(), *msg = bytes_new();
    struct hello_spec spec = hello_defaults(exts);
    add_server_name(exts, SNI, strlen(SNI));
    build_hello(msg, &spec);
    size_t pad = 0;
    for (;;) { /* find the padding whose framing is exactly record_bytes */
        size_t msg_len = msg->len + 4 + pad;
        size_t framed = msg_len + 5 * ((msg_len + fragment - 1) / fragment);
        if (framed >= record_bytes) {
            assert_int_equal(framed, record_bytes);
            break;
        }
        pad++;
    }
    msg->len = 0;
    put_u16(exts, 21);
    put_u16(exts, (unsigned)pad);
    put_fill(exts, 0, pad);
    build_hello(msg, &spec);
    records->len = 0;
    frame(records, msg->data, msg->len, fragment);
    assert_int_equal(records->len, record_bytes);
    test_free(exts);
    test_free(msg);
}

/* The limit is on the record bytes a caller must buffer: exactly
 * CLIENTHELLO_MAX_BYTES is fine, one more is too large, and a message that fits
 * in one record becomes too large when split into smaller ones (more headers).
 * TOO_LARGE comes no later than when CLIENTHELLO_MAX_BYTES bytes have arrived,
 * so a caller with a full buffer never gets NEED_MORE. */
static void test_record_bytes_limit(void **state)
{
    (void)state;
    static const size_t fragments[] = {16384, 1000, 128};
    struct bytes *records = bytes_new(), *msg = bytes_new();
    struct clienthello ch;

    for (size_t i = 0; i < sizeof fragments / sizeof fragments[0]; i++) {
        build_sized(records, CLIENTHELLO_MAX_BYTES, fragments[i]);
        assert_int_equal(clienthello_parse(records->data, records->len, &ch), CLIENTHELLO_OK);
        assert_int_equal(ch.record_bytes, CLIENTHELLO_MAX_BYTES);
        assert_string_equal(ch.sni, SNI);

        build_sized(records, CLIENTHELLO_MAX_BYTES + 1, fragments[i]);
        assert_int_equal(clienthello_parse(records->data, records->len, &ch),
                         CLIENTHELLO_TOO_LARGE);
        assert_int_equal(clienthello_parse(records->data, CLIENTHELLO_MAX_BYTES, &ch),
                         CLIENTHELLO_TOO_LARGE);
    }

    build_sized(records, CLIENTHELLO_MAX_BYTES, 16384);
    unframe(msg, records);
    records->len = 0;
    frame(records, msg->data, msg->len, 1000);
    assert_int_equal(clienthello_parse(records->data, records->len, &ch), CLIENTHELLO_TOO_LARGE);
    assert_int_equal(clienthello_parse(records->data, 1005, &ch), CLIENTHELLO_TOO_LARGE);
    test_free(records);
    test_free(msg);
}

/* ---- ClientHello body ---- */

static void expect_spec(const struct hello_spec *spec, enum clienthello_result want,
                        const char *what)
{
    struct clienthello ch;
    enum clienthello_result r = parse_spec(spec, &ch);
    if (r != want)
        fail_msg("%s: %s, want %s", what, clienthello_result_name(r),
                 clienthello_result_name(want));
}

static void test_hello_fields(void **state)
{
    (void)state;
    struct hello_spec s = hello_defaults(NULL);
    expect_spec(&s, CLIENTHELLO_OK, "defaults");
    s.session_id_len = 0;
    expect_spec(&s, CLIENTHELLO_OK, "no session_id");
    s.session_id_len = 33;
    expect_spec(&s, CLIENTHELLO_MALFORMED, "session_id of 33 bytes");

    s = hello_defaults(NULL);
    s.cipher_suites_len = 2;
    expect_spec(&s, CLIENTHELLO_OK, "one cipher suite");
    s.cipher_suites_len = 5;
    expect_spec(&s, CLIENTHELLO_MALFORMED, "odd cipher_suites length");
    s.cipher_suites_len = 0;
    expect_spec(&s, CLIENTHELLO_MALFORMED, "no cipher suites");

    s = hello_defaults(NULL);
    s.compression_methods_len = 0;
    expect_spec(&s, CLIENTHELLO_MALFORMED, "no compression methods");

    s = hello_defaults(NULL);
    s.legacy_version = 0x0203;
    expect_spec(&s, CLIENTHELLO_MALFORMED, "legacy_version major 2");

    s = hello_defaults(NULL);
    s.trailing_len = 1;
    expect_spec(&s, CLIENTHELLO_MALFORMED, "one byte where the extensions length goes");
}

/* A hello cut short inside a field is MALFORMED once complete, not NEED_MORE:
 * the message length says it is complete. */
static void test_truncated_hello_malformed(void **state)
{
    (void)state;
    struct bytes *msg = bytes_new(), *cut = bytes_new(), *records = bytes_new();
    struct hello_spec spec = hello_defaults(NULL);
    build_hello(msg, &spec);
    for (size_t len = 4; len < msg->len; len++) {
        struct clienthello ch;
        cut->len = 0;
        put(cut, msg->data, len);
        cut->data[1] = (uint8_t)((len - 4) >> 16);
        cut->data[2] = (uint8_t)((len - 4) >> 8);
        cut->data[3] = (uint8_t)(len - 4);
        records->len = 0;
        frame(records, cut->data, cut->len, 16384);
        enum clienthello_result r = clienthello_parse(records->data, records->len, &ch);
        if (r != CLIENTHELLO_MALFORMED)
            fail_msg("hello cut to %zu bytes: %s", len, clienthello_result_name(r));
    }
    test_free(msg);
    test_free(cut);
    test_free(records);
}

static void test_extension_lengths(void **state)
{
    (void)state;
    struct bytes *exts = bytes_new();
    struct clienthello ch;
    struct hello_spec spec = hello_defaults(exts);

    add_server_name(exts, SNI, strlen(SNI));
    assert_int_equal(parse_spec(&spec, &ch), CLIENTHELLO_OK);
    exts->data[3] += 1; /* server_name's length runs past the block */
    assert_int_equal(parse_spec(&spec, &ch), CLIENTHELLO_MALFORMED);
    exts->data[3] -= 1;

    put_u16(exts, 0xff00);
    put_u16(exts, 100); /* an extension overrunning the message */
    put_fill(exts, 0, 10);
    assert_int_equal(parse_spec(&spec, &ch), CLIENTHELLO_MALFORMED);

    exts->len -= 14;
    put_u16(exts, 0xff00); /* half an extension header */
    assert_int_equal(parse_spec(&spec, &ch), CLIENTHELLO_MALFORMED);

    exts->len -= 2;
    spec.trailing_len = 3; /* bytes after the extensions block */
    assert_int_equal(parse_spec(&spec, &ch), CLIENTHELLO_MALFORMED);
    spec.trailing_len = 0;
    assert_int_equal(parse_spec(&spec, &ch), CLIENTHELLO_OK);

    /* an extensions block longer than what is left of the message */
    struct bytes *msg = bytes_new(), *records = bytes_new();
    build_hello(msg, &spec);
    size_t at = msg->len - exts->len - 2;
    msg->data[at + 1] += 1;
    frame(records, msg->data, msg->len, 16384);
    assert_int_equal(clienthello_parse(records->data, records->len, &ch), CLIENTHELLO_MALFORMED);
    test_free(exts);
    test_free(msg);
    test_free(records);
}

/* ---- ALPN ---- */

static void test_alpn_in_order(void **state)
{
    (void)state;
    static const char *const names[] = {"imap", "pop3", "smtp", "h2"};
    struct bytes *exts = bytes_new();
    struct clienthello ch;
    add_alpn(exts, names, 4);
    assert_int_equal(parse_exts(exts, &ch), CLIENTHELLO_OK);
    assert_int_equal(ch.alpn_count, 4);
    for (size_t i = 0; i < 4; i++)
        assert_string_equal(ch.alpn[i], names[i]);
    test_free(exts);
}

/* Names that do not fit struct clienthello or are not printable are skipped;
 * only the first CLIENTHELLO_MAX_ALPN names are kept. */
static void test_alpn_skips_unkeepable_names(void **state)
{
    (void)state;
    char n63[64], n64[65];
    memset(n63, 'x', 63);
    n63[63] = '\0';
    memset(n64, 'y', 64);
    n64[64] = '\0';
    const char *const names[] = {n64, "a b", "ctl\x01", "hi\x80", n63, "imap"};
    struct bytes *exts = bytes_new();
    struct clienthello ch;
    add_alpn(exts, names, 6);
    assert_int_equal(parse_exts(exts, &ch), CLIENTHELLO_OK);
    assert_int_equal(ch.alpn_count, 2);
    assert_string_equal(ch.alpn[0], n63);
    assert_string_equal(ch.alpn[1], "imap");

    char many[CLIENTHELLO_MAX_ALPN + 4][8];
    const char *many_names[CLIENTHELLO_MAX_ALPN + 4];
    for (size_t i = 0; i < CLIENTHELLO_MAX_ALPN + 4; i++) {
        snprintf(many[i], sizeof many[i], "p%zu", i);
        many_names[i] = many[i];
    }
    exts->len = 0;
    add_alpn(exts, many_names, CLIENTHELLO_MAX_ALPN + 4);
    assert_int_equal(parse_exts(exts, &ch), CLIENTHELLO_OK);
    assert_int_equal(ch.alpn_count, CLIENTHELLO_MAX_ALPN);
    for (size_t i = 0; i < CLIENTHELLO_MAX_ALPN; i++)
        assert_string_equal(ch.alpn[i], many[i]);
    test_free(exts);
}

static void test_alpn_malformed(void **state)
{
    (void)state;
    static const uint8_t empty_list[] = {0, 0};
    static const uint8_t empty_name[] = {0, 6, 4, 'i', 'm', 'a', 'p', 0};
    static const uint8_t name_overruns[] = {0, 5, 5, 'i', 'm', 'a', 'p'};
    static const uint8_t list_short[] = {0, 4, 4, 'i', 'm', 'a', 'p'};
    static const uint8_t after_list[] = {0, 5, 4, 'i', 'm', 'a', 'p', 0};
    static const uint8_t good[] = {0, 5, 4, 'i', 'm', 'a', 'p'};
    static const struct {
        const uint8_t *body;
        size_t len;
        enum clienthello_result want;
    } cases[] = {
        {good, sizeof good, CLIENTHELLO_OK},
        {empty_list, sizeof empty_list, CLIENTHELLO_MALFORMED},
        {empty_name, sizeof empty_name, CLIENTHELLO_MALFORMED},
        {name_overruns, sizeof name_overruns, CLIENTHELLO_MALFORMED},
        {list_short, sizeof list_short, CLIENTHELLO_MALFORMED},
        {after_list, sizeof after_list, CLIENTHELLO_MALFORMED},
        {NULL, 0, CLIENTHELLO_MALFORMED},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct bytes *exts = bytes_new();
        struct clienthello ch;
        add_extension(exts, 16, cases[i].body, cases[i].len);
        enum clienthello_result r = parse_exts(exts, &ch);
        if (r != cases[i].want)
            fail_msg("case #%zu: %s", i, clienthello_result_name(r));
        test_free(exts);
    }
}

/* ---- versions ---- */

static void test_supported_versions_grease(void **state)
{
    (void)state;
    static const uint16_t versions[] = {0xfafa, 0x0304, 0x0303, 0x1a1a};
    struct bytes *exts = bytes_new();
    struct clienthello ch;
    add_supported_versions(exts, versions, 4);
    assert_int_equal(parse_exts(exts, &ch), CLIENTHELLO_OK);
    assert_int_equal(ch.max_version, 0x0304);
    test_free(exts);
}

static void test_supported_versions_only_grease_uses_legacy(void **state)
{
    (void)state;
    static const uint16_t versions[] = {0x3a3a};
    struct bytes *exts = bytes_new();
    struct clienthello ch;
    add_supported_versions(exts, versions, 1);
    assert_int_equal(parse_exts(exts, &ch), CLIENTHELLO_OK);
    assert_int_equal(ch.max_version, 0x0303);
    test_free(exts);
}

static void test_supported_versions_malformed(void **state)
{
    (void)state;
    static const uint8_t odd[] = {3, 3, 4, 3};
    static const uint8_t empty[] = {0};
    static const uint8_t list_short[] = {2, 3, 4, 3, 3};
    static const uint8_t good[] = {4, 3, 4, 3, 3};
    static const struct {
        const uint8_t *body;
        size_t len;
        enum clienthello_result want;
    } cases[] = {
        {good, sizeof good, CLIENTHELLO_OK},
        {odd, sizeof odd, CLIENTHELLO_MALFORMED},
        {empty, sizeof empty, CLIENTHELLO_MALFORMED},
        {list_short, sizeof list_short, CLIENTHELLO_MALFORMED},
        {NULL, 0, CLIENTHELLO_MALFORMED},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct bytes *exts = bytes_new();
        struct clienthello ch;
        add_extension(exts, 43, cases[i].body, cases[i].len);
        enum clienthello_result r = parse_exts(exts, &ch);
        if (r != cases[i].want)
            fail_msg("case #%zu: %s", i, clienthello_result_name(r));
        test_free(exts);
    }
}

/* A TLS 1.1-only client: legacy_version 0x0302, no supported_versions. */
static void test_tls11_only_hello(void **state)
{
    (void)state;
    struct bytes *exts = bytes_new();
    struct clienthello ch;
    add_server_name(exts, SNI, strlen(SNI));
    struct hello_spec spec = hello_defaults(exts);
    spec.legacy_version = 0x0302;
    assert_int_equal(parse_spec(&spec, &ch), CLIENTHELLO_OK);
    assert_int_equal(ch.max_version, 0x0302);
    struct hello_spec bare = hello_defaults(NULL);
    bare.legacy_version = 0x0301;
    assert_int_equal(parse_spec(&bare, &ch), CLIENTHELLO_OK);
    assert_int_equal(ch.max_version, 0x0301);
    test_free(exts);
}

static void test_result_names(void **state)
{
    (void)state;
    assert_string_equal(clienthello_result_name(CLIENTHELLO_OK), "ok");
    assert_string_equal(clienthello_result_name(CLIENTHELLO_NEED_MORE), "need more");
    assert_string_equal(clienthello_result_name(CLIENTHELLO_NOT_TLS), "not TLS");
    assert_string_equal(clienthello_result_name(CLIENTHELLO_MALFORMED), "malformed");
    assert_string_equal(clienthello_result_name(CLIENTHELLO_TOO_LARGE), "too large");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_captures_whole),
        cmocka_unit_test(test_captures_byte_by_byte),
        cmocka_unit_test(test_captures_with_trailing_bytes),
        cmocka_unit_test(test_captures_refragmented),
        cmocka_unit_test(test_pq_key_share_spanning_records),
        cmocka_unit_test(test_valid_prefixes_need_more),
        cmocka_unit_test(test_no_sni),
        cmocka_unit_test(test_sni_lower_cased),
        cmocka_unit_test(test_sni_forbidden_bytes_malformed),
        cmocka_unit_test(test_sni_shape),
        cmocka_unit_test(test_two_server_name_extensions_malformed),
        cmocka_unit_test(test_duplicate_extension_malformed),
        cmocka_unit_test(test_server_name_list_entries),
        cmocka_unit_test(test_not_tls),
        cmocka_unit_test(test_record_version),
        cmocka_unit_test(test_record_length_bounds),
        cmocka_unit_test(test_handshake_type_2_malformed),
        cmocka_unit_test(test_bytes_after_hello_in_its_record_malformed),
        cmocka_unit_test(test_other_record_between_fragments_malformed),
        cmocka_unit_test(test_handshake_length_over_max_too_large),
        cmocka_unit_test(test_record_bytes_limit),
        cmocka_unit_test(test_hello_fields),
        cmocka_unit_test(test_truncated_hello_malformed),
        cmocka_unit_test(test_extension_lengths),
        cmocka_unit_test(test_alpn_in_order),
        cmocka_unit_test(test_alpn_skips_unkeepable_names),
        cmocka_unit_test(test_alpn_malformed),
        cmocka_unit_test(test_supported_versions_grease),
        cmocka_unit_test(test_supported_versions_only_grease_uses_legacy),
        cmocka_unit_test(test_supported_versions_malformed),
        cmocka_unit_test(test_tls11_only_hello),
        cmocka_unit_test(test_result_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
