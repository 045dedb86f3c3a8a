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

/* Marks it down until now + b->down_time. Returns true if it was up (a
 * change worth a log line). */
bool health_mark_down(struct health *health, const struct cfg_backend *b, enum service service,
                      size_t addr, double now);

/* Marks it up. Returns true if it had been marked down since it last
 * served (a change worth a log line). */
bool health_mark_up(struct health *health, const struct cfg_backend *b, enum service service,
                    size_t addr);

/* The route's next round-robin turn (0, 1, 2, ... shared by all workers). */
unsigned health_next_turn(struct health *health, const struct cfg_route *route);

#endif
