/* buf — a fixed-capacity byte buffer.
 *
 * Every byte sallyport holds for a peer lives in one of these, so every input
 * is bounded by construction: there is no growth path. Data occupies
 * data[0..len); consumers remove from the front with buf_consume(). */
#ifndef SALLYPORT_BUF_H
#define SALLYPORT_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define BUF_CAPACITY 16384

struct buf {
    size_t len;
    uint8_t data[BUF_CAPACITY];
};

static inline size_t buf_space(const struct buf *b)
{
    return sizeof b->data - b->len;
}

static inline bool buf_empty(const struct buf *b)
{
    return b->len == 0;
}

/* Appends `n` bytes; returns false (and appends nothing) if they do not fit. */
static inline bool buf_append(struct buf *b, const void *p, size_t n)
{
    if (n > buf_space(b))
        return false;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return true;
}

static inline bool buf_append_str(struct buf *b, const char *s)
{
    return buf_append(b, s, strlen(s));
}

/* Removes the first `n` bytes (n <= len). */
static inline void buf_consume(struct buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

/* Returns the length of the first line including its "\n" terminator, or 0 if
 * no complete line is buffered yet. */
static inline size_t buf_line_length(const struct buf *b)
{
    const uint8_t *nl = memchr(b->data, '\n', b->len);
    return nl ? (size_t)(nl - b->data) + 1 : 0;
}

#endif
