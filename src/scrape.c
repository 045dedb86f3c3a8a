/* scrape — the [metrics] endpoint's page: GET /metrics answered with
 * metrics.c's Prometheus text (format 0.0.4), served by httpd.c. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "generation.h"
#include "log.h"
#include "metrics.h"
#include "scrape.h"
#include "server.h"
#include "worker.h"

/* The first size tried for the body; doubled up to SCRAPE_BODY_MAX. */
#define BODY_FIRST (64u << 10)

/* The Prometheus text of `server` now, or NULL (logged) when it would not
 * fit in SCRAPE_BODY_MAX or memory ran out. */
static char *render(struct server *server, size_t *len)
{
    struct generation *gen = server_generation(server);
    struct metrics_server_view view = {
        .generation = gen->number,
        .workers = server->nworkers,
        .sessions = atomic_load(&server->nsessions),
        .max_connections = atomic_load(&server->max_connections),
        .mailbox_sessions = atomic_load(&server->mailbox_sessions),
        .start_time = server->start_time,
        .overloaded = atomic_load(&server->overloaded),
        .overload_entered = atomic_load(&server->overload_entered),
        .log_lines_dropped = log_dropped_total(),
    };
    struct metrics_text text = {0};
    for (size_t cap = BODY_FIRST; cap <= SCRAPE_BODY_MAX; cap *= 2) {
        free(text.data);
        text = (struct metrics_text){.data = malloc(cap), .cap = cap};
        if (!text.data)
            break;
        metrics_render(&text, &view, gen->config, gen->health, ev_now(server->workers[0].loop));
        if (!text.full)
            break;
    }
    generation_release(gen);
    if (!text.data || text.full) {
        log_error("metrics: %s",
                  text.data ? "the exposition is larger than its bound" : "out of memory");
        free(text.data);
        return NULL;
    }
    *len = text.len;
    return text.data;
}

void scrape_page(void *server, const char *target, struct httpd_reply *reply)
{
    if (strcmp(target, "/metrics") != 0 && strncmp(target, "/metrics?", 9) != 0) {
        reply->status = "404 Not Found";
    } else if (!(reply->body = render(server, &reply->len))) {
        reply->status = "500 Internal Server Error";
    } else {
        reply->type = "text/plain; version=0.0.4; charset=utf-8";
    }
}
