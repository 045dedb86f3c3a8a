#include <ev.h>

#include "log.h"
#include "overload.h"
#include "server.h"

static const char *const cause_names[] = {
    [OVERLOAD_CONNECTIONS] = "connections nearly at max_connections",
    [OVERLOAD_DESCRIPTORS] = "no descriptor left to accept with (RLIMIT_NOFILE)",
};

void overload_pressure(struct server *server, enum overload_cause cause)
{
    atomic_store_explicit(&server->overload_seen_ms, (long long)(ev_time() * 1000.),
                          memory_order_relaxed);
    bool was = false;
    if (!atomic_compare_exchange_strong(&server->overloaded, &was, true))
        return;
    atomic_fetch_add_explicit(&server->overload_entered, 1, memory_order_relaxed);
    log_warn("overload: %s (%u of %u connections open): cleartext and handshake timeouts are "
             "%us now, and clients that have not begun TLS are closed, oldest first, to admit "
             "new ones",
             cause_names[cause], atomic_load(&server->nsessions),
             atomic_load(&server->max_connections), OVERLOAD_TIMEOUT);
}

bool overload_active(struct server *server)
{
    return atomic_load_explicit(&server->overloaded, memory_order_relaxed);
}

unsigned overload_timeout(struct server *server, unsigned configured)
{
    return overload_active(server) && configured > OVERLOAD_TIMEOUT ? OVERLOAD_TIMEOUT : configured;
}

void overload_check(struct server *server)
{
    if (!overload_active(server))
        return;
    unsigned open = atomic_load(&server->nsessions);
    unsigned max = atomic_load(&server->max_connections);
    double seen = (double)atomic_load_explicit(&server->overload_seen_ms, memory_order_relaxed);
    if ((unsigned long long)open * 4 >= (unsigned long long)max * 3 ||
        ev_time() * 1000. - seen < OVERLOAD_HOLD * 1000.)
        return;
    atomic_store(&server->overloaded, false);
    log_info("overload: over (%u of %u connections open)", open, max);
}
