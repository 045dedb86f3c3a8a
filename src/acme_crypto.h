/* acme_crypto — the OpenSSL side of ACME (RFC 8555, RFC 8737): keys, JWS,
 * CSRs and the certificates sallyport makes itself. Thread-safe (no globals).
 *
 * Every function returns NULL (or -1, or false) on failure; those with
 * err/errlen write a one-line reason an operator can act on, naming the file.
 * Every returned string is malloc'd and the caller frees it; every returned
 * EVP_PKEY or X509 belongs to the caller (EVP_PKEY_free, X509_free).
 *
 * Keys for the account and the JWS are ECDSA P-256 (ES256). A name is a DNS
 * name as ACME orders it: 1 to ACME_NAME_MAX printable ASCII characters
 * without spaces; a list holds 1 to ACME_NAMES_MAX names. A subject CN is
 * only set when names[0] fits one (64 characters, RFC 5280 ub-common-name);
 * the subjectAltName always carries every name. */
#ifndef SALLYPORT_ACME_CRYPTO_H
#define SALLYPORT_ACME_CRYPTO_H

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

/* The longest DNS name (RFC 1035, without the trailing dot). */
#define ACME_NAME_MAX 253
/* The most names one certificate may carry (Let's Encrypt's limit). */
#define ACME_NAMES_MAX 100

/* A fresh ECDSA P-256 key. */
EVP_PKEY *acme_key_new(void);

/* Reads the PEM private key at `path` (unencrypted; PKCS#8 or SEC1).
 * Refuses anything but an EC P-256 key. The reason names the path; for a
 * missing file errno is ENOENT and the reason says "... does not exist". */
EVP_PKEY *acme_key_load(const char *path, char *err, size_t errlen);

/* The private key as PKCS#8 PEM text ("BEGIN PRIVATE KEY"): *pem is
 * malloc'd and NUL-terminated, *len excludes the NUL. Returns 0 or -1. */
int acme_key_pem(EVP_PKEY *key, char **pem, size_t *len);

/* Writes `len` bytes to `path` atomically: a temporary file in the same
 * directory (mode 0600), fsync, rename over path, fsync of the directory.
 * A reader sees the old file or the new one, never a part. The file ends
 * with mode 0600 whatever the old one had. Returns 0, or -1 with errno
 * kept and no temporary file left behind. */
int acme_file_write(const char *path, const void *data, size_t len, char *err, size_t errlen);

/* base64url (RFC 4648 section 5) without padding; "" for len 0. */
char *acme_b64url(const unsigned char *data, size_t len);

/* The public JWK of a P-256 key, exactly
 * {"crv":"P-256","kty":"EC","x":"…","y":"…"} (RFC 7638 member order, no
 * spaces; x and y 32 bytes each, left-padded). */
char *acme_jwk(EVP_PKEY *key);

/* The JWK thumbprint: b64url(SHA-256(acme_jwk(key))) (RFC 7638). */
char *acme_thumbprint(EVP_PKEY *key);

/* A JWS in flattened JSON serialization (RFC 8555 6.2), ES256 signature as
 * raw r||s (64 bytes, each left-padded to 32, NOT DER). Protected header:
 * {"alg":"ES256","jwk":<jwk>,"nonce":...,"url":...} when kid is NULL,
 * {"alg":"ES256","kid":kid,"nonce":...,"url":...} otherwise (strings
 * JSON-escaped). payload is the JSON text to sign; "" means POST-as-GET
 * (empty payload field ""). Result:
 * {"protected":"…","payload":"…","signature":"…"}. key must be P-256;
 * nonce, url and payload must not be NULL. */
char *acme_jws(EVP_PKEY *key, const char *kid, const char *nonce, const char *url,
               const char *payload);

/* A CSR for names[0..n) (subject CN = names[0], subjectAltName dNSName for
 * each), signed with key (SHA-256), as base64url DER for the finalize call. */
char *acme_csr(EVP_PKEY *key, const char *const *names, size_t n);

/* The tls-alpn-01 certificate (RFC 8737 3): self-signed with key, subject
 * and SAN dNSName = name, a critical id-pe-acmeIdentifier extension
 * (1.3.6.1.5.5.7.1.31) whose value is an ASN.1 OCTET STRING holding
 * SHA-256(key_authorization) (32 bytes), valid from now-1h for 7 days. */
X509 *acme_alpn_cert(EVP_PKEY *key, const char *name, const char *key_authorization);

/* A temporary self-signed certificate for names[0..n) (CN names[0], SANs
 * all), valid from now-1h for `days` days (1 to 36500): what a name is
 * served with until its first ACME certificate arrives. */
X509 *acme_selfsigned_cert(EVP_PKEY *key, const char *const *names, size_t n, int days);

/* notBefore / notAfter of cert as time_t (UTC). Returns 0 or -1. */
int acme_cert_times(X509 *cert, time_t *not_before, time_t *not_after);

/* True if cert's subjectAltName dNSNames are exactly the set names[0..n)
 * (case-insensitive, order and repeats ignored; other SAN types ignored).
 * False for n == 0, for no or an unreadable subjectAltName. */
bool acme_cert_covers(X509 *cert, const char *const *names, size_t n);

#endif
