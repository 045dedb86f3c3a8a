/* log_queue — see log_queue.h. */
#include <string.h>

#include "log_queue.h"

/* What precedes each message's text in the ring. */
struct header {
    int64_t sec;
    int32_t nsec;
    uint16_t len;
    uint8_t level;
};

/* Copies n bytes into the ring at offset `at`, wrapping at its end. */
static void ring_put(struct log_queue *q, size_t at, const void *from, size_t n)
{
    at %= q->size;
    size_t first = n < q->size - at ? n : q->size - at;
    memcpy(q->ring + at, from, first);
    memcpy(q->ring, (const unsigned char *)from + first, n - first);
}

static void ring_get(const struct log_queue *q, size_t at, void *to, size_t n)
{
    at %= q->size;
    size_t first = n < q->size - at ? n : q->size - at;
    memcpy(to, q->ring + at, first);
    memcpy((unsigned char *)to + first, q->ring, n - first);
}

void log_queue_init(struct log_queue *q, void *storage, size_t size)
{
    q->ring = storage;
    q->size = size;
    q->head = q->used = q->lines = 0;
    atomic_init(&q->dropped, 0);
}

bool log_queue_push(struct log_queue *q, const struct timespec *time, enum log_level level,
                    const char *text, size_t len)
{
    if (len > LOG_MESSAGE_MAX)
        len = LOG_MESSAGE_MAX;
    struct header h = {.sec = (int64_t)time->tv_sec,
                       .nsec = (int32_t)time->tv_nsec,
                       .len = (uint16_t)len,
                       .level = (uint8_t)level};
    if (q->size - q->used < sizeof h + len) {
        log_queue_count_dropped(q, 1);
        return false;
    }
    size_t tail = q->head + q->used;
    ring_put(q, tail, &h, sizeof h);
    ring_put(q, tail + sizeof h, text, len);
    q->used += sizeof h + len;
    q->lines++;
    return true;
}

bool log_queue_pop(struct log_queue *q, struct log_record *out)
{
    if (q->lines == 0)
        return false;
    struct header h;
    ring_get(q, q->head, &h, sizeof h);
    ring_get(q, q->head + sizeof h, out->text, h.len);
    out->text[h.len] = '\0';
    out->len = h.len;
    out->level = (enum log_level)h.level;
    out->time = (struct timespec){.tv_sec = (time_t)h.sec, .tv_nsec = h.nsec};
    q->head = (q->head + sizeof h + h.len) % q->size;
    q->used -= sizeof h + h.len;
    q->lines--;
    return true;
}

void log_queue_count_dropped(struct log_queue *q, uint64_t n)
{
    atomic_fetch_add_explicit(&q->dropped, n, memory_order_relaxed);
}

uint64_t log_queue_dropped(const struct log_queue *q)
{
    return atomic_load_explicit(&((struct log_queue *)q)->dropped, memory_order_relaxed);
}
