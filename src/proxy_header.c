#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "proxy_header.h"

static const uint8_t v2_signature[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                         0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
static const char v1_prefix[] = "PROXY ";

enum {
    V2_CMD_LOCAL = 0x0,
    V2_CMD_PROXY = 0x1,
    V2_AF_UNSPEC = 0x0,
    V2_AF_INET = 0x1,
    V2_AF_INET6 = 0x2,
    V2_TRANSPORT_STREAM = 0x1,
    V2_INET_BLOCK = 12,  /* two IPv4 addresses, two ports */
    V2_INET6_BLOCK = 36, /* two IPv6 addresses, two ports */
    PP2_TYPE_ALPN = 0x01,
    PP2_TYPE_AUTHORITY = 0x02,
    PP2_TYPE_SSL = 0x20,
    PP2_SUBTYPE_SSL_VERSION = 0x21,
    PP2_SUBTYPE_SSL_CIPHER = 0x23,
    PP2_CLIENT_SSL = 0x01,
};

/* ---- parsing ---------------------------------------------------------------- */

static enum proxy_parse_result bad(const char **why, const char *reason)
{
    *why = reason;
    return PROXY_PARSE_BAD;
}

static void set_inet(struct sockaddr_storage *ss, const uint8_t addr[4], uint16_t port)
{
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    memset(ss, 0, sizeof *ss);
    in->sin_family = AF_INET;
    memcpy(&in->sin_addr, addr, 4);
    in->sin_port = htons(port);
}

static void set_inet6(struct sockaddr_storage *ss, const uint8_t addr[16], uint16_t port)
{
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof *ss);
    in6->sin6_family = AF_INET6;
    memcpy(&in6->sin6_addr, addr, 16);
    in6->sin6_port = htons(port);
}

/* A decimal port: 1 to 5 digits, no leading zero, at most 65535. */
static bool parse_port(const char *text, uint16_t *out)
{
    size_t n = strlen(text);
    if (n == 0 || n > 5 || strspn(text, "0123456789") != n || (n > 1 && text[0] == '0'))
        return false;
    unsigned long value = 0;
    for (size_t i = 0; i < n; i++)
        value = value * 10 + (unsigned long)(text[i] - '0');
    if (value > 65535)
        return false;
    *out = (uint16_t)value;
    return true;
}

/* An address of `family` (no surrounding spaces, no zone index). */
static bool parse_address(int family, const char *text, struct sockaddr_storage *ss, uint16_t port)
{
    uint8_t addr[16];
    if (inet_pton(family, text, addr) != 1)
        return false;
    if (family == AF_INET)
        set_inet(ss, addr, port);
    else
        set_inet6(ss, addr, port);
    return true;
}

static enum proxy_parse_result parse_v1(const uint8_t *data, size_t len, struct proxy_header *out,
                                        const char **why)
{
    size_t scan = len < PROXY_V1_MAX ? len : PROXY_V1_MAX;
    const uint8_t *lf = memchr(data, '\n', scan);
    if (!lf)
        return len >= PROXY_V1_MAX ? bad(why, "PROXY v1 line without CRLF within 107 bytes")
                                   : PROXY_PARSE_NEED_MORE;
    size_t line_len = (size_t)(lf - data); /* without the LF */
    if (line_len == 0 || data[line_len - 1] != '\r')
        return bad(why, "PROXY v1 line not ended by CRLF");
    char line[PROXY_V1_MAX];
    memcpy(line, data, line_len - 1);
    line[line_len - 1] = '\0';
    if (strlen(line) != line_len - 1)
        return bad(why, "PROXY v1 line with a NUL byte");

    char *fields[7];
    size_t n = 0;
    for (char *p = line; n < 7;) {
        fields[n++] = p;
        char *space = strchr(p, ' ');
        if (!space)
            break;
        *space = '\0';
        p = space + 1;
    }
    memset(out, 0, sizeof *out);
    out->version = 1;
    out->length = line_len + 1;
    if (n >= 2 && strcmp(fields[1], "UNKNOWN") == 0)
        return PROXY_PARSE_OK; /* whatever follows is to be ignored */
    if (n != 6)
        return bad(why, "PROXY v1 line without exactly protocol, two addresses and two ports");
    int family;
    if (strcmp(fields[1], "TCP4") == 0)
        family = AF_INET;
    else if (strcmp(fields[1], "TCP6") == 0)
        family = AF_INET6;
    else
        return bad(why, "PROXY v1 protocol other than TCP4, TCP6 or UNKNOWN");
    uint16_t sport, dport;
    if (!parse_port(fields[4], &sport) || !parse_port(fields[5], &dport))
        return bad(why, "PROXY v1 port that is not a number from 0 to 65535");
    if (!parse_address(family, fields[2], &out->src, sport) ||
        !parse_address(family, fields[3], &out->dst, dport))
        return bad(why, "PROXY v1 address that is not of its protocol's family");
    out->has_addresses = true;
    return PROXY_PARSE_OK;
}

/* Every TLV in data[0..len) lies within it. */
static bool tlvs_fit(const uint8_t *data, size_t len)
{
    size_t pos = 0;
    while (pos < len) {
        if (len - pos < 3)
            return false;
        size_t value_len = (size_t)data[pos + 1] << 8 | data[pos + 2];
        if (value_len > len - pos - 3)
            return false;
        pos += 3 + value_len;
    }
    return true;
}

static enum proxy_parse_result parse_v2(const uint8_t *data, size_t len, struct proxy_header *out,
                                        const char **why)
{
    if (len < PROXY_V2_FIXED)
        return PROXY_PARSE_NEED_MORE;
    unsigned version = data[12] >> 4, command = data[12] & 0x0f;
    unsigned family = data[13] >> 4, transport = data[13] & 0x0f;
    size_t length = (size_t)data[14] << 8 | data[15];
    if (version != 2)
        return bad(why, "PROXY v2 header with a version other than 2");
    if (command != V2_CMD_LOCAL && command != V2_CMD_PROXY)
        return bad(why, "PROXY v2 command other than LOCAL or PROXY");
    if (length > PROXY_V2_MAX_LENGTH)
        return bad(why, "PROXY v2 header longer than sallyport accepts");
    if (len < PROXY_V2_FIXED + length)
        return PROXY_PARSE_NEED_MORE;
    memset(out, 0, sizeof *out);
    out->version = 2;
    out->length = PROXY_V2_FIXED + length;
    const uint8_t *block = data + PROXY_V2_FIXED;
    if (command == V2_CMD_LOCAL)
        return PROXY_PARSE_OK; /* the connection's own endpoints; the block is ignored */

    size_t addresses;
    if (family == V2_AF_UNSPEC) {
        addresses = 0;
    } else if (transport != V2_TRANSPORT_STREAM) {
        return bad(why, "PROXY v2 transport other than TCP");
    } else if (family == V2_AF_INET) {
        addresses = V2_INET_BLOCK;
    } else if (family == V2_AF_INET6) {
        addresses = V2_INET6_BLOCK;
    } else {
        return bad(why, "PROXY v2 address family other than IPv4 or IPv6");
    }
    if (length < addresses)
        return bad(why, "PROXY v2 length shorter than its address block");
    if (!tlvs_fit(block + addresses, length - addresses))
        return bad(why, "PROXY v2 TLV that overruns the header");
    if (family == V2_AF_INET) {
        set_inet(&out->src, block, (uint16_t)(block[8] << 8 | block[9]));
        set_inet(&out->dst, block + 4, (uint16_t)(block[10] << 8 | block[11]));
        out->has_addresses = true;
    } else if (family == V2_AF_INET6) {
        set_inet6(&out->src, block, (uint16_t)(block[32] << 8 | block[33]));
        set_inet6(&out->dst, block + 16, (uint16_t)(block[34] << 8 | block[35]));
        out->has_addresses = true;
    }
    return PROXY_PARSE_OK;
}

enum proxy_parse_result proxy_header_parse(const uint8_t *data, size_t len,
                                           struct proxy_header *out, const char **why)
{
    size_t v1_cmp = len < sizeof v1_prefix - 1 ? len : sizeof v1_prefix - 1;
    size_t v2_cmp = len < sizeof v2_signature ? len : sizeof v2_signature;
    if (len == 0)
        return PROXY_PARSE_NEED_MORE;
    if (memcmp(data, v1_prefix, v1_cmp) == 0)
        return len < sizeof v1_prefix - 1 ? PROXY_PARSE_NEED_MORE : parse_v1(data, len, out, why);
    if (memcmp(data, v2_signature, v2_cmp) == 0)
        return len < sizeof v2_signature ? PROXY_PARSE_NEED_MORE : parse_v2(data, len, out, why);
    return bad(why, "no PROXY header (neither the v1 \"PROXY \" nor the v2 signature)");
}

/* ---- building ---------------------------------------------------------------- */

/* The address of `sa` as 16 bytes (IPv4 mapped) and its port; returns
 * AF_INET for IPv4 (also mapped into IPv6), AF_INET6, or 0 for others. */
static int flatten(const struct sockaddr *sa, uint8_t addr[16], uint16_t *port)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)(const void *)sa;
        memcpy(addr, mapped, 12);
        memcpy(addr + 12, &in->sin_addr, 4);
        *port = ntohs(in->sin_port);
        return AF_INET;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        memcpy(addr, &in6->sin6_addr, 16);
        *port = ntohs(in6->sin6_port);
        return memcmp(addr, mapped, 12) == 0 ? AF_INET : AF_INET6;
    }
    return 0;
}

/* Both endpoints in one family: IPv4 when both are, else IPv6 (an IPv4
 * address then stays in its mapped form). Returns 0 when either is neither. */
static int common_family(const struct sockaddr *src, const struct sockaddr *dst, uint8_t saddr[16],
                         uint16_t *sport, uint8_t daddr[16], uint16_t *dport)
{
    int sf = flatten(src, saddr, sport), df = flatten(dst, daddr, dport);
    if (!sf || !df)
        return 0;
    return sf == AF_INET && df == AF_INET ? AF_INET : AF_INET6;
}

size_t proxy_header_v1(const struct sockaddr *src, const struct sockaddr *dst, char *out,
                       size_t cap)
{
    uint8_t saddr[16], daddr[16];
    uint16_t sport, dport;
    int family = common_family(src, dst, saddr, &sport, daddr, &dport);
    int n;
    if (!family) {
        n = snprintf(out, cap, "PROXY UNKNOWN\r\n");
    } else {
        char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
        size_t skip = family == AF_INET ? 12 : 0;
        inet_ntop(family, saddr + skip, s, sizeof s);
        inet_ntop(family, daddr + skip, d, sizeof d);
        n = snprintf(out, cap, "PROXY %s %s %s %u %u\r\n", family == AF_INET ? "TCP4" : "TCP6", s,
                     d, sport, dport);
    }
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

/* Appends a TLV of `len` bytes; false when it does not fit. */
static bool put_tlv(uint8_t *out, size_t cap, size_t *pos, uint8_t type, const void *value,
                    size_t len)
{
    if (len > 0xffff || cap - *pos < 3 + len)
        return false;
    out[*pos] = type;
    out[*pos + 1] = (uint8_t)(len >> 8);
    out[*pos + 2] = (uint8_t)len;
    if (len)
        memcpy(out + *pos + 3, value, len);
    *pos += 3 + len;
    return true;
}

static bool put_string_tlv(uint8_t *out, size_t cap, size_t *pos, uint8_t type, const char *value)
{
    return !value || put_tlv(out, cap, pos, type, value, strlen(value));
}

/* PP2_TYPE_SSL: client flags, verify result, then the version and cipher. */
static bool put_ssl_tlv(uint8_t *out, size_t cap, size_t *pos, const struct proxy_tlvs *t)
{
    uint8_t value[5 + 2 * (3 + 255)];
    size_t len = 0;
    value[len++] = PP2_CLIENT_SSL;
    memset(value + len, 0, 4); /* verify: 0, no client certificate was asked for */
    len += 4;
    if (!put_string_tlv(value, sizeof value, &len, PP2_SUBTYPE_SSL_VERSION, t->ssl_version) ||
        !put_string_tlv(value, sizeof value, &len, PP2_SUBTYPE_SSL_CIPHER, t->ssl_cipher))
        return false;
    return put_tlv(out, cap, pos, PP2_TYPE_SSL, value, len);
}

size_t proxy_header_v2_local(uint8_t *out, size_t cap)
{
    if (cap < PROXY_V2_FIXED)
        return 0;
    memcpy(out, v2_signature, sizeof v2_signature);
    out[12] = 0x20 | V2_CMD_LOCAL;
    out[13] = V2_AF_UNSPEC << 4;
    out[14] = out[15] = 0;
    return PROXY_V2_FIXED;
}

size_t proxy_header_v2(const struct sockaddr *src, const struct sockaddr *dst,
                       const struct proxy_tlvs *tlvs, uint8_t *out, size_t cap)
{
    uint8_t saddr[16], daddr[16];
    uint16_t sport, dport;
    int family = common_family(src, dst, saddr, &sport, daddr, &dport);
    if (cap < PROXY_V2_FIXED + V2_INET6_BLOCK)
        return 0;
    memcpy(out, v2_signature, sizeof v2_signature);
    out[12] = 0x20 | V2_CMD_PROXY;
    size_t pos = PROXY_V2_FIXED;
    if (family == AF_INET) {
        out[13] = V2_AF_INET << 4 | V2_TRANSPORT_STREAM;
        memcpy(out + pos, saddr + 12, 4);
        memcpy(out + pos + 4, daddr + 12, 4);
        pos += 8;
    } else if (family == AF_INET6) {
        out[13] = V2_AF_INET6 << 4 | V2_TRANSPORT_STREAM;
        memcpy(out + pos, saddr, 16);
        memcpy(out + pos + 16, daddr, 16);
        pos += 32;
    } else {
        out[13] = V2_AF_UNSPEC << 4;
    }
    if (family) {
        out[pos++] = (uint8_t)(sport >> 8);
        out[pos++] = (uint8_t)sport;
        out[pos++] = (uint8_t)(dport >> 8);
        out[pos++] = (uint8_t)dport;
    }
    if (tlvs && (!put_string_tlv(out, cap, &pos, PP2_TYPE_ALPN, tlvs->alpn) ||
                 !put_string_tlv(out, cap, &pos, PP2_TYPE_AUTHORITY, tlvs->authority) ||
                 (tlvs->ssl && !put_ssl_tlv(out, cap, &pos, tlvs))))
        return 0;
    size_t length = pos - PROXY_V2_FIXED;
    if (length > PROXY_V2_MAX_LENGTH)
        return 0;
    out[14] = (uint8_t)(length >> 8);
    out[15] = (uint8_t)length;
    return pos;
}
