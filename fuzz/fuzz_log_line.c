/* libFuzzer target for log_line.c: the rendering of log messages.
 *
 *   make fuzz   (or: clang -fsanitize=fuzzer,address,undefined -Isrc src/log*.c
 *               fuzz/fuzz_log_line.c -o fuzz_log_line)
 *
 * The first input byte picks an output buffer size, the rest is a message
 * (log text is peer text after log_escape(), but the renderer must not rely
 * on that). Besides memory errors (ASan/UBSan), it aborts when a result
 * breaks log_line.h's contract: every JSON object is valid JSON (checked
 * by the small validator below: one object of string members, escapes
 * well-formed, no raw control or non-ASCII byte) that fits its buffer and
 * ends as asked; an event's spans lie within the message; the text line is
 * one line that fits. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "log_line.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
    if (!ok)
        abort();
}

/* A JSON string at s[*i] (its opening quote); moves *i past it. */
static bool json_string(const char *s, size_t n, size_t *i)
{
    if (*i >= n || s[*i] != '"')
        return false;
    for (size_t k = *i + 1; k < n; k++) {
        unsigned char c = (unsigned char)s[k];
        if (c < 0x20 || c >= 0x7f)
            return false;
        if (c == '"') {
            *i = k + 1;
            return true;
        }
        if (c != '\\')
            continue;
        if (++k >= n)
            return false;
        if (s[k] == 'u') {
            if (k + 4 >= n)
                return false;
            for (int h = 1; h <= 4; h++)
                if (!strchr("0123456789abcdefABCDEF", s[k + h]) || s[k + h] == '\0')
                    return false;
            k += 4;
        } else if (!strchr("\"\\/bfnrt", s[k]) || s[k] == '\0') {
            return false;
        }
    }
    return false;
}

/* {"k":"v",...} and nothing else, in n bytes. */
static bool json_object(const char *s, size_t n)
{
    size_t i = 0;
    if (n < 2 || s[i++] != '{')
        return false;
    for (bool first = true;; first = false) {
        if (i < n && s[i] == '}')
            return !first && i + 1 == n;
        if (!first && (i >= n || s[i++] != ','))
            return false;
        if (!json_string(s, n, &i) || i >= n || s[i++] != ':' || !json_string(s, n, &i))
            return false;
    }
}

static bool within(const struct log_span *sp, const char *text, size_t len)
{
    return sp->p >= text && sp->p + sp->len <= text + len;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    static struct log_record r;
    static char out[LOG_LINE_MAX];
    size_t outsz = 128 + (size_t)data[0] * 64; /* 128 .. 16448, within out */
    r.len = size - 1 < LOG_MESSAGE_MAX ? size - 1 : LOG_MESSAGE_MAX;
    memcpy(r.text, data + 1, r.len);
    r.text[r.len] = '\0';
    r.level = (enum log_level)(data[0] % 4);
    r.time = (struct timespec){.tv_sec = 1796271900 + data[0], .tv_nsec = 999999999};

    struct log_event ev;
    if (log_line_event(r.text, r.len, &ev)) {
        check(ev.nfields >= 1 && ev.nfields <= LOG_EVENT_FIELDS_MAX);
        check(within(&ev.name, r.text, r.len));
        for (size_t i = 0; i < ev.nfields; i++)
            check(within(&ev.fields[i].key, r.text, r.len) &&
                  within(&ev.fields[i].value, r.text, r.len) && ev.fields[i].key.len > 0);
    }

    for (int newline = 0; newline <= 1; newline++) {
        size_t sizes[] = {outsz, sizeof out};
        for (size_t k = 0; k < 2; k++) {
            size_t n = log_line_json(out, sizes[k], &r, newline);
            check(n > 0 && n < sizes[k] && out[n] == '\0');
            check(!newline || out[n - 1] == '\n');
            check(json_object(out, n - (size_t)newline));
        }
    }

    size_t n = log_line_text(out, outsz, &r);
    check(n > 0 && n < outsz && out[n] == '\0' && out[n - 1] == '\n');
    n = log_line_syslog_header(out, outsz, &r, 4242);
    check(n > 0 && n < outsz && out[0] == '<');
    return 0;
}
