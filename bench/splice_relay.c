/* splice_relay — the floor for any userspace relay in `make bench`.
 *
 *   splice_relay LISTEN_PORT BACKEND_PORT
 *
 * Listens on 127.0.0.1:LISTEN_PORT; for each client it connects to
 * 127.0.0.1:BACKEND_PORT and moves bytes both ways with splice(2) through one
 * pipe per direction (default pipe size), one blocking thread per direction.
 * EOF on one side becomes a half-close (shutdown SHUT_WR) on the other; the
 * connection is closed when both directions have ended. No parsing at all:
 * this is what a passthrough proxy costs once it has routed the connection.
 * Prints "ready" on stdout once listening; SIGTERM/SIGINT end it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

struct pair {
    int client, backend;
    atomic_int ended; /* directions finished; the second one frees */
};

struct dir {
    struct pair *p;
    int from, to;
};

/* One direction: from -> pipe -> to until EOF or an error. */
static void *pump(void *arg)
{
    struct dir *d = arg;
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) == 0) {
        for (;;) {
            ssize_t n = splice(d->from, NULL, pipefd[1], NULL, 1 << 16, SPLICE_F_MOVE);
            if (n <= 0)
                break;
            while (n > 0) {
                ssize_t m = splice(pipefd[0], NULL, d->to, NULL, (size_t)n, SPLICE_F_MOVE);
                if (m <= 0)
                    goto out;
                n -= m;
            }
        }
    out:
        close(pipefd[0]);
        close(pipefd[1]);
    }
    shutdown(d->to, SHUT_WR);
    struct pair *p = d->p;
    free(d);
    if (atomic_fetch_add(&p->ended, 1) == 1) {
        close(p->client);
        close(p->backend);
        free(p);
    }
    return NULL;
}

static int start_dir(struct pair *p, int from, int to)
{
    struct dir *d = malloc(sizeof *d);
    if (!d)
        return -1;
    d->p = p;
    d->from = from;
    d->to = to;
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    int r = pthread_create(&t, &attr, pump, d);
    pthread_attr_destroy(&attr);
    if (r != 0) {
        free(d);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: splice_relay LISTEN_PORT BACKEND_PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    struct sockaddr_in la = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    struct sockaddr_in ba = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    la.sin_addr.s_addr = ba.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&la, sizeof la) < 0 || listen(lfd, 1024) < 0) {
        perror("splice_relay: listen");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            perror("splice_relay: accept");
            usleep(100000);
            continue;
        }
        int b = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (b < 0 || connect(b, (struct sockaddr *)&ba, sizeof ba) < 0) {
            perror("splice_relay: connect");
            close(c);
            if (b >= 0)
                close(b);
            continue;
        }
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct pair *p = calloc(1, sizeof *p);
        if (!p) {
            close(c);
            close(b);
            continue;
        }
        p->client = c;
        p->backend = b;
        atomic_init(&p->ended, 0);
        if (start_dir(p, c, b) < 0) {
            close(c);
            close(b);
            free(p);
            continue;
        }
        if (start_dir(p, b, c) < 0) {
            /* The first direction owns the pair now: end it. */
            shutdown(c, SHUT_RDWR);
            atomic_fetch_add(&p->ended, 1);
        }
    }
}
