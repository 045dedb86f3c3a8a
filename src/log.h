/* log — one place for logging.
 *
 * Every message is one line: a UTC timestamp, the level and the text (the
 * `text` format), or one JSON object (the `json` format, log_line.h), sent
 * to standard error or to a syslog socket (log_sink.h).
 *
 * Logging never stops the gateway. Until log_start() (config errors,
 * `sallyport -t`, start-up) log_msg() writes to stderr at once, in the text
 * format. From log_start() to log_stop() it only appends the message to a
 * bounded queue (log_queue.h, LOG_QUEUE_BYTES) and returns; one writer
 * thread renders the queued lines in the configured format and writes them
 * to the configured destination, and it is the only thread that ever waits
 * for a slow reader (a full pipe, a busy journal). A message that finds the
 * queue full is dropped and counted (log_dropped_total()); the writer's
 * next write begins with one warn line "log: N lines dropped (the log
 * reader was too slow)". One exception: when stderr is a regular file (no
 * reader can stall a file) and nothing is queued, log_msg() writes the line
 * there itself, under the queue's lock, so a file has every line at once
 * and in order. */
#ifndef SALLYPORT_LOG_H
#define SALLYPORT_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };

/* log = stderr | syslog */
enum log_destination { LOG_TO_STDERR, LOG_TO_SYSLOG };

/* log_format = text | json */
enum log_format { LOG_FORMAT_TEXT, LOG_FORMAT_JSON };

/* syslog_socket's default, and the longest path a socket address holds. */
#define LOG_SYSLOG_SOCKET_DEFAULT "/dev/log"
#define LOG_SYSLOG_SOCKET_MAX     107

/* A message's longest text, in bytes: longer ones are cut. */
#define LOG_MESSAGE_MAX 2047

/* Messages below `level` are dropped. */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);

/* Parse "debug", "info", "warn", "error" / "stderr", "syslog" / "text",
 * "json"; return 0, or -1 if unknown. */
int log_level_parse(const char *text, enum log_level *out);
int log_destination_parse(const char *text, enum log_destination *out);
int log_format_parse(const char *text, enum log_format *out);

/* "debug", "info", "warn" or "error". */
const char *log_level_name(enum log_level level);

/* Where and how the writer writes from now on, lines already queued
 * included (start-up, and every reload). `syslog_socket` NULL means
 * LOG_SYSLOG_SOCKET_DEFAULT; it is copied. Any thread. */
void log_configure(enum log_destination to, enum log_format format, const char *syslog_socket);

/* Starts the writer thread; from now on log_msg() only queues. Call it
 * with SIGPIPE ignored. Returns 0, or -1 (logged) when no thread could be
 * made: logging then stays synchronous, on stderr. */
int log_start(void);

/* Lets the writer write what is queued, for at most a second (log.c's
 * LOG_STOP_GRACE), and returns true once it has; false when it is still
 * stuck on its reader, which is then left behind (the process may exit; what
 * it held is lost; calling log_stop() again waits for it once more). Once
 * the writer has finished, log_msg() writes to stderr at once again; while
 * it is stuck, log_msg() still only queues. From the main thread, last. */
bool log_stop(void);

/* Lines dropped since the process started: the queue was full, or the
 * destination refused them (a syslog socket that is gone). Any thread. */
uint64_t log_dropped_total(void);

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)

/* Writes `len` bytes of `in` to `out` (size `outsz`, NUL-terminated) with every
 * byte outside printable ASCII shown as \xNN, so that peer-supplied text (SNI,
 * EHLO names) can never forge log lines. Returns `out`. */
char *log_escape(char *out, size_t outsz, const char *in, size_t len);

#endif
