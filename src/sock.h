/* sock — socket helpers: address parsing, listening and connecting, all
 * non-blocking and close-on-exec. */
#ifndef SALLYPORT_SOCK_H
#define SALLYPORT_SOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>

struct sock_addr {
    struct sockaddr_storage ss;
    socklen_t len;
};

/* An IPv4 or IPv6 address in the room it needs (a session keeps two). */
union sock_any {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
};

/* Copies an AF_INET or AF_INET6 address into `out` (others: AF_UNSPEC). */
void sock_any_set(union sock_any *out, const struct sockaddr *sa);

/* Parses "host:port", "[v6]:port", "*:port" (all addresses, dual-stack) or a
 * bare "port", resolving host names with getaddrinfo (first result). A missing
 * port takes `default_port` (0 = required). Returns 0, or -1 with a reason in
 * err ("port out of range", "cannot resolve mx.example: ..."). Also writes the
 * host part (without brackets) into host (size hostlen) when host is non-NULL. */
int sock_addr_parse(const char *text, uint16_t default_port, struct sock_addr *out, char *host,
                    size_t hostlen, char *err, size_t errlen);

/* Like sock_addr_parse(), but keeps up to `max` distinct addresses of a
 * host name (in getaddrinfo's order) in out[0..*count). */
int sock_addr_resolve(const char *text, uint16_t default_port, struct sock_addr *out, size_t max,
                      size_t *count, char *host, size_t hostlen, char *err, size_t errlen);

/* Writes the numeric address of an AF_INET or AF_INET6 socket address into
 * ip (INET6_ADDRSTRLEN suffices), an IPv4-mapped IPv6 address as IPv4, and
 * its port into *port. Returns the family written (AF_INET or AF_INET6), or
 * 0 for any other. */
int sock_addr_numeric(const struct sockaddr *sa, char *ip, size_t iplen, unsigned *port);

/* Formats an address as "1.2.3.4:25" or "[::1]:25" into out. Returns out. */
char *sock_addr_format(const struct sockaddr *sa, char *out, size_t outlen);

/* Creates a non-blocking listening socket bound to addr (SO_REUSEADDR; IPv6
 * wildcard is dual-stack). With `shared`, also SO_REUSEPORT: several sockets
 * (one per worker) bind the same address and the kernel spreads incoming
 * connections across them. Returns the fd, or -1 with the reason in err. */
int sock_listen(const struct sock_addr *addr, bool shared, char *err, size_t errlen);

/* Turns Nagle's algorithm off (TCP_NODELAY): every socket that carries a
 * dialogue sends each reply at once, instead of holding a small write until
 * the peer acknowledges the previous one (a delayed ACK costs up to 40 ms).
 * Best effort: a failure (not a TCP socket) is ignored. */
void sock_set_nodelay(int fd);

/* TCP keepalive: after SOCK_KEEPALIVE_IDLE seconds of silence the kernel
 * probes every SOCK_KEEPALIVE_INTERVAL seconds and gives up after
 * SOCK_KEEPALIVE_COUNT unanswered probes, so a peer that vanished (a phone
 * that lost its network, a backend that died) ends a long idle session in
 * about 4 minutes instead of at its idle timeout. Best effort. */
#define SOCK_KEEPALIVE_IDLE     120
#define SOCK_KEEPALIVE_INTERVAL 30
#define SOCK_KEEPALIVE_COUNT    4
void sock_set_keepalive(int fd);

/* Starts a non-blocking connect (TCP_NODELAY and keepalive set). Returns the fd (connection in
 * progress or done), or -1 with errno set. */
int sock_connect(const struct sock_addr *addr);

/* True for a connect() errno that is this process's or host's own trouble
 * (out of descriptors or memory), not the peer's: no reason to think less
 * of the backend. */
bool sock_error_is_local(int err);

/* After a connect completes (socket writable), returns 0 or the errno value
 * of the failure. */
int sock_connect_result(int fd);

#endif
