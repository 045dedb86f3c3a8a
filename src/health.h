/* health — what sallyport has learnt about its backends, shared by every
 * worker: each address of each backend endpoint that failed a session
 * before any client byte reached it is "down" for the backend's down_time
 * (passive health: its route tries the others first), and is up again
 * after that time or as soon as a session gets through it. Also each
 * route's round-robin turn. Runtime state indexed by one config's backends
 * and routes (each generation has its own, carried over by name when a
 * reload makes the next one): plain atomics, any thread. */
#ifndef SALLYPORT_HEALTH_H
#define SALLYPORT_HEALTH_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

/* Who saw an address fail or work. */
enum health_witness {
    HEALTH_SESSION, /* a session: before any client byte, or all the way to the relay */
    HEALTH_CHECK,   /* an active check (probe.c): the greeting */
};

struct health;

/* Sized for `config` (its backends and routes). NULL when out of memory. */
struct health *health_new(const struct config *config);
void health_free(struct health *health);

/* A reload: `to` (sized for the new config) takes over the marks of every
 * address that `from` knew under the same backend name and service, and
 * the round-robin turn of every route of the same name. */
void health_carry(struct health *to, const struct health *from);

/* True while address `addr` of backend `b`'s endpoint for `service` is
 * marked down by either witness at time `now` (seconds, ev_now()). */
bool health_is_down(struct health *health, const struct cfg_backend *b, enum service service,
                    size_t addr, double now);

/* It failed for `why`: the witness's mark says down until now +
 * b->down_time; logged when the address was up. */
void health_failed(struct health *health, enum health_witness witness, const struct cfg_backend *b,
                   enum service service, size_t addr, double now, const char *why);

/* It worked: a session clears both marks, a check its own and a session's
 * whose down_time is over (a failure only sessions meet, such as a refused
 * STARTTLS behind a good greeting, stays until then). Logged once, when the
 * address had been marked down. */
void health_served(struct health *health, enum health_witness witness, const struct cfg_backend *b,
                   enum service service, size_t addr, double now);

/* The route's next round-robin turn (0, 1, 2, ... shared by all workers). */
unsigned health_next_turn(struct health *health, const struct cfg_route *route);

#endif
