/* probe — active health checks. For a backend with check_interval set,
 * every that many seconds worker 0 connects to each address of each of its
 * endpoints that a listener serves, sends a PROXY header first if the
 * backend wants one (v2 LOCAL, or v1 UNKNOWN: no client to name), does the
 * TLS handshake of an implicit-TLS endpoint (verifying as sessions do) and
 * reads the greeting with the protocol's own dialogue. A greeting marks the
 * address up; a refusal, a timeout (connect_timeout), an error greeting or
 * a rejected certificate marks it down (health.c). A check never sends a
 * command: it closes once the greeting is read. */
#ifndef SALLYPORT_PROBE_H
#define SALLYPORT_PROBE_H

#include <ev.h>

struct generation;
struct prober;

/* Starts the checks of `gen`'s backends on `loop` (the first one at once),
 * holding a reference to `gen`. Returns NULL when no backend asks for
 * checks, or when out of memory (logged). A reload stops the checks and
 * starts the new generation's. */
struct prober *prober_start(struct generation *gen, struct ev_loop *loop);

/* Stops every check and closes its connection; `loop` must still exist. */
void prober_stop(struct prober *prober);

#endif
