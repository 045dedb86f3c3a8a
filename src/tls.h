/* tls — OpenSSL contexts: the certificate store, SNI selection, backend
 * clients. The only module besides conn.c that includes OpenSSL headers.
 *
 * Policy everywhere: TLS 1.2 or newer, no compression, no renegotiation,
 * server cipher preference, forward-secret AEAD ciphers only for TLS 1.2. */
#ifndef SALLYPORT_TLS_H
#define SALLYPORT_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>

/* Creates a server context with the policy above, loading `cert_path` (a PEM
 * chain, leaf first) and `key_path`. Returns NULL and writes a one-line reason
 * into err (e.g. "key does not match certificate") on failure. */
SSL_CTX *tls_server_ctx_new(const char *cert_path, const char *key_path, char *err, size_t errlen);

/* tls_server_ctx_new() of a certificate and key in memory (an ACME
 * temporary or challenge certificate); both stay the caller's. */
SSL_CTX *tls_server_ctx_of(X509 *cert, EVP_PKEY *key, char *err, size_t errlen);

/* The ALPN protocol of the tls-alpn-01 challenge (RFC 8737). */
#define TLS_ACME_ALPN "acme-tls/1"

/* A context that answers one tls-alpn-01 challenge with `cert`: it selects
 * acme-tls/1 and refuses any handshake that does not offer it. No session
 * resumption. `cert` and `key` stay the caller's. */
SSL_CTX *tls_acme_ctx_new(X509 *cert, EVP_PKEY *key, char *err, size_t errlen);

/* A server SSL of such a context. NULL on allocation failure. */
SSL *tls_acme_accept(SSL_CTX *ctx);

/* Creates a client context for backends: the policy above, peer verification
 * against `ca_path` (a PEM bundle) or the system store when ca_path is NULL.
 * With verify false, the backend's certificate is not checked at all. */
SSL_CTX *tls_client_ctx_new(const char *ca_path, bool verify, char *err, size_t errlen);

/* Creates a client SSL that sends `name` as SNI and, when the context
 * verifies, requires the certificate to match `name` (a DNS name or an IP
 * address literal). */
SSL *tls_client_new(SSL_CTX *ctx, const char *name);

/* Fills names[] with the DNS names a certificate answers for: its
 * subjectAltName DNS entries (wildcards such as "*.example.com" kept as is),
 * or its subject CN when it has no SAN DNS entries. Names are lower-cased
 * copies the caller frees with free(). Returns the count (<= max). */
size_t tls_ctx_names(SSL_CTX *ctx, char **names, size_t max);

/* Session ticket keys: one set for the whole process, used by every server
 * context of every generation, so a client resumes its TLS session across
 * reloads. New tickets are sealed with the newest key; tickets of the
 * TLS_TICKET_KEYS - 1 keys before it still open (and are renewed). Any
 * thread. */
#define TLS_TICKET_KEYS 3
struct tls_tickets;

/* NULL when out of memory or out of randomness. */
struct tls_tickets *tls_tickets_new(void);

/* A fresh key for new tickets; the oldest one is forgotten. Returns 0, or
 * -1 (the keys unchanged) when no randomness is available. */
int tls_tickets_rotate(struct tls_tickets *tickets);

/* Makes a server context outside a store (the embedded mailbox's) seal
 * its tickets with `tickets` too. */
void tls_ctx_use_tickets(SSL_CTX *ctx, struct tls_tickets *tickets);

/* Free once no context uses them any more. */
void tls_tickets_free(struct tls_tickets *tickets);

/* A set of server certificates, one picked per connection by SNI. */
struct tls_store;

/* Called during the handshake with the SNI the client sent (NULL if none).
 * Return false to refuse the connection with alert unrecognized_name. */
typedef bool (*tls_sni_check)(void *app, const char *sni);

/* Called during the handshake of a client that offers ALPN, with the
 * protocol list as sent (length-prefixed names). Returns the offset in
 * `list` of the name to select (its length byte), or -1 to refuse the
 * connection with alert no_application_protocol (ALPACA, RFC 7301 3.2). */
typedef int (*tls_alpn_check)(void *app, const unsigned char *list, unsigned len);

/* The offset of `name`'s length byte in an ALPN protocol list, or -1 when
 * the list does not offer it (a malformed list offers nothing). */
int tls_alpn_find(const unsigned char *list, unsigned len, const char *name);

/* A store whose contexts seal session tickets with `tickets` (NULL: each
 * context its own OpenSSL keys). */
struct tls_store *tls_store_new(struct tls_tickets *tickets);

/* Adds a loaded server context; the store owns it from here on. The first one
 * added, or the one added with is_default, answers clients without SNI and
 * names that no certificate covers. Returns false on allocation failure. */
bool tls_store_add(struct tls_store *store, SSL_CTX *ctx, bool is_default);

/* Sets the callback consulted for every handshake (routing by SNI). */
void tls_store_set_sni_check(struct tls_store *store, tls_sni_check check);

/* Sets the callback consulted for every handshake that offers ALPN. */
void tls_store_set_alpn_check(struct tls_store *store, tls_alpn_check check);

/* True if the store holds at least one certificate. */
bool tls_store_ready(const struct tls_store *store);

/* Returns a new server SSL for one client; `app` is handed to the SNI check.
 * NULL on allocation failure. */
SSL *tls_store_accept(struct tls_store *store, void *app);

/* The SNI check's `app` pointer of an SSL made by tls_store_accept(). */
void *tls_app(SSL *ssl);

void tls_store_free(struct tls_store *store);

/* Case-insensitive match of a host name against a pattern that may be a
 * single-label wildcard ("*.example.com" matches "a.example.com", not
 * "example.com" nor "a.b.example.com"). */
bool tls_name_matches(const char *pattern, const char *name);

#endif
