/* health — what sallyport has learnt about its backends, shared by every
 * worker: each address of each backend endpoint that failed a session
 * before any client byte reached it is "down" for the backend's down_time
 * (passive health: its route tries the others first), and is up again
 * after that time or as soon as a session gets through it. Also each
 * route's round-robin turn. Runtime state, never part of a config: plain
 * atomics, any thread. */
#ifndef SALLYPORT_HEALTH_H
#define SALLYPORT_HEALTH_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

struct health;

/* Sized for `config` (its backends and routes). NULL when out of memory. */
struct health *health_new(const struct config *config);
void health_free(struct health *health);

/* True while address `addr` of backend `b`'s endpoint for `service` is
 * marked down at time `now` (seconds, ev_now()). */
bool health_is_down(struct health *health, const struct cfg_backend *b, enum service service,
                    size_t addr, double now);

/* It failed (a session before any client byte, or a check) for `why`:
 * marked down until now + b->down_time, logged when it was up. */
void health_failed(struct health *health, const struct cfg_backend *b, enum service service,
                   size_t addr, double now, const char *why);

/* It served (a session got through, or a check saw its greeting): marked
 * up, logged when it had been marked down since it last served. */
void health_served(struct health *health, const struct cfg_backend *b, enum service service,
                   size_t addr);

/* The route's next round-robin turn (0, 1, 2, ... shared by all workers). */
unsigned health_next_turn(struct health *health, const struct cfg_route *route);

#endif
