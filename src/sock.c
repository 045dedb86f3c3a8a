#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sock.h"

int sock_addr_parse(const char *text, uint16_t default_port, struct sock_addr *out, char *host,
                    size_t hostlen, char *err, size_t errlen)
{
    size_t n;
    return sock_addr_resolve(text, default_port, out, 1, &n, host, hostlen, err, errlen);
}

/* True if `a` is already among out[0..n). */
static bool seen_address(const struct sock_addr *out, size_t n, const struct sockaddr *a,
                         socklen_t len)
{
    for (size_t i = 0; i < n; i++)
        if (out[i].len == len && memcmp(&out[i].ss, a, len) == 0)
            return true;
    return false;
}

int sock_addr_resolve(const char *text, uint16_t default_port, struct sock_addr *out, size_t max,
                      size_t *count, char *host, size_t hostlen, char *err, size_t errlen)
{
    char hostbuf[256] = "";
    char portbuf[16] = "";
    const char *colon;

    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close || (size_t)(close - text - 1) >= sizeof hostbuf) {
            snprintf(err, errlen, "bad address '%s': expected [ipv6]:port", text);
            return -1;
        }
        memcpy(hostbuf, text + 1, (size_t)(close - text - 1));
        hostbuf[close - text - 1] = '\0';
        if (close[1] == ':')
            snprintf(portbuf, sizeof portbuf, "%s", close + 2);
        else if (close[1] != '\0') {
            snprintf(err, errlen, "bad address '%s': expected [ipv6]:port", text);
            return -1;
        }
    } else if ((colon = strrchr(text, ':')) != NULL) {
        if (strchr(text, ':') != colon) {
            snprintf(err, errlen, "bad address '%s': write IPv6 addresses as [addr]:port", text);
            return -1;
        }
        if ((size_t)(colon - text) >= sizeof hostbuf) {
            snprintf(err, errlen, "bad address '%s': host name too long", text);
            return -1;
        }
        memcpy(hostbuf, text, (size_t)(colon - text));
        hostbuf[colon - text] = '\0';
        snprintf(portbuf, sizeof portbuf, "%s", colon + 1);
    } else if (text[0] >= '0' && text[0] <= '9' && strspn(text, "0123456789") == strlen(text)) {
        snprintf(portbuf, sizeof portbuf, "%s", text);
    } else {
        snprintf(hostbuf, sizeof hostbuf, "%s", text);
    }

    long port = default_port;
    if (portbuf[0]) {
        char *end;
        errno = 0;
        port = strtol(portbuf, &end, 10);
        if (*end || errno || port < 1 || port > 65535) {
            snprintf(err, errlen, "bad port '%s' in '%s': expected 1-65535", portbuf, text);
            return -1;
        }
    }
    if (port == 0) {
        snprintf(err, errlen, "address '%s' has no port", text);
        return -1;
    }

    memset(out, 0, sizeof *out);
    *count = 1;
    if (hostbuf[0] == '\0' || strcmp(hostbuf, "*") == 0) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_addr = in6addr_any;
        sin6->sin6_port = htons((uint16_t)port);
        out->len = sizeof *sin6;
        snprintf(hostbuf, sizeof hostbuf, "::");
    } else {
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG};
        struct addrinfo *res = NULL;
        char service[8];
        snprintf(service, sizeof service, "%ld", port);
        int rc = getaddrinfo(hostbuf, service, &hints, &res);
        if (rc == EAI_NONAME || rc == EAI_ADDRFAMILY || (rc == 0 && !res)) {
            hints.ai_flags = 0; /* loopback-only hosts have no "configured" address */
            rc = getaddrinfo(hostbuf, service, &hints, &res);
        }
        if (rc != 0 || !res) {
            snprintf(err, errlen, "cannot resolve '%s': %s", hostbuf,
                     rc ? gai_strerror(rc) : "no address");
            return -1;
        }
        size_t n = 0;
        for (const struct addrinfo *ai = res; ai && n < max; ai = ai->ai_next) {
            if (ai->ai_addrlen > sizeof out[n].ss ||
                seen_address(out, n, ai->ai_addr, ai->ai_addrlen))
                continue;
            memset(&out[n], 0, sizeof out[n]);
            memcpy(&out[n].ss, ai->ai_addr, ai->ai_addrlen);
            out[n].len = ai->ai_addrlen;
            n++;
        }
        freeaddrinfo(res);
        *count = n;
    }
    if (host)
        snprintf(host, hostlen, "%s", hostbuf);
    return 0;
}

bool sock_error_is_local(int err)
{
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
}

int sock_addr_numeric(const struct sockaddr *sa, char *ip, size_t iplen, unsigned *port)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
        *port = ntohs(sin->sin_port);
        return inet_ntop(AF_INET, &sin->sin_addr, ip, (socklen_t)iplen) ? AF_INET : 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
        *port = ntohs(sin6->sin6_port);
        if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr))
            return inet_ntop(AF_INET, &sin6->sin6_addr.s6_addr[12], ip, (socklen_t)iplen) ? AF_INET
                                                                                          : 0;
        return inet_ntop(AF_INET6, &sin6->sin6_addr, ip, (socklen_t)iplen) ? AF_INET6 : 0;
    }
    return 0;
}

char *sock_addr_format(const struct sockaddr *sa, char *out, size_t outlen)
{
    char ip[INET6_ADDRSTRLEN];
    unsigned port;
    int family = sock_addr_numeric(sa, ip, sizeof ip, &port);
    if (family == AF_INET)
        snprintf(out, outlen, "%s:%u", ip, port);
    else if (family == AF_INET6)
        snprintf(out, outlen, "[%s]:%u", ip, port);
    else
        snprintf(out, outlen, "?");
    return out;
}

int sock_listen(const struct sock_addr *addr, bool shared, char *err, size_t errlen)
{
    int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1, zero = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (shared && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) {
        snprintf(err, errlen, "SO_REUSEPORT: %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (addr->ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    char text[64];
    if (bind(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0) {
        snprintf(err, errlen, "cannot bind %s: %s",
                 sock_addr_format((const struct sockaddr *)&addr->ss, text, sizeof text),
                 strerror(errno));
        close(fd);
        return -1;
    }
    if (listen(fd, 511) < 0) {
        snprintf(err, errlen, "listen: %s", strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

void sock_any_set(union sock_any *out, const struct sockaddr *sa)
{
    memset(out, 0, sizeof *out);
    if (sa->sa_family == AF_INET)
        memcpy(&out->in, sa, sizeof out->in);
    else if (sa->sa_family == AF_INET6)
        memcpy(&out->in6, sa, sizeof out->in6);
    else
        out->sa.sa_family = AF_UNSPEC;
}

void sock_set_nodelay(int fd)
{
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void sock_set_keepalive(int fd)
{
    int on = 1, idle = SOCK_KEEPALIVE_IDLE, interval = SOCK_KEEPALIVE_INTERVAL,
        count = SOCK_KEEPALIVE_COUNT;
    (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
}

int sock_connect(const struct sock_addr *addr)
{
    int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    sock_set_nodelay(fd);
    sock_set_keepalive(fd);
    if (connect(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0 && errno != EINPROGRESS) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int sock_connect_result(int fd)
{
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        return errno;
    return soerr;
}
