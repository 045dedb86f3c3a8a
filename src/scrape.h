/* scrape — the [metrics] endpoint: plain HTTP, `GET /metrics` answered
 * with metrics.c's Prometheus text, on worker 0's loop.
 *
 * Bounded in every way a scraper could push it: SCRAPE_CONNECTIONS_MAX
 * connections at once (more wait in the listen backlog), a request head
 * of SCRAPE_REQUEST_MAX bytes (else 431), SCRAPE_TIMEOUT seconds for the
 * whole exchange, a body of at most SCRAPE_BODY_MAX bytes (else 500).
 * Reading and writing never block: a scraper that stalls holds only its
 * own connection. One request per connection (Connection: close). */
#ifndef SALLYPORT_SCRAPE_H
#define SALLYPORT_SCRAPE_H

#include <ev.h>

#include "sock.h"

#define SCRAPE_CONNECTIONS_MAX 8
#define SCRAPE_REQUEST_MAX     4096
#define SCRAPE_TIMEOUT         10.0
#define SCRAPE_BODY_MAX        (4u << 20)

struct scrape;
struct server;

/* Binds and listens on `addr` (before privileges are dropped). Returns
 * NULL with the reason in err. */
struct scrape *scrape_new(const struct sock_addr *addr, char *err, size_t errlen);

/* Serves `server`'s metrics on `loop` (worker 0's) until scrape_free(). */
void scrape_start(struct scrape *sc, struct ev_loop *loop, struct server *server);

/* Closes every connection and the socket. NULL is fine. */
void scrape_free(struct scrape *sc);

#endif
