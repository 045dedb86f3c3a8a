/* scrape — the [metrics] endpoint's one page: GET /metrics, the Prometheus
 * text of the running daemon (metrics.c), at most SCRAPE_BODY_MAX bytes
 * (else 500). Other paths: 404. Served by httpd.c on worker 0's loop. */
#ifndef SALLYPORT_SCRAPE_H
#define SALLYPORT_SCRAPE_H

#include "httpd.h"

#define SCRAPE_BODY_MAX (4u << 20)

/* An httpd_page; `server` is the struct server. */
void scrape_page(void *server, const char *target, struct httpd_reply *reply);

#endif
