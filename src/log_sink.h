/* log_sink — where the log writer's lines go: standard error, or a syslog
 * socket (our own small client: an AF_UNIX datagram socket, one line per
 * datagram, RFC 3164 framing from log_line.h). Only the writer thread uses
 * a sink, and only it may block in one. */
#ifndef SALLYPORT_LOG_SINK_H
#define SALLYPORT_LOG_SINK_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "log.h"

/* Seconds between two attempts to connect to the syslog socket. */
#define LOG_SYSLOG_RETRY 1.0

struct log_sink {
    int fd;                               /* the syslog socket, or -1 */
    char path[LOG_SYSLOG_SOCKET_MAX + 1]; /* what fd is connected to */
    struct timespec last_attempt;         /* CLOCK_MONOTONIC */
    bool attempted;
};

void log_sink_init(struct log_sink *s);

/* Writes all `len` bytes to stderr, waiting for a slow reader as long as it
 * takes. Returns false on an error (stderr closed, for one). */
bool log_sink_stderr(const char *buf, size_t len);

/* Sends one datagram to the syslog socket at `path`: connects when not
 * connected (or connected elsewhere: a reload changed the path), and after
 * a failed send connects again once; connecting is tried at most once per
 * LOG_SYSLOG_RETRY. Returns false when the line could not be sent. */
bool log_sink_syslog(struct log_sink *s, const char *path, const char *msg, size_t len);

void log_sink_close(struct log_sink *s);

#endif
