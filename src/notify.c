#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "notify.h"

static int notify_fd = -1;
static struct sockaddr_un notify_addr;
static socklen_t notify_len;

int notify_open(void)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !path[0])
        return 0;
    size_t len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof notify_addr.sun_path) {
        log_warn("NOTIFY_SOCKET=%s: not a socket path: the service manager will not hear "
                 "from sallyport",
                 path);
        return -1;
    }
    memset(&notify_addr, 0, sizeof notify_addr);
    notify_addr.sun_family = AF_UNIX;
    memcpy(notify_addr.sun_path, path, len);
    if (path[0] == '@')
        notify_addr.sun_path[0] = '\0'; /* abstract: no NUL terminator counted */
    notify_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (path[0] == '/'));
    notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (notify_fd < 0) {
        log_warn("NOTIFY_SOCKET: socket: %s", strerror(errno));
        return -1;
    }
    /* Children (none today) must not talk to the manager in our name. */
    unsetenv("NOTIFY_SOCKET");
    return 0;
}

static void notify_send(const char *text)
{
    if (notify_fd < 0)
        return;
    if (sendto(notify_fd, text, strlen(text), MSG_NOSIGNAL, (struct sockaddr *)&notify_addr,
               notify_len) < 0)
        log_warn("NOTIFY_SOCKET: %s", strerror(errno));
}

void notify_ready(const char *status)
{
    char text[512];
    snprintf(text, sizeof text, "READY=1\nSTATUS=%s", status);
    notify_send(text);
}

void notify_reloading(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    char text[128];
    snprintf(text, sizeof text, "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)now.tv_sec * 1000000ULL + (unsigned long long)now.tv_nsec / 1000);
    notify_send(text);
}

void notify_stopping(void)
{
    notify_send("STOPPING=1");
}

void notify_close(void)
{
    if (notify_fd >= 0)
        close(notify_fd);
    notify_fd = -1;
}
