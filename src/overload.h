/* overload — the stress-adaptive state, as Postfix's "stress" mode: when
 * client connections (max_connections) or descriptors (RLIMIT_NOFILE) are
 * nearly exhausted, sallyport gives the clients that have done least less
 * time and less room, so that a crowd of silent connections cannot keep a
 * real user out:
 *
 *   - the cleartext and TLS handshake timeouts of sessions that begin now
 *     shrink to OVERLOAD_TIMEOUT seconds (when configured longer);
 *   - a worker that cannot accept (no slot, or EMFILE), connect to a
 *     backend or accept in its mailbox (EMFILE) closes its oldest sessions
 *     that have sent nothing for OVERLOAD_IDLE_MIN seconds and not begun
 *     TLS (session_evict_idle()); a session that sent a byte, and so every
 *     one in TLS or relaying, is never closed for this;
 *   - the process holds back OVERLOAD_RESERVE_FDS descriptors, taken at
 *     start: listeners accept only while the reserve is whole (or while no
 *     session is open, when there is nobody to hold it for), and a session
 *     already admitted takes one (its backend connection, the mailbox's
 *     side of it, its message file) when none is left.
 *
 * The state begins at the first sign (a failed accept, or 7/8 of
 * max_connections open) and ends, checked by worker 0 every second, once
 * fewer than 3/4 are open and no sign was seen for OVERLOAD_HOLD seconds.
 * Both are logged, and shown in the metrics. `overload = off` ([global])
 * turns all of it off: limits then only pause accepting, as before. Any
 * thread. */
#ifndef SALLYPORT_OVERLOAD_H
#define SALLYPORT_OVERLOAD_H

#include <stdbool.h>
#include <stddef.h>

#define OVERLOAD_TIMEOUT     10
#define OVERLOAD_HOLD        5.0
#define OVERLOAD_EVICT_BATCH 8
#define OVERLOAD_IDLE_MIN    2.0
#define OVERLOAD_RESERVE_FDS 4

struct server;

enum overload_cause {
    OVERLOAD_CONNECTIONS, /* close to max_connections */
    OVERLOAD_DESCRIPTORS, /* no descriptor left */
};

/* Whether the running config lets sallyport adapt (overload = adapt). */
bool overload_enabled(struct server *server);

/* A sign of overload: begins the state (logged once) or prolongs it. */
void overload_pressure(struct server *server, enum overload_cause cause);

bool overload_active(struct server *server);

/* The timeout a session beginning now gets for a phase configured as
 * `configured` seconds. */
unsigned overload_timeout(struct server *server, unsigned configured);

/* Worker 0, every second: ends the state once calm (logged). */
void overload_check(struct server *server);

/* Takes the reserve back as far as descriptors allow; true when it is
 * whole (always, with overload = off: there is none then). */
bool overload_refill_reserve(struct server *server);

/* Gives one reserved descriptor back to the process for an admitted
 * session that needs one now; returns 1, or 0 when none is left. */
size_t overload_release_reserve(struct server *server);

/* At exit: closes the reserve. */
void overload_free_reserve(struct server *server);

#endif
