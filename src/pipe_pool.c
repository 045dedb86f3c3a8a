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

long pipe_pool_take(struct pipe_pool *p, int fds[2])
{
    long size;
    if (p->nfree > 0) {
        struct spare_pipe *spare = &p->free[--p->nfree];
        fds[0] = spare->fds[0];
        fds[1] = spare->fds[1];
        size = (long)spare->size;
    } else if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) {
        fds[0] = fds[1] = -1;
        return -1;
    } else if ((size = fcntl(fds[1], F_SETPIPE_SZ, PIPE_POOL_PIPE_SIZE)) < 0 &&
               (size = fcntl(fds[1], F_GETPIPE_SZ)) <= 0) {
        size = 4096; /* what any pipe holds at the least */
    }
    p->in_use++;
    return size;
}

static void close_pipe(int fds[2])
{
    close(fds[0]);
    close(fds[1]);
    fds[0] = fds[1] = -1;
}

void pipe_pool_give(struct pipe_pool *p, int fds[2], size_t size)
{
    if (fds[0] < 0)
        return;
    p->in_use--;
    if (p->nfree >= p->max_free) {
        close_pipe(fds);
        return;
    }
    p->free[p->nfree++] = (struct spare_pipe){{fds[0], fds[1]}, size};
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
        close_pipe(p->free[i].fds);
    free(p->free);
    memset(p, 0, sizeof *p);
}
