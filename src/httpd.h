/* httpd — a small plain-HTTP endpoint on worker 0's loop: GET (and HEAD)
 * of the pages one function answers. It serves the [metrics] endpoint
 * (scrape.c's page) and ACME's http-01 answers (acme_challenge.c's page).
 *
 * Bounded in every way a client could push it: a number of connections
 * at once (more wait in the listen backlog), a request head of
 * HTTPD_REQUEST_MAX bytes (else 431), a number of seconds for the whole
 * exchange (struct httpd_limits). Reading and writing never block: a client that stalls
 * holds only its own connection. One request per connection
 * (Connection: close); other methods get 405, a garbled request 400. */
#ifndef SALLYPORT_HTTPD_H
#define SALLYPORT_HTTPD_H

#include <ev.h>
#include <stddef.h>

#include "sock.h"

#define HTTPD_REQUEST_MAX 4096

struct httpd_limits {
    unsigned connections; /* at once */
    double timeout;       /* seconds for one whole exchange */
};
/* The metrics endpoint: a scraper or two, on a management address. */
#define HTTPD_LIMITS_METRICS ((struct httpd_limits){.connections = 8, .timeout = 10.0})
/* http-01 answers: open to the world (the CA asks from anywhere), so many
 * slots, each held for a short while: idle connections cannot fill them
 * all for long enough to turn the CA's check away. */
#define HTTPD_LIMITS_ACME ((struct httpd_limits){.connections = 256, .timeout = 3.0})

struct httpd;

/* What a page answers: the status line's text ("200 OK", "404 Not
 * Found"), a malloc'd body or NULL, and its Content-Type. */
struct httpd_reply {
    const char *status;
    char *body;
    size_t len;
    const char *type;
};

/* Fills *reply for a GET or HEAD of `target` (the request's path and
 * query, at most 255 bytes). reply arrives as 200 OK, text/plain, no body. */
typedef void httpd_page(void *arg, const char *target, struct httpd_reply *reply);

/* Binds and listens on `addr` (before privileges are dropped); `name` is
 * what its log lines say. Returns NULL with the reason in err. */
struct httpd *httpd_new(const struct sock_addr *addr, const char *name, struct httpd_limits limits,
                        char *err, size_t errlen);

/* Answers with `page` on `loop` (worker 0's) until httpd_free(). */
void httpd_start(struct httpd *httpd, struct ev_loop *loop, httpd_page *page, void *arg);

/* Closes every connection and the socket. NULL is fine. */
void httpd_free(struct httpd *httpd);

#endif
