/* libFuzzer target for proxy_header_parse() and the header builders.
 *
 *   make fuzz   (or: clang -fsanitize=fuzzer,address,undefined -Isrc src/proxy_header.c
 *               fuzz/fuzz_proxy_header.c -o fuzz_proxy_header)
 *
 * Besides memory errors (ASan/UBSan), it aborts when a result breaks the
 * parser's contract: an OK header lies within the input and within
 * PROXY_HEADER_MAX and parses the same from exactly its own bytes; a caller
 * that has buffered PROXY_HEADER_MAX bytes is never told NEED_MORE; and the
 * addresses of an OK header, built into a v1 and a v2 header again, parse
 * back to the same addresses. */
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy_header.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
    if (!ok)
        abort();
}

static int same_address(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET)
        return memcmp(a, b, sizeof(struct sockaddr_in)) == 0;
    return memcmp(a, b, sizeof(struct sockaddr_in6)) == 0;
}

static bool v4_mapped(const struct sockaddr_storage *ss)
{
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)ss;
    return ss->ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr);
}

static void check_round_trip(const struct proxy_header *h)
{
    const struct sockaddr *src = (const struct sockaddr *)&h->src;
    const struct sockaddr *dst = (const struct sockaddr *)&h->dst;
    char v1[PROXY_V1_MAX];
    uint8_t v2[PROXY_HEADER_MAX];
    struct proxy_header again;
    const char *why;
    size_t n = proxy_header_v1(src, dst, v1, sizeof v1);
    check(n > 0);
    check(proxy_header_parse((const uint8_t *)v1, n, &again, &why) == PROXY_PARSE_OK);
    check(again.length == n && again.has_addresses);
    struct proxy_tlvs tlvs = {.authority = "mail.example.com",
                              .alpn = "smtp",
                              .ssl = 1,
                              .ssl_version = "TLSv1.3",
                              .ssl_cipher = "TLS_AES_128_GCM_SHA256"};
    n = proxy_header_v2(src, dst, &tlvs, v2, sizeof v2);
    check(n > 0);
    check(proxy_header_parse(v2, n, &again, &why) == PROXY_PARSE_OK);
    check(again.length == n && again.has_addresses);
    /* v2 keeps each family as it was (v1 may have to widen IPv4 to IPv6),
     * except that IPv4-mapped IPv6 addresses are written as the IPv4
     * addresses they are (a dual-stack socket's view of IPv4 clients). */
    if (h->src.ss_family == h->dst.ss_family && !v4_mapped(&h->src) && !v4_mapped(&h->dst)) {
        check(same_address(&again.src, &h->src));
        check(same_address(&again.dst, &h->dst));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct proxy_header h;
    const char *why = NULL;
    enum proxy_parse_result r = proxy_header_parse(data, size, &h, &why);
    if (r == PROXY_PARSE_BAD) {
        check(why != NULL && why[0] != '\0');
        return 0;
    }
    if (r == PROXY_PARSE_NEED_MORE) {
        check(size < PROXY_HEADER_MAX);
        return 0;
    }
    check(r == PROXY_PARSE_OK);
    check(h.version == 1 || h.version == 2);
    check(h.length > 0 && h.length <= size && h.length <= PROXY_HEADER_MAX);
    /* The verdict depends only on the header's own bytes. */
    struct proxy_header alone;
    check(proxy_header_parse(data, h.length, &alone, &why) == PROXY_PARSE_OK);
    check(alone.length == h.length && alone.has_addresses == h.has_addresses);
    if (h.has_addresses) {
        check(h.src.ss_family == AF_INET || h.src.ss_family == AF_INET6);
        check(h.dst.ss_family == h.src.ss_family);
        check_round_trip(&h);
    }
    return 0;
}
