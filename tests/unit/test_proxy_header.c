/* proxy_header: the PROXY protocol v1 and v2, parsed from hostile bytes and
 * built for backends. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "proxy_header.h"

static const uint8_t SIG[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

static enum proxy_parse_result parse(const void *data, size_t len, struct proxy_header *h)
{
    const char *why = NULL;
    enum proxy_parse_result r = proxy_header_parse(data, len, h, &why);
    if (r == PROXY_PARSE_BAD)
        assert_non_null(why);
    return r;
}

static void assert_addr(const struct sockaddr_storage *ss, const char *text, unsigned port)
{
    char buf[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf);
        assert_int_equal(ntohs(in->sin_port), port);
    } else {
        assert_int_equal(ss->ss_family, AF_INET6);
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof buf);
        assert_int_equal(ntohs(in6->sin6_port), port);
    }
    assert_string_equal(buf, text);
}

/* Every strict prefix of a valid header asks for more. */
static void assert_prefixes_need_more(const uint8_t *data, size_t len)
{
    struct proxy_header h;
    for (size_t i = 0; i < len; i++)
        assert_int_equal(parse(data, i, &h), PROXY_PARSE_NEED_MORE);
}

static void test_v1_tcp4_and_tcp6(void **state)
{
    (void)state;
    struct proxy_header h;
    const char *v4 = "PROXY TCP4 192.0.2.7 198.51.100.1 54321 465\r\nEHLO x\r\n";
    assert_int_equal(parse(v4, strlen(v4), &h), PROXY_PARSE_OK);
    assert_int_equal(h.version, 1);
    assert_true(h.has_addresses);
    assert_int_equal(h.length, strlen(v4) - strlen("EHLO x\r\n")); /* not one byte more */
    assert_addr(&h.src, "192.0.2.7", 54321);
    assert_addr(&h.dst, "198.51.100.1", 465);
    assert_prefixes_need_more((const uint8_t *)v4, h.length);

    const char *v6 = "PROXY TCP6 2001:db8::1 2001:db8::2 0 65535\r\n";
    assert_int_equal(parse(v6, strlen(v6), &h), PROXY_PARSE_OK);
    assert_addr(&h.src, "2001:db8::1", 0);
    assert_addr(&h.dst, "2001:db8::2", 65535);
    assert_int_equal(h.length, strlen(v6));

    const char *unknown = "PROXY UNKNOWN ffff::1 whatever\r\n";
    assert_int_equal(parse(unknown, strlen(unknown), &h), PROXY_PARSE_OK);
    assert_false(h.has_addresses);
    assert_int_equal(h.length, strlen(unknown));
    assert_int_equal(parse("PROXY UNKNOWN\r\n", 15, &h), PROXY_PARSE_OK);
}

static void test_v1_refused(void **state)
{
    (void)state;
    struct proxy_header h;
    const char *bad[] = {
        "PROXY TCP4 192.0.2.7 198.51.100.1 54321 465\n",     /* LF without CR */
        "PROXY TCP4 192.0.2.7 198.51.100.1 54321\r\n",       /* a port missing */
        "PROXY TCP4 192.0.2.7 198.51.100.1 54321 465 9\r\n", /* a field too many */
        "PROXY TCP4 192.0.2.7  198.51.100.1 54321 465\r\n",  /* two spaces */
        "PROXY TCP4 2001:db8::1 198.51.100.1 54321 465\r\n", /* IPv6 in TCP4 */
        "PROXY TCP6 192.0.2.7 2001:db8::2 1 2\r\n",          /* IPv4 in TCP6 */
        "PROXY TCP4 192.0.2.7 198.51.100.1 65536 465\r\n",   /* port too large */
        "PROXY TCP4 192.0.2.7 198.51.100.1 0465 465\r\n",    /* leading zero */
        "PROXY TCP4 192.0.2.7 198.51.100.1 -1 465\r\n",      /* not a number */
        "PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",         /* not TCP */
        "PROXY\r\n",                                         /* nothing */
        "proxy TCP4 192.0.2.7 198.51.100.1 1 2\r\n",         /* lower case */
        "EHLO client.example\r\n",                           /* no header at all */
        "\x16\x03\x01\x00\x05hello",                         /* a ClientHello */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (parse(bad[i], strlen(bad[i]), &h) != PROXY_PARSE_BAD)
            fail_msg("accepted: %s", bad[i]);
    }
    const char with_nul[] = "PROXY TCP4 192.0.2.7\0 198.51.100.1 1 2\r\n";
    assert_int_equal(parse(with_nul, sizeof with_nul - 1, &h), PROXY_PARSE_BAD);

    /* No CRLF within 107 bytes: refused at 107, waiting before. */
    char long_line[200];
    memset(long_line, 'a', sizeof long_line);
    memcpy(long_line, "PROXY UNKNOWN ", 14);
    assert_int_equal(parse(long_line, 106, &h), PROXY_PARSE_NEED_MORE);
    assert_int_equal(parse(long_line, 107, &h), PROXY_PARSE_BAD);
    assert_int_equal(parse(long_line, sizeof long_line, &h), PROXY_PARSE_BAD);
    /* ... and the longest line that ends in time is fine. */
    memcpy(long_line + 105, "\r\n", 2);
    assert_int_equal(parse(long_line, 107, &h), PROXY_PARSE_OK);
    assert_int_equal(h.length, 107);
}

/* A v2 header: fixed part, then `block` (addresses and TLVs). */
static size_t v2(uint8_t *out, uint8_t ver_cmd, uint8_t fam, const uint8_t *block, size_t len)
{
    memcpy(out, SIG, 12);
    out[12] = ver_cmd;
    out[13] = fam;
    out[14] = (uint8_t)(len >> 8);
    out[15] = (uint8_t)len;
    if (len > 0)
        memcpy(out + 16, block, len);
    return 16 + len;
}

static void test_v2_tcp4_tcp6_local_unspec(void **state)
{
    (void)state;
    struct proxy_header h;
    uint8_t buf[256];
    const uint8_t inet[] = {192,
                            0,
                            2,
                            7,
                            198,
                            51,
                            100,
                            1,
                            0xd4,
                            0x31,
                            0x01,
                            0xd1,
                            /* a TLV: NOOP, 2 bytes */ 0x04,
                            0x00,
                            0x02,
                            'x',
                            'y'};
    size_t n = v2(buf, 0x21, 0x11, inet, sizeof inet);
    buf[n] = 0x16; /* the client's first byte, not the header's */
    assert_int_equal(parse(buf, n + 1, &h), PROXY_PARSE_OK);
    assert_int_equal(h.version, 2);
    assert_int_equal(h.length, n);
    assert_true(h.has_addresses);
    assert_addr(&h.src, "192.0.2.7", 54321);
    assert_addr(&h.dst, "198.51.100.1", 465);
    assert_prefixes_need_more(buf, n);

    uint8_t inet6[36] = {
        0x20,        0x01,        0x0d,     0xb8,     [15] = 1,  [16] = 0x20, [17] = 0x01,
        [18] = 0x0d, [19] = 0xb8, [31] = 2, [32] = 0, [33] = 25, [34] = 0x01, [35] = 0xd1};
    n = v2(buf, 0x21, 0x21, inet6, sizeof inet6);
    assert_int_equal(parse(buf, n, &h), PROXY_PARSE_OK);
    assert_addr(&h.src, "2001:db8::1", 25);
    assert_addr(&h.dst, "2001:db8::2", 465);

    /* LOCAL (a health check): no client address, whatever the block says. */
    n = v2(buf, 0x20, 0x11, inet, 12);
    assert_int_equal(parse(buf, n, &h), PROXY_PARSE_OK);
    assert_false(h.has_addresses);
    n = v2(buf, 0x20, 0x00, NULL, 0);
    assert_int_equal(parse(buf, n, &h), PROXY_PARSE_OK);
    assert_int_equal(h.length, 16);
    /* PROXY with UNSPEC: no address either. */
    n = v2(buf, 0x21, 0x00, NULL, 0);
    assert_int_equal(parse(buf, n, &h), PROXY_PARSE_OK);
    assert_false(h.has_addresses);
    /* The LOCAL header sallyport's own health checks send: exactly that. */
    uint8_t local[PROXY_V2_FIXED];
    assert_int_equal(proxy_header_v2_local(local, sizeof local - 1), 0);
    assert_int_equal(proxy_header_v2_local(local, sizeof local), PROXY_V2_FIXED);
    assert_memory_equal(local, buf, 12); /* the signature */
    assert_int_equal(local[12], 0x20);
    assert_int_equal(local[13], 0x00);
    assert_int_equal(parse(local, sizeof local, &h), PROXY_PARSE_OK);
    assert_false(h.has_addresses);
    assert_int_equal(h.length, PROXY_V2_FIXED);
}

static void test_v2_refused(void **state)
{
    (void)state;
    struct proxy_header h;
    uint8_t buf[2048];
    const uint8_t inet[12] = {192, 0, 2, 7, 198, 51, 100, 1, 0, 1, 0, 2};
    size_t n;

    memcpy(buf, SIG, 12);
    buf[11] = 0x0b; /* a bad last signature byte */
    assert_int_equal(parse(buf, 12, &h), PROXY_PARSE_BAD);
    n = v2(buf, 0x11, 0x11, inet, 12); /* version 1 */
    assert_int_equal(parse(buf, n, &h), PROXY_PARSE_BAD);
    n = v2(buf, 0x22, 0x11, inet, 12); /* command 2 */
    assert_int_equal(parse(buf, n, &h), PROXY_PARSE_BAD);
    n = v2(buf, 0x21, 0x12, inet, 12); /* UDP */
    assert_int_equal(parse(buf, n, &h), PROXY_PARSE_BAD);
    n = v2(buf, 0x21, 0x31, inet, 12); /* AF_UNIX */
    assert_int_equal(parse(buf, n, &h), PROXY_PARSE_BAD);
    n = v2(buf, 0x21, 0x11, inet, 8); /* shorter than the IPv4 block */
    assert_int_equal(parse(buf, n, &h), PROXY_PARSE_BAD);
    n = v2(buf, 0x21, 0x21, inet, 12); /* shorter than the IPv6 block */
    assert_int_equal(parse(buf, n, &h), PROXY_PARSE_BAD);

    /* A TLV whose length runs past the header, and one cut in its type/length. */
    uint8_t overrun[12 + 5] = {192, 0, 2, 7,    198,  51,   100, 1,  0,
                               1,   0, 2, 0x02, 0x00, 0x09, 'a', 'b'};
    n = v2(buf, 0x21, 0x11, overrun, sizeof overrun);
    assert_int_equal(parse(buf, n, &h), PROXY_PARSE_BAD);
    uint8_t cut[12 + 2] = {192, 0, 2, 7, 198, 51, 100, 1, 0, 1, 0, 2, 0x02, 0x00};
    n = v2(buf, 0x21, 0x11, cut, sizeof cut);
    assert_int_equal(parse(buf, n, &h), PROXY_PARSE_BAD);

    /* A length beyond what sallyport accepts is refused at once, without
     * waiting for the bytes it announces. */
    memcpy(buf, SIG, 12);
    buf[12] = 0x21;
    buf[13] = 0x11;
    buf[14] = (PROXY_V2_MAX_LENGTH + 1) >> 8;
    buf[15] = (PROXY_V2_MAX_LENGTH + 1) & 0xff;
    assert_int_equal(parse(buf, 16, &h), PROXY_PARSE_BAD);
    buf[14] = 0xff;
    buf[15] = 0xff;
    assert_int_equal(parse(buf, 16, &h), PROXY_PARSE_BAD);
    /* ... and the longest accepted one waits for all of its bytes. */
    memset(buf + 16, 0, sizeof buf - 16);
    memcpy(buf + 16, inet, 12);
    buf[16 + 12] = 0x04; /* one NOOP TLV filling the rest */
    buf[16 + 13] = (PROXY_V2_MAX_LENGTH - 15) >> 8;
    buf[16 + 14] = (PROXY_V2_MAX_LENGTH - 15) & 0xff;
    buf[14] = PROXY_V2_MAX_LENGTH >> 8;
    buf[15] = PROXY_V2_MAX_LENGTH & 0xff;
    assert_int_equal(parse(buf, PROXY_HEADER_MAX - 1, &h), PROXY_PARSE_NEED_MORE);
    assert_int_equal(parse(buf, PROXY_HEADER_MAX, &h), PROXY_PARSE_OK);
}

static struct sockaddr_storage sa(const char *text, unsigned port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, text, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
    } else {
        assert_int_equal(inet_pton(AF_INET6, text, &in6->sin6_addr), 1);
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
    }
    return ss;
}

static void test_build_v1(void **state)
{
    (void)state;
    char out[PROXY_V1_MAX];
    struct sockaddr_storage c = sa("192.0.2.7", 54321), l = sa("198.51.100.1", 465);
    size_t n = proxy_header_v1((struct sockaddr *)&c, (struct sockaddr *)&l, out, sizeof out);
    assert_string_equal(out, "PROXY TCP4 192.0.2.7 198.51.100.1 54321 465\r\n");
    assert_int_equal(n, strlen(out));
    /* A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: still TCP4. */
    c = sa("::ffff:192.0.2.7", 1);
    l = sa("::ffff:198.51.100.1", 2);
    proxy_header_v1((struct sockaddr *)&c, (struct sockaddr *)&l, out, sizeof out);
    assert_string_equal(out, "PROXY TCP4 192.0.2.7 198.51.100.1 1 2\r\n");
    /* Mixed families: both as IPv6. */
    l = sa("2001:db8::2", 2);
    proxy_header_v1((struct sockaddr *)&c, (struct sockaddr *)&l, out, sizeof out);
    assert_string_equal(out, "PROXY TCP6 ::ffff:192.0.2.7 2001:db8::2 1 2\r\n");
    struct proxy_header h;
    assert_int_equal(parse(out, strlen(out), &h), PROXY_PARSE_OK);
    /* The longest line fits PROXY_V1_MAX. */
    c = sa("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", 65535);
    l = sa("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535);
    n = proxy_header_v1((struct sockaddr *)&c, (struct sockaddr *)&l, out, sizeof out);
    assert_true(n > 0 && n <= PROXY_V1_MAX);
    assert_int_equal(proxy_header_v1((struct sockaddr *)&c, (struct sockaddr *)&l, out, 20), 0);
}

/* The value of TLV `type` in a v2 header's TLV area, or NULL. */
static const uint8_t *find_tlv(const uint8_t *tlvs, size_t len, uint8_t type, size_t *vlen)
{
    for (size_t pos = 0; pos + 3 <= len;) {
        size_t l = (size_t)tlvs[pos + 1] << 8 | tlvs[pos + 2];
        if (tlvs[pos] == type) {
            *vlen = l;
            return tlvs + pos + 3;
        }
        pos += 3 + l;
    }
    return NULL;
}

static void test_build_v2_with_tlvs(void **state)
{
    (void)state;
    uint8_t out[PROXY_HEADER_MAX];
    struct sockaddr_storage c = sa("2001:db8::7", 40000), l = sa("2001:db8::1", 993);
    struct proxy_tlvs t = {.authority = "mail.example.com",
                           .alpn = "imap",
                           .ssl = true,
                           .ssl_version = "TLSv1.3",
                           .ssl_cipher = "TLS_AES_256_GCM_SHA384"};
    size_t n = proxy_header_v2((struct sockaddr *)&c, (struct sockaddr *)&l, &t, out, sizeof out);
    assert_true(n > 16 + 36);
    struct proxy_header h;
    assert_int_equal(parse(out, n, &h), PROXY_PARSE_OK);
    assert_int_equal(h.length, n);
    assert_addr(&h.src, "2001:db8::7", 40000);
    assert_addr(&h.dst, "2001:db8::1", 993);
    const uint8_t *tlvs = out + 16 + 36;
    size_t len = n - 16 - 36, vlen;
    const uint8_t *v = find_tlv(tlvs, len, 0x02, &vlen);
    assert_non_null(v);
    assert_memory_equal(v, "mail.example.com", vlen);
    v = find_tlv(tlvs, len, 0x01, &vlen);
    assert_non_null(v);
    assert_memory_equal(v, "imap", vlen);
    v = find_tlv(tlvs, len, 0x20, &vlen);
    assert_non_null(v);
    assert_int_equal(v[0], 0x01); /* PP2_CLIENT_SSL */
    size_t sub_len;
    const uint8_t *sub = find_tlv(v + 5, vlen - 5, 0x21, &sub_len);
    assert_non_null(sub);
    assert_memory_equal(sub, "TLSv1.3", sub_len);
    sub = find_tlv(v + 5, vlen - 5, 0x23, &sub_len);
    assert_non_null(sub);
    assert_memory_equal(sub, "TLS_AES_256_GCM_SHA384", sub_len);

    /* IPv4 without TLVs: the 28-byte header. */
    c = sa("192.0.2.7", 54321);
    l = sa("::ffff:198.51.100.1", 465);
    n = proxy_header_v2((struct sockaddr *)&c, (struct sockaddr *)&l, NULL, out, sizeof out);
    assert_int_equal(n, 28);
    assert_int_equal(out[13], 0x11);
    assert_int_equal(parse(out, n, &h), PROXY_PARSE_OK);
    assert_addr(&h.dst, "198.51.100.1", 465);
    /* Too small a buffer: nothing written. */
    assert_int_equal(proxy_header_v2((struct sockaddr *)&c, (struct sockaddr *)&l, &t, out, 40), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1_tcp4_and_tcp6),
        cmocka_unit_test(test_v1_refused),
        cmocka_unit_test(test_v2_tcp4_tcp6_local_unspec),
        cmocka_unit_test(test_v2_refused),
        cmocka_unit_test(test_build_v1),
        cmocka_unit_test(test_build_v2_with_tlvs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
