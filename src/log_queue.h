/* log_queue — the bounded queue of log messages between the threads that
 * log and the one that writes (log.c).
 *
 * A byte ring of records (a small header, then the text), oldest first, in
 * storage the caller provides. It never grows and never blocks: a message
 * that does not fit is dropped and counted. Not thread-safe: the caller
 * holds its lock around push and pop; only the count of dropped lines may
 * be read from any thread without it. */
#ifndef SALLYPORT_LOG_QUEUE_H
#define SALLYPORT_LOG_QUEUE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "log_line.h"

/* The daemon's queue: about a second of a busy gateway's debug lines. */
#define LOG_QUEUE_BYTES (1024 * 1024)

struct log_queue {
    unsigned char *ring;
    size_t size;  /* bytes of ring */
    size_t head;  /* where the oldest record starts */
    size_t used;  /* bytes held */
    size_t lines; /* records held */
    _Atomic uint64_t dropped;
};

/* An empty queue over `size` bytes of `storage` (which outlives it). */
void log_queue_init(struct log_queue *q, void *storage, size_t size);

/* Appends a message (`len` bytes of `text`, cut at LOG_MESSAGE_MAX).
 * Returns false, and counts one dropped line, when it does not fit. */
bool log_queue_push(struct log_queue *q, const struct timespec *time, enum log_level level,
                    const char *text, size_t len);

/* Takes the oldest message into *out (its text NUL-terminated). Returns
 * false when the queue is empty. */
bool log_queue_pop(struct log_queue *q, struct log_record *out);

/* Counts `n` more dropped lines (ones the writer could not deliver). */
void log_queue_count_dropped(struct log_queue *q, uint64_t n);

/* Lines dropped since log_queue_init(). Any thread. */
uint64_t log_queue_dropped(const struct log_queue *q);

#endif
