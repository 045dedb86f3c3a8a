/* log_line — renders one log message as the line a destination gets. Pure:
 * no I/O, no locks, no allocation; every output is bounded by the caller's
 * buffer and always complete (a line that would not fit is shortened, never
 * cut in the middle of an escape or left unterminated).
 *
 *   text    "2026-12-03T04:25:00.123Z sallyport[info]: MESSAGE\n"
 *   json    {"time":"2026-12-03T04:25:00.123Z","level":"info","message":"MESSAGE"}\n
 *           plus, for an event line (log_line_event()), "event" and its fields
 *   syslog  "<PRI>Mmm dd hh:mm:ss sallyport[PID]: " (RFC 3164, facility mail,
 *           local time) before the message or the JSON object, no newline */
#ifndef SALLYPORT_LOG_LINE_H
#define SALLYPORT_LOG_LINE_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "log.h"

/* One message as log_msg() was given it. */
struct log_record {
    struct timespec time; /* CLOCK_REALTIME */
    enum log_level level;
    size_t len; /* of text, at most LOG_MESSAGE_MAX */
    char text[LOG_MESSAGE_MAX + 1];
};

/* Room a rendered line needs at most: the JSON object of a message of
 * LOG_MESSAGE_MAX bytes, each escaped to 6, in "message" and again in its
 * fields. In a smaller buffer JSON is shortened (fields first, then the
 * message). */
#define LOG_LINE_MAX 32768

/* Fields one event line may carry; further ones stay in "message" only. */
#define LOG_EVENT_FIELDS_MAX 32

struct log_span {
    const char *p;
    size_t len;
};

struct log_field {
    struct log_span key, value; /* value without its quotes */
};

/* A message of the shape `EVENT [NAME:] key=value key="quoted value" ...`:
 * the session line (session.c) and the mailbox session line (mailbox.c). */
struct log_event {
    struct log_span name; /* EVENT: [a-z_]+ */
    struct log_field fields[LOG_EVENT_FIELDS_MAX];
    size_t nfields;
};

/* True when `text` is an event line, filling *ev. The shape:
 *   - EVENT, a word of [a-z_], then a space;
 *   - optionally NAME: (letters, digits, '.', '_', '-', then ':'), which
 *     becomes a field named EVENT (`mailbox box:` gives mailbox=box);
 *   - then space-separated key=value pairs, keys of [a-z_0-9] starting with
 *     a letter or '_'. A value is "quoted" (up to the next '"' that ends
 *     the message or is followed by a space) or runs to the next space;
 *     except that the last value may hold spaces (`close=too many errors`):
 *     when what follows a value is not another key=value, the value runs to
 *     the end of the message.
 *   - at least two key=value pairs, so that a sentence with one '=' in it
 *     is not taken for an event.
 * Spans point into `text`. Keys that would clash with the object's own
 * ("time", "level", "message", "event") are left out; a message left with
 * no field at all is not an event. */
bool log_line_event(const char *text, size_t len, struct log_event *ev);

/* Writes `in` as the inside of a JSON string: '"' and '\' escaped, control
 * characters and bytes outside ASCII as \u00XX. Writes whole escapes only,
 * and at most outsz - 1 bytes plus a NUL; returns the bytes written. Sets
 * *cut (when not NULL) if `in` did not fit. */
size_t log_json_escape(char *out, size_t outsz, const char *in, size_t len, bool *cut);

/* The line in the text format, with its newline. Returns its length (< outsz;
 * outsz >= 64). */
size_t log_line_text(char *out, size_t outsz, const struct log_record *r);

/* The JSON object, with a newline when `newline`. Returns its length (< outsz;
 * outsz >= 128). */
size_t log_line_json(char *out, size_t outsz, const struct log_record *r, bool newline);

/* The RFC 3164 header for `r` from process `pid`. Returns its length (< outsz;
 * outsz >= 64). */
size_t log_line_syslog_header(char *out, size_t outsz, const struct log_record *r, long pid);

#endif
