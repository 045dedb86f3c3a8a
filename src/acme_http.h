/* acme_http — HTTPS to the ACME server, with libcurl: one connection kept
 * open, bounded in time and size, and the three response headers ACME
 * needs (Replay-Nonce, Location, Retry-After). Blocking: the ACME thread's
 * only (acme.c), never an event loop's. */
#ifndef SALLYPORT_ACME_HTTP_H
#define SALLYPORT_ACME_HTTP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

/* A response body larger than this is refused (a certificate chain is a few
 * KiB; a directory or an order well under one). */
#define ACME_HTTP_MAX_BODY (1024 * 1024)

struct acme_http;

struct acme_response {
    long status; /* HTTP status; 0 when no response came */
    char *body;  /* NUL-terminated, malloc'd (may be empty) */
    size_t len;
    char nonce[256];     /* Replay-Nonce, "" if none */
    char location[1024]; /* Location, "" if none */
    char content_type[128];
    unsigned retry_after; /* seconds (Retry-After as a number), 0 if none */
};

/* `ca`: PEM bundle verifying the server (NULL: the system store). `stop`:
 * a transfer in progress ends soon after it turns true. NULL when curl
 * cannot be set up. */
struct acme_http *acme_http_new(const char *ca, const atomic_bool *stop);
void acme_http_free(struct acme_http *http);

/* GET (head false) or HEAD `url`. Returns 0 with *res filled, or -1 with a
 * reason in err (no connection, timeout, TLS, a body over the bound). */
int acme_http_get(struct acme_http *http, const char *url, bool head, struct acme_response *res,
                  char *err, size_t errlen);

/* POST `body` as application/jose+json. As acme_http_get(). */
int acme_http_post(struct acme_http *http, const char *url, const char *body,
                   struct acme_response *res, char *err, size_t errlen);

void acme_response_clear(struct acme_response *res);

#endif
