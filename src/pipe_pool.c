#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pipe_pool.h"

int pipe_pool_init(struct pipe_pool *p, size_t max_free)
{
    memset(p, 0, sizeof *p);
    p->max_free = max_free;
    if (max_free && !(p->free = calloc(max_free, sizeof *p->free)))
        return -1;
    return 0;
}

int pipe_pool_take(struct pipe_pool *p, int fds[2])
{
    if (p->nfree > 0) {
        p->nfree--;
        fds[0] = p->free[p->nfree][0];
        fds[1] = p->free[p->nfree][1];
    } else if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) {
        fds[0] = fds[1] = -1;
        return -1;
    }
    p->in_use++;
    return 0;
}

static void close_pipe(int fds[2])
{
    close(fds[0]);
    close(fds[1]);
    fds[0] = fds[1] = -1;
}

void pipe_pool_give(struct pipe_pool *p, int fds[2])
{
    if (fds[0] < 0)
        return;
    p->in_use--;
    if (p->nfree >= p->max_free) {
        close_pipe(fds);
        return;
    }
    p->free[p->nfree][0] = fds[0];
    p->free[p->nfree][1] = fds[1];
    p->nfree++;
    fds[0] = fds[1] = -1;
}

void pipe_pool_discard(struct pipe_pool *p, int fds[2])
{
    if (fds[0] < 0)
        return;
    p->in_use--;
    close_pipe(fds);
}

void pipe_pool_free(struct pipe_pool *p)
{
    for (size_t i = 0; i < p->nfree; i++)
        close_pipe(p->free[i]);
    free(p->free);
    memset(p, 0, sizeof *p);
}
