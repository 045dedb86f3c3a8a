#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "health.h"
#include "log.h"
#include "sock.h"

/* Each address carries two marks, one per witness: a session that failed
 * there, a check that failed there. It is down while either mark is in the
 * future. A session that gets through clears both (nothing is more
 * convincing); a check that sees a greeting clears only its own, so that a
 * failure only sessions meet (a refused STARTTLS, XCLIENT or certificate
 * behind a good greeting) is not undone by every check. */
enum { MARKS = HEALTH_CHECK + 1 };

struct health {
    const struct config *config;
    /* [backend][service][address][witness]: until when (ms since the
     * epoch) it counts as down; 0 when that witness last saw it work. */
    _Atomic int64_t *down_until;
    atomic_uint *turns; /* [route] */
};

struct health *health_new(const struct config *config)
{
    struct health *h = calloc(1, sizeof *h);
    size_t slots = config->nbackends * SERVICE_COUNT * ENDPOINT_MAX_ADDRS * MARKS;
    if (!h)
        return NULL;
    h->config = config;
    h->down_until = calloc(slots ? slots : 1, sizeof *h->down_until);
    h->turns = calloc(config->nroutes ? config->nroutes : 1, sizeof *h->turns);
    if (!h->down_until || !h->turns) {
        health_free(h);
        return NULL;
    }
    for (size_t i = 0; i < slots; i++)
        atomic_init(&h->down_until[i], 0);
    for (size_t i = 0; i < config->nroutes; i++)
        atomic_init(&h->turns[i], 0);
    return h;
}

void health_free(struct health *h)
{
    if (!h)
        return;
    free(h->down_until);
    free(h->turns);
    free(h);
}

/* The marks of one address: [HEALTH_SESSION], [HEALTH_CHECK]. */
static _Atomic int64_t *marks(struct health *h, const struct cfg_backend *b, enum service service,
                              size_t addr)
{
    size_t backend = (size_t)(b - h->config->backends);
    size_t at = (backend * SERVICE_COUNT + (size_t)service) * ENDPOINT_MAX_ADDRS + addr;
    return &h->down_until[at * MARKS];
}

static const struct cfg_backend *backend_named(const struct config *config, const char *name)
{
    for (size_t i = 0; i < config->nbackends; i++)
        if (strcmp(config->backends[i].name, name) == 0)
            return &config->backends[i];
    return NULL;
}

void health_carry(struct health *to, const struct health *from)
{
    const struct config *now = to->config, *before = from->config;
    for (size_t i = 0; i < now->nbackends; i++) {
        const struct cfg_backend *b = &now->backends[i];
        const struct cfg_backend *old = backend_named(before, b->name);
        for (int s = 0; old && s < SERVICE_COUNT; s++) {
            const struct endpoint *ep = &b->endpoints[s], *old_ep = &old->endpoints[s];
            for (size_t a = 0; ep->set && old_ep->set && a < ep->naddrs; a++) {
                for (size_t o = 0; o < old_ep->naddrs; o++) {
                    if (ep->addrs[a].len != old_ep->addrs[o].len ||
                        memcmp(&ep->addrs[a].ss, &old_ep->addrs[o].ss, ep->addrs[a].len) != 0)
                        continue;
                    _Atomic int64_t *m = marks(to, b, (enum service)s, a);
                    _Atomic int64_t *was = marks((struct health *)from, old, (enum service)s, o);
                    for (int w = 0; w < MARKS; w++)
                        atomic_store(&m[w], atomic_load(&was[w]));
                    break;
                }
            }
        }
    }
    for (size_t r = 0; r < now->nroutes; r++) {
        for (size_t o = 0; o < before->nroutes; o++) {
            if (strcmp(now->routes[r].name, before->routes[o].name) == 0)
                atomic_store(&to->turns[r], atomic_load(&from->turns[o]));
        }
    }
}

static int64_t ms(double seconds)
{
    return (int64_t)(seconds * 1000.0);
}

bool health_is_down(struct health *h, const struct cfg_backend *b, enum service service,
                    size_t addr, double now)
{
    _Atomic int64_t *m = marks(h, b, service, addr);
    return atomic_load(&m[HEALTH_SESSION]) > ms(now) || atomic_load(&m[HEALTH_CHECK]) > ms(now);
}

/* "mx1 (10.0.0.5:465, submissions)" for the log. */
static void describe(const struct cfg_backend *b, enum service service, size_t addr, char *out,
                     size_t len)
{
    char where[64];
    sock_addr_format((const struct sockaddr *)&b->endpoints[service].addrs[addr].ss, where,
                     sizeof where);
    snprintf(out, len, "%s (%s, %s)", b->name, where, service_info(service)->name);
}

void health_failed(struct health *h, enum health_witness witness, const struct cfg_backend *b,
                   enum service service, size_t addr, double now, const char *why)
{
    bool was_down = health_is_down(h, b, service, addr, now);
    _Atomic int64_t *m = marks(h, b, service, addr);
    atomic_store(&m[witness], ms(now + b->down_time));
    if (was_down)
        return; /* said so already */
    char who[400];
    describe(b, service, addr, who, sizeof who);
    log_warn("backend %s marked down for %us: %s", who, b->down_time, why);
}

void health_served(struct health *h, enum health_witness witness, const struct cfg_backend *b,
                   enum service service, size_t addr, double now)
{
    _Atomic int64_t *m = marks(h, b, service, addr);
    bool was_marked = atomic_exchange(&m[HEALTH_CHECK], 0) != 0;
    /* A check does not undo what a session saw, until its time is over. */
    if (witness == HEALTH_CHECK && atomic_load(&m[HEALTH_SESSION]) > ms(now))
        return;
    was_marked |= atomic_exchange(&m[HEALTH_SESSION], 0) != 0;
    if (!was_marked)
        return;
    char who[400];
    describe(b, service, addr, who, sizeof who);
    log_info("backend %s is up again", who);
}

unsigned health_next_turn(struct health *h, const struct cfg_route *route)
{
    return atomic_fetch_add(&h->turns[route - h->config->routes], 1u);
}
