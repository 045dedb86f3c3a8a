/* acme_challenge — the answers to the CA's challenges that are pending
 * now: put by the ACME thread (acme.c) while it waits for the CA to check
 * a name, read by workers when the CA connects. Process-wide, any thread.
 *
 *   tls-alpn-01 (RFC 8737): a handshake offering acme-tls/1 for NAME gets
 *     the challenge certificate's context (session.c).
 *   http-01 (RFC 8555 8.3): GET /.well-known/acme-challenge/TOKEN gets the
 *     key authorization (acme_web.c). */
#ifndef SALLYPORT_ACME_CHALLENGE_H
#define SALLYPORT_ACME_CHALLENGE_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>

#include "httpd.h"

/* Pending answers at most at once: an order's names (CERT_MAX_NAMES) for
 * each certificate being got, which acme.c does one at a time. */
#define ACME_CHALLENGE_MAX 64

/* Answers tls-alpn-01 handshakes for `name` with `ctx` (a reference is
 * taken) until removed. Replaces an earlier answer for the name. False when
 * the table is full. */
bool acme_challenge_put_alpn(const char *name, SSL_CTX *ctx);

/* Answers GET /.well-known/acme-challenge/`token` with `key_authorization`
 * until removed. False when the table is full or a value is too long. */
bool acme_challenge_put_http(const char *token, const char *key_authorization);

/* Forgets the answer for a name (tls-alpn-01) or a token (http-01). */
void acme_challenge_remove(const char *name_or_token);

/* The context for a tls-alpn-01 handshake for `name` (case-insensitive),
 * with a reference the caller frees (SSL_CTX_free), or NULL when none is
 * pending. */
SSL_CTX *acme_challenge_alpn(const char *name);

/* Copies the key authorization for `token` into out; false when none is
 * pending (or out is too small). */
bool acme_challenge_http(const char *token, char *out, size_t outlen);

/* An httpd_page (httpd.h) for [acme] http_address: GET
 * /.well-known/acme-challenge/TOKEN gets the key authorization of a pending
 * http-01 challenge; anything else 404. `arg` is unused. */
void acme_challenge_page(void *arg, const char *target, struct httpd_reply *reply);

/* How many answers are pending (tests, metrics). */
size_t acme_challenge_count(void);

#endif
