/* acme_order — one certificate got from the CA through RFC 8555 section 7,
 * on the ACME thread (acme.c), blocking: the directory, the account
 * (registered once per CA and key, the key kept in STATE_DIR/account.key),
 * the order, each authorization's challenge (answered through
 * acme_challenge.h, then polled), finalize with a CSR for a new P-256 key,
 * the download, and the result written to STATE_DIR/NAME.pem once it loads.
 *
 * Bounded: HTTPS as acme_http.h says, at most as many authorizations as
 * names ordered (each one of them), 60 polls of each authorization and of
 * the order (Retry-After honoured up to 30 s), 3 tries of a badNonce. */
#ifndef SALLYPORT_ACME_ORDER_H
#define SALLYPORT_ACME_ORDER_H

#include <openssl/x509.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <time.h>

#include "config.h"

/* [acme]'s settings, as the thread copied them. */
struct acme_settings {
    char *directory, *contact, *state_dir, *ca;
    unsigned retry_interval;
};

/* One certificate with acme = yes, and its schedule (acme.c's). */
struct acme_job {
    char name[256]; /* [certificate NAME] (section names are shorter) */
    char *names[CERT_MAX_NAMES];
    size_t nnames;
    enum acme_challenge challenge;
    time_t next;       /* when to get it; 0: not looked at yet */
    unsigned failures; /* in a row */
};

/* The conversation with the CA: curl handle, account key and URL, nonce. */
struct acme_client;

/* Sleeps `seconds` between polls; false when the thread is stopping. */
typedef bool acme_pause_fn(void *arg, unsigned seconds);

/* `stop` aborts a transfer in flight once true. NULL when out of memory. */
struct acme_client *acme_client_new(const atomic_bool *stop, acme_pause_fn *pause, void *arg);

/* Gets `job`'s certificate and installs it: 0 with *leaf (the caller frees)
 * set, or -1 with the reason in err (the CA's own words when it gave any).
 * A failure makes the next order look the account up again. */
int acme_client_order(struct acme_client *client, const struct acme_settings *s,
                      const struct acme_job *job, X509 **leaf, char *err, size_t errlen);

/* The CA's Retry-After of a 429 or 503 during the last order, else 0. */
unsigned acme_client_retry_after(const struct acme_client *client);

void acme_client_free(struct acme_client *client);

#endif
