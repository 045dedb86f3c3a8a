/* log_sink — see log_sink.h. */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log_sink.h"

_Static_assert(LOG_SYSLOG_SOCKET_MAX < sizeof(((struct sockaddr_un *)0)->sun_path),
               "LOG_SYSLOG_SOCKET_MAX must fit sun_path");

void log_sink_init(struct log_sink *s)
{
    s->fd = -1;
    s->path[0] = '\0';
    s->attempted = false;
}

void log_sink_close(struct log_sink *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
}

bool log_sink_stderr(const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(STDERR_FILENO, buf, len);
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            /* A non-blocking stderr (inherited so): wait as a blocking one would. */
            struct pollfd p = {.fd = STDERR_FILENO, .events = POLLOUT};
            if (poll(&p, 1, -1) < 0 && errno != EINTR)
                return false;
        } else if (n < 0 && errno != EINTR) {
            return false;
        }
    }
    return true;
}

static double since(const struct timespec *then)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - then->tv_sec) + (double)(now.tv_nsec - then->tv_nsec) / 1e9;
}

/* Connects to `path` unless an attempt was made within LOG_SYSLOG_RETRY. */
static bool syslog_connect(struct log_sink *s, const char *path)
{
    if (s->attempted && since(&s->last_attempt) < LOG_SYSLOG_RETRY)
        return false;
    s->attempted = true;
    clock_gettime(CLOCK_MONOTONIC, &s->last_attempt);
    size_t len = strlen(path);
    if (len > LOG_SYSLOG_SOCKET_MAX)
        return false;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    memcpy(addr.sun_path, path, len);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        close(fd);
        return false;
    }
    s->fd = fd;
    memcpy(s->path, path, len + 1);
    return true;
}

/* One send; true when the datagram went out. */
static bool syslog_send(const struct log_sink *s, const char *msg, size_t len)
{
    ssize_t n;
    do
        n = send(s->fd, msg, len, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n >= 0;
}

bool log_sink_syslog(struct log_sink *s, const char *path, const char *msg, size_t len)
{
    if (s->fd >= 0 && strcmp(s->path, path) != 0) {
        log_sink_close(s); /* a reload named another socket: go there now */
        s->attempted = false;
    }
    if (s->fd < 0 && !syslog_connect(s, path))
        return false;
    if (syslog_send(s, msg, len))
        return true;
    if (errno == EMSGSIZE)
        return false; /* this line only: the socket is fine */
    /* The reader went away (ECONNREFUSED) or was replaced: connect again, once. */
    log_sink_close(s);
    return syslog_connect(s, path) && syslog_send(s, msg, len);
}
