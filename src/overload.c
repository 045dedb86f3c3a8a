#include <pthread.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "overload.h"
#include "server.h"

static const char *const cause_names[] = {
    [OVERLOAD_CONNECTIONS] = "connections nearly at max_connections",
    [OVERLOAD_DESCRIPTORS] = "no descriptor left (RLIMIT_NOFILE)",
};

/* Milliseconds on the monotonic clock: a wall clock step never ends or
 * prolongs the state. */
static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool overload_enabled(struct server *server)
{
    return atomic_load_explicit(&server->overload_adapt, memory_order_relaxed);
}

void overload_pressure(struct server *server, enum overload_cause cause)
{
    if (!overload_enabled(server))
        return;
    atomic_store(&server->overload_seen_ms, now_ms());
    bool was = false;
    if (!atomic_compare_exchange_strong(&server->overloaded, &was, true))
        return;
    atomic_fetch_add_explicit(&server->overload_entered, 1, memory_order_relaxed);
    log_warn("overload: %s (%u of %u connections open): cleartext and handshake timeouts are "
             "%us now, and clients silent for %.0fs without TLS are closed, oldest first, to "
             "admit new ones",
             cause_names[cause], atomic_load(&server->nsessions),
             atomic_load(&server->max_connections), OVERLOAD_TIMEOUT, OVERLOAD_IDLE_MIN);
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
    long long seen = atomic_load(&server->overload_seen_ms);
    if ((unsigned long long)open * 4 >= (unsigned long long)max * 3 ||
        now_ms() - seen < (long long)(OVERLOAD_HOLD * 1000.))
        return;
    atomic_store(&server->overloaded, false);
    /* A sign another worker gave meanwhile found the state still on and
     * left it so: keep it on. */
    if (atomic_load(&server->overload_seen_ms) != seen) {
        atomic_store(&server->overloaded, true);
        return;
    }
    log_info("overload: over (%u of %u connections open)", open, max);
}

bool overload_refill_reserve(struct server *server)
{
    if (!overload_enabled(server))
        return true;
    bool whole = true;
    pthread_mutex_lock(&server->reserve_lock);
    for (size_t i = 0; i < OVERLOAD_RESERVE_FDS; i++) {
        if (server->reserve[i] < 0)
            server->reserve[i] = eventfd(0, EFD_CLOEXEC);
        whole = whole && server->reserve[i] >= 0;
    }
    pthread_mutex_unlock(&server->reserve_lock);
    return whole;
}

size_t overload_release_reserve(struct server *server)
{
    size_t released = 0;
    pthread_mutex_lock(&server->reserve_lock);
    for (size_t i = 0; i < OVERLOAD_RESERVE_FDS && !released; i++) {
        if (server->reserve[i] >= 0) {
            close(server->reserve[i]);
            server->reserve[i] = -1;
            released = 1;
        }
    }
    pthread_mutex_unlock(&server->reserve_lock);
    return released;
}

void overload_free_reserve(struct server *server)
{
    while (overload_release_reserve(server) > 0)
        ;
}
