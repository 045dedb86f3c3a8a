/* conn — one socket, raw or TLS, behind one small interface.
 *
 * Protocol code never calls OpenSSL: it reads and writes a conn. The
 * SSL_get_error() mapping to want-read / want-write lives only in conn.c, and
 * ERR_clear_error() is called before every SSL call (see STYLE.md, Redis). */
#ifndef SALLYPORT_CONN_H
#define SALLYPORT_CONN_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Negative results of conn_read/conn_write/conn_handshake. */
enum conn_result {
    CONN_DONE = 0,        /* conn_handshake: finished */
    CONN_WANT_READ = -1,  /* retry when the socket is readable */
    CONN_WANT_WRITE = -2, /* retry when the socket is writable */
    CONN_EOF = -3,        /* the peer closed (TLS: close_notify or TCP FIN) */
    CONN_ERROR = -4,      /* fatal; conn_error() says why */
};

struct conn {
    int fd;   /* owned; -1 when closed */
    SSL *ssl; /* owned; NULL while the conn is raw */
};

void conn_init(struct conn *c, int fd);

/* Starts TLS on the conn: `ssl` is owned by the conn from here on. The caller
 * has already set it up as client or server. */
void conn_start_tls(struct conn *c, SSL *ssl);

/* Starts TLS like conn_start_tls(), but OpenSSL first reads `bytes` (len
 * of them: what was read from the socket before, the ClientHello routed
 * by), then the socket. Returns false (and frees ssl) when out of memory. */
bool conn_start_tls_replay(struct conn *c, SSL *ssl, const void *bytes, size_t len);

/* Reads up to `len` bytes. Returns >0 bytes read or a negative conn_result. */
ssize_t conn_read(struct conn *c, void *buf, size_t len);

/* Writes up to `len` bytes. Returns >0 bytes written or a negative conn_result.
 * With TLS, a retried write must pass the same buffer (partial writes on). */
ssize_t conn_write(struct conn *c, const void *buf, size_t len);

/* Advances the TLS handshake: CONN_DONE, CONN_WANT_READ/WRITE or CONN_ERROR. */
int conn_handshake(struct conn *c);

/* True if TLS holds bytes not yet read, decrypted or still raw (read ahead
 * from the socket): the socket may not poll readable for them. */
bool conn_pending(const struct conn *c);

/* Ends the write direction: close_notify if TLS, then a TCP FIN. The conn
 * must not be written to afterwards; reading its raw socket is still fine. */
void conn_shutdown_write(struct conn *c);

/* Sends close_notify if TLS, then closes the socket. Safe to call twice. */
void conn_close(struct conn *c);

/* Why a client-side TLS handshake on `c` failed, after conn_handshake()
 * returned CONN_ERROR: "<who>certificate rejected: <why>" when the peer's
 * certificate failed verification, else "<who>TLS handshake failed: <why>". */
void conn_handshake_failure(const struct conn *c, const char *who, char *out, size_t len);

/* Human-readable reason of this thread's last CONN_ERROR; valid until the
 * next conn call on this thread (kept out of struct conn: an idle session
 * should not carry an error text it almost never has). */
const char *conn_error(void);
/* The OpenSSL reason code (ERR_GET_REASON) behind this thread's last
 * CONN_ERROR of a TLS call, -1 when the peer closed or the socket failed,
 * 0 when unknown: what metrics group handshake failures by. */
int conn_error_reason(void);

#endif
