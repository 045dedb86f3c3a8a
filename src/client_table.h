/* client_table — per-client-address accounting for the abuse limits: how
 * many connections an address has open, and how fast it opens new ones (a
 * token bucket that refills `rate` tokens a second up to `rate`).
 *
 * Addresses are counted the way hosts get them: an IPv4 address (also when
 * it reaches a dual-stack socket as ::ffff:a.b.c.d) one by one, an IPv6
 * address by its /64, the block a single host or home network is given, so
 * a host cannot dodge the limits by walking its own /64.
 *
 * Fixed capacity, allocated once; an address with no open connection may be
 * forgotten to make room, which only ever errs towards admitting. Hashing is
 * keyed by a random seed so a client cannot choose colliding addresses. */
#ifndef SALLYPORT_CLIENT_TABLE_H
#define SALLYPORT_CLIENT_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

enum client_verdict {
    CLIENT_ADMITTED, /* counted: call client_table_release() when it closes */
    CLIENT_TOO_MANY, /* the address has max_per_client connections open */
    CLIENT_TOO_FAST, /* the address opened more than `rate` a second */
};

/* A prefix that the limits do not apply to (client_limit_exceptions). */
struct client_prefix {
    uint8_t addr[16]; /* IPv6, or IPv4 mapped (::ffff:a.b.c.d) */
    unsigned bits;    /* 0..128; IPv4 prefixes are counted from bit 96 */
};

struct client_table;

/* Creates a table for up to `capacity` addresses. max_per_client and rate
 * of 0 mean no limit. Returns NULL when out of memory. */
struct client_table *client_table_new(size_t capacity, unsigned max_per_client, unsigned rate,
                                      const struct client_prefix *exceptions, size_t nexceptions);

void client_table_free(struct client_table *t);

/* A reload's new limits; the counts kept so far stay (an address over a
 * lowered limit is refused new connections until it is under it again).
 * Returns 0, or -1 (the old limits kept) when out of memory. */
int client_table_set_limits(struct client_table *t, unsigned max_per_client, unsigned rate,
                            const struct client_prefix *exceptions, size_t nexceptions);

/* Decides whether a new connection from `peer` at time `now` (seconds) may
 * proceed. On CLIENT_ADMITTED sets *slot to what client_table_release()
 * takes (-1 for an exempt address or an unknown address family). */
enum client_verdict client_table_admit(struct client_table *t, const struct sockaddr *peer,
                                       double now, int *slot);

/* A connection admitted with `slot` has closed. slot -1 is ignored. */
void client_table_release(struct client_table *t, int slot);

/* Open connections counted for `peer` (for tests and logs). */
unsigned client_table_count(const struct client_table *t, const struct sockaddr *peer);

/* True if `peer` (IPv4, IPv6 or IPv4-mapped IPv6) lies in one of the
 * prefixes. */
bool client_prefix_match(const struct client_prefix *prefixes, size_t n,
                         const struct sockaddr *peer);

/* Parses "192.0.2.0/24", "2001:db8::/32", "::1" or "127.0.0.1" (a bare
 * address is a host prefix). Returns 0, or -1 when it is not a prefix. */
int client_prefix_parse(const char *text, struct client_prefix *out);

#endif
