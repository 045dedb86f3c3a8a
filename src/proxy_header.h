/* proxy_header — the PROXY protocol (HAProxy's proxy-protocol.txt, v1 and
 * v2) as pure functions: parsing the header a load balancer in front of
 * sallyport sends, and building the header sallyport sends to a backend.
 * No I/O and no allocation; every length is bounded against its container,
 * so it is unit-tested and fuzzed directly.
 *
 * What is accepted: a v1 line ("PROXY TCP4|TCP6 src dst sport dport\r\n", or
 * "PROXY UNKNOWN ...\r\n") of at most 107 bytes; a v2 header with the v2
 * signature, version 2, command LOCAL or PROXY, and for PROXY the families
 * TCP over IPv4 or IPv6 (or UNSPEC), whose address block and TLVs fit the
 * announced length, at most PROXY_V2_MAX_LENGTH bytes after the fixed part.
 * LOCAL, UNSPEC and UNKNOWN carry no client address: the connection's own
 * peer is the client (a load balancer's health check). */
#ifndef SALLYPORT_PROXY_HEADER_H
#define SALLYPORT_PROXY_HEADER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* The longest v1 line, CRLF included (the specification's bound). */
#define PROXY_V1_MAX 107
/* The fixed part of a v2 header: signature, version/command, family, length. */
#define PROXY_V2_FIXED 16
/* The most bytes a v2 header may announce after its fixed part. */
#define PROXY_V2_MAX_LENGTH 1024
/* The most bytes any header may take. */
#define PROXY_HEADER_MAX (PROXY_V2_FIXED + PROXY_V2_MAX_LENGTH)

enum proxy_parse_result {
    PROXY_PARSE_OK,        /* a complete, valid header of out->length bytes */
    PROXY_PARSE_NEED_MORE, /* a valid prefix: call again with more bytes */
    PROXY_PARSE_BAD,       /* not a valid header; *why says what is wrong */
};

struct proxy_header {
    int version;                 /* 1 or 2 */
    bool has_addresses;          /* a PROXY command over TCP4/TCP6: src and dst are the client's */
    struct sockaddr_storage src; /* the client as the load balancer saw it */
    struct sockaddr_storage dst; /* the address the client connected to */
    size_t length;               /* bytes the header occupies in the stream */
};

/* Parses the start of a connection's bytes (`len` received so far; bytes
 * after the header are not looked at). On PROXY_PARSE_BAD, *why is a static
 * one-line reason for the log. */
enum proxy_parse_result proxy_header_parse(const uint8_t *data, size_t len,
                                           struct proxy_header *out, const char **why);

/* What a v2 header sallyport sends may carry besides the addresses. NULL
 * strings are left out. */
struct proxy_tlvs {
    const char *authority;   /* PP2_TYPE_AUTHORITY: the SNI the client sent */
    const char *alpn;        /* PP2_TYPE_ALPN: the application protocol */
    bool ssl;                /* PP2_TYPE_SSL: the client's connection was TLS */
    const char *ssl_version; /* PP2_SUBTYPE_SSL_VERSION, e.g. "TLSv1.3" */
    const char *ssl_cipher;  /* PP2_SUBTYPE_SSL_CIPHER */
};

/* Writes a v1 header for a connection from `src` to `dst` (IPv4, IPv6 or
 * IPv4-mapped IPv6; other families give "PROXY UNKNOWN"). Returns its
 * length, or 0 if `cap` is too small (PROXY_V1_MAX always suffices). */
size_t proxy_header_v1(const struct sockaddr *src, const struct sockaddr *dst, char *out,
                       size_t cap);

/* Writes a v2 LOCAL header (a health check: no client to name). Returns its
 * length (PROXY_V2_FIXED), or 0 if `cap` is too small. */
size_t proxy_header_v2_local(uint8_t *out, size_t cap);

/* Writes a v2 PROXY header with the TLVs in `tlvs` (may be NULL). Returns
 * its length, or 0 if it does not fit `cap` (PROXY_HEADER_MAX suffices for
 * names of up to 255 bytes). */
size_t proxy_header_v2(const struct sockaddr *src, const struct sockaddr *dst,
                       const struct proxy_tlvs *tlvs, uint8_t *out, size_t cap);

#endif
