/* acme — gets and renews the certificates that say acme = yes (RFC 8555),
 * in one background thread: HTTPS to the CA is blocking there and never in
 * an event loop. It answers the CA's challenges through acme_challenge.h,
 * writes each certificate with its key to STATE_DIR/NAME.pem (atomically),
 * and then calls `installed`, which makes the daemon load it the way a
 * reload does (a new generation; sessions keep theirs).
 *
 * Schedule: a certificate is got when the state directory has none that
 * covers its names, and renewed once two thirds of its lifetime have
 * passed. A failure is logged and retried after retry_interval, doubling
 * up to 6 hours, with 10% jitter; the certificate served meanwhile is the
 * last good one (or the temporary self-signed one config.c made). */
#ifndef SALLYPORT_ACME_H
#define SALLYPORT_ACME_H

#include <stdbool.h>

#include "config.h"

struct acme;

/* Called on the ACME thread after a certificate file was written. */
typedef void acme_installed_fn(void *arg);

/* True if the config has a certificate with acme = yes. */
bool acme_wanted(const struct config *config);

/* Starts the thread for `config`'s ACME certificates (copied), creating the
 * state directory (0700) first. Returns NULL after logging why when the
 * directory or the thread cannot be made. */
struct acme *acme_start(const struct config *config, acme_installed_fn *installed, void *arg);

/* A reload: the certificates and [acme] settings of the new config (copied).
 * Each certificate's file is looked at again (one removed or for other
 * names is ordered; one that was failing is tried again, its backoff going
 * on from where it was); a new directory orders every one anew. */
void acme_update(struct acme *acme, const struct config *config);

/* SIGUSR1: every certificate is due now (the ones served meanwhile stay
 * until their successors are installed). NULL is fine. */
void acme_renew_all(struct acme *acme);

/* Ends a request in flight, joins the thread and frees everything. */
void acme_stop(struct acme *acme);

#endif
