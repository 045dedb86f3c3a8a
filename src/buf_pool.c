#include <stdlib.h>
#include <string.h>

#include "buf_pool.h"

void buf_pool_init(struct buf_pool *p, size_t max_free)
{
    memset(p, 0, sizeof *p);
    p->max_free = max_free;
}

/* A spare buffer's first bytes hold the next spare one. */
static struct buf *next_of(struct buf *b)
{
    struct buf *next;
    memcpy(&next, b->data, sizeof next);
    return next;
}

struct buf *buf_pool_take(struct buf_pool *p)
{
    struct buf *b = p->free;
    if (b) {
        p->free = next_of(b);
        p->nfree--;
    } else if (!(b = malloc(sizeof *b))) {
        return NULL;
    }
    b->len = 0;
    p->in_use++;
    return b;
}

void buf_pool_give(struct buf_pool *p, struct buf *b)
{
    if (!b)
        return;
    p->in_use--;
    if (p->nfree >= p->max_free) {
        free(b);
        return;
    }
    memcpy(b->data, &p->free, sizeof p->free);
    p->free = b;
    p->nfree++;
}

void buf_pool_give_if_empty(struct buf_pool *p, struct buf **slot)
{
    if (*slot && buf_empty(*slot)) {
        buf_pool_give(p, *slot);
        *slot = NULL;
    }
}

void buf_pool_drain(struct buf_pool *p)
{
    while (p->free) {
        struct buf *b = p->free;
        p->free = next_of(b);
        free(b);
    }
    p->nfree = 0;
}
