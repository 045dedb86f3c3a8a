/* clienthello — a pure parser of the TLS records that carry a ClientHello.
 * No OpenSSL: it reads only what it needs (SNI, ALPN, versions), bounds every
 * length against its container, and copes with a ClientHello split across
 * several TLS records and delivered in any number of TCP segments. */
#ifndef SALLYPORT_CLIENTHELLO_H
#define SALLYPORT_CLIENTHELLO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The most record bytes sallyport buffers while waiting for a full ClientHello. */
#define CLIENTHELLO_MAX_BYTES 16384

enum clienthello_result {
    CLIENTHELLO_OK,        /* complete and well-formed: *out is filled */
    CLIENTHELLO_NEED_MORE, /* a valid prefix: call again with more bytes */
    CLIENTHELLO_NOT_TLS,   /* the first bytes are not a TLS handshake record (plaintext) */
    CLIENTHELLO_MALFORMED, /* a TLS record, but not a well-formed ClientHello */
    CLIENTHELLO_TOO_LARGE, /* would need more than CLIENTHELLO_MAX_BYTES */
};

#define CLIENTHELLO_MAX_ALPN 16

struct clienthello {
    bool has_sni;
    char sni[256]; /* lower-cased host_name; only [a-z0-9.-_] allowed, else MALFORMED */
    size_t alpn_count;
    char alpn[CLIENTHELLO_MAX_ALPN][64]; /* protocol names offered, in order (printable only) */
    uint16_t max_version; /* highest version offered (supported_versions, or legacy_version) */
    size_t record_bytes;  /* bytes of input the ClientHello's records occupy */
};

/* Parses the start of a client's byte stream. `data`/`len` is everything
 * received so far (it may hold bytes beyond the ClientHello). */
enum clienthello_result clienthello_parse(const uint8_t *data, size_t len, struct clienthello *out);

const char *clienthello_result_name(enum clienthello_result result);

#endif
