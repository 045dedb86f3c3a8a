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
 *     one in TLS or relaying, is never closed for this.
 *
 * The state begins at the first sign (a failed accept, or 7/8 of
 * max_connections open) and ends, checked by worker 0 every second, once
 * fewer than 3/4 are open and no sign was seen for OVERLOAD_HOLD seconds.
 * Both are logged, and shown in the metrics. Any thread. */
#ifndef SALLYPORT_OVERLOAD_H
#define SALLYPORT_OVERLOAD_H

#include <stdbool.h>

#define OVERLOAD_TIMEOUT     10
#define OVERLOAD_HOLD        5.0
#define OVERLOAD_EVICT_BATCH 8
#define OVERLOAD_IDLE_MIN    2.0

struct server;

enum overload_cause {
    OVERLOAD_CONNECTIONS, /* close to max_connections */
    OVERLOAD_DESCRIPTORS, /* accept failed: no descriptor left */
};

/* A sign of overload: begins the state (logged once) or prolongs it. */
void overload_pressure(struct server *server, enum overload_cause cause);

bool overload_active(struct server *server);

/* The timeout a session beginning now gets for a phase configured as
 * `configured` seconds. */
unsigned overload_timeout(struct server *server, unsigned configured);

/* Worker 0, every second: ends the state once calm (logged). */
void overload_check(struct server *server);

#endif
