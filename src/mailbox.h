/* mailbox — the embedded SMTP receiver: a minimal, correct final destination
 * that stores accepted mail in a Maildir. It is the default backend for the
 * demo and the tests, and runs in sallyport's own event loop. */
#ifndef SALLYPORT_MAILBOX_H
#define SALLYPORT_MAILBOX_H

#include <ev.h>
#include <stddef.h>

#include "config.h"

struct mailbox;

/* Creates the Maildir (tmp/ new/ cur/) if missing, reads the users file,
 * binds cfg->addr and starts accepting on `loop`. Returns NULL with the reason
 * in err on failure. `cfg` and `global` must outlive the mailbox. */
struct mailbox *mailbox_start(struct ev_loop *loop, const struct cfg_mailbox *cfg,
                              const struct cfg_global *global, char *err, size_t errlen);

/* Stops accepting, closes every session, frees everything. */
void mailbox_stop(struct mailbox *mailbox);

#endif
