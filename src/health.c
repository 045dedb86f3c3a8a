#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "health.h"
#include "log.h"
#include "sock.h"

struct health {
    const struct config *config;
    /* [backend][service][address]: until when (ms since the epoch) it is
     * down; 0 once it served (or never failed). */
    _Atomic int64_t *down_until;
    atomic_uint *turns; /* [route] */
};

struct health *health_new(const struct config *config)
{
    struct health *h = calloc(1, sizeof *h);
    size_t slots = config->nbackends * SERVICE_COUNT * ENDPOINT_MAX_ADDRS;
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

static _Atomic int64_t *slot(struct health *h, const struct cfg_backend *b, enum service service,
                             size_t addr)
{
    size_t backend = (size_t)(b - h->config->backends);
    return &h->down_until[(backend * SERVICE_COUNT + (size_t)service) * ENDPOINT_MAX_ADDRS + addr];
}

static int64_t ms(double seconds)
{
    return (int64_t)(seconds * 1000.0);
}

bool health_is_down(struct health *h, const struct cfg_backend *b, enum service service,
                    size_t addr, double now)
{
    return atomic_load(slot(h, b, service, addr)) > ms(now);
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

void health_failed(struct health *h, const struct cfg_backend *b, enum service service, size_t addr,
                   double now, const char *why)
{
    int64_t until = ms(now + b->down_time);
    if (until <= ms(now))
        until = ms(now) + 1;
    if (atomic_exchange(slot(h, b, service, addr), until) > ms(now))
        return; /* already down: said so */
    char who[400];
    describe(b, service, addr, who, sizeof who);
    log_warn("backend %s marked down for %us: %s", who, b->down_time, why);
}

void health_served(struct health *h, const struct cfg_backend *b, enum service service, size_t addr)
{
    _Atomic int64_t *s = slot(h, b, service, addr);
    if (atomic_load(s) == 0 || atomic_exchange(s, 0) == 0)
        return;
    char who[400];
    describe(b, service, addr, who, sizeof who);
    log_info("backend %s is up again", who);
}

unsigned health_next_turn(struct health *h, const struct cfg_route *route)
{
    return atomic_fetch_add(&h->turns[route - h->config->routes], 1u);
}
