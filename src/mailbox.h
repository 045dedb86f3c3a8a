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

struct generation;
struct mailbox;

/* Starts mailbox `index` of generation `gen` accepting on `loop`, on the
 * socket of worker `worker` (the generation's to close), with that
 * worker's users database (taken over). The generation made its maildir
 * and checked its users file. Holds a reference to `gen` until stopped, so
 * that its sessions keep their config across reloads. `total` counts the
 * mailbox sessions of the whole process (a graceful stop waits for them);
 * the generation's mailbox_open[index] those on this address, for
 * max_connections. Sessions take their buffers from `bufs` (the worker's
 * pool). Returns NULL (logged) when out of memory. */
struct mailbox *mailbox_start(struct ev_loop *loop, struct generation *gen, size_t index,
                              unsigned worker, struct buf_pool *bufs, atomic_uint *total);

/* A reload: stops accepting for good (the generation closes the socket);
 * the sessions go on. */
void mailbox_retire(struct mailbox *mailbox);

/* When accept runs out of descriptors, `make_room(arg)` is asked to free
 * some (returning how many) before the mailbox pauses accepting. */
void mailbox_set_make_room(struct mailbox *mailbox, size_t (*make_room)(void *arg), void *arg);

/* Sessions this mailbox has open (on its worker). */
size_t mailbox_session_count(const struct mailbox *mailbox);

/* Graceful stop, time over: every session ends, with "421 Shutting down"
 * first where the client waits for a reply (not in the middle of a TLS
 * handshake or of DATA: a message cut short never reaches new/). */
void mailbox_goodbye(struct mailbox *mailbox);

/* Stops accepting, closes every session, frees everything. */
void mailbox_stop(struct mailbox *mailbox);

#endif
