/* mailbox — the embedded SMTP receiver: a minimal, correct final destination
 * that stores accepted mail in a Maildir. It is the default backend for the
 * demo and the tests, and runs in sallyport's own event loop. */
#ifndef SALLYPORT_MAILBOX_H
#define SALLYPORT_MAILBOX_H

#include <ev.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "buf_pool.h"
#include "config.h"

struct mailbox;

/* Creates the Maildir (tmp/ new/ cur/) if missing, reads the users file,
 * binds cfg->addr (SO_REUSEPORT when `shared`: one mailbox per worker on the
 * same address) and starts accepting on `loop`. `open` counts the sessions
 * of every mailbox on that address, for max_connections. Sessions take
 * their buffers from `bufs` (the worker's pool). Returns NULL with
 * the reason in err on failure. `cfg`, `global` and `open` must outlive the
 * mailbox. */
struct mailbox *mailbox_start(struct ev_loop *loop, const struct cfg_mailbox *cfg,
                              const struct cfg_global *global, struct buf_pool *bufs, bool shared,
                              atomic_uint *open, char *err, size_t errlen);

/* Sessions this mailbox has open (on its worker). */
size_t mailbox_session_count(const struct mailbox *mailbox);

/* Graceful stop, time over: every session ends, with "421 Shutting down"
 * first where the client waits for a reply (not in the middle of a TLS
 * handshake or of DATA: a message cut short never reaches new/). */
void mailbox_goodbye(struct mailbox *mailbox);

/* Stops accepting, closes every session, frees everything. */
void mailbox_stop(struct mailbox *mailbox);

#endif
