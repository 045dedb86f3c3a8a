/* log — one place for logging.
 *
 * Messages go to stderr, one line each, prefixed with a UTC timestamp and the
 * level. A daemon under systemd or runit captures stderr; there is no syslog
 * code path to get wrong. */
#ifndef SALLYPORT_LOG_H
#define SALLYPORT_LOG_H

#include <stddef.h>

enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };

/* Messages below `level` are dropped. */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);

/* Parses "debug", "info", "warn" or "error"; returns 0, or -1 if unknown. */
int log_level_parse(const char *text, enum log_level *out);

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
