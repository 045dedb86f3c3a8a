/* log_line — see log_line.h. */
#include <stdio.h>
#include <string.h>

#include "log_line.h"

/* RFC 3164/5424: facility mail (2), and each level's severity. */
#define SYSLOG_FACILITY_MAIL (2 << 3)
static const int severities[] = {
    [LOG_LEVEL_DEBUG] = 7, /* debug */
    [LOG_LEVEL_INFO] = 6,  /* informational */
    [LOG_LEVEL_WARN] = 4,  /* warning */
    [LOG_LEVEL_ERROR] = 3, /* error */
};

static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* Keys the JSON object has of its own: an event field never takes them. */
static const char *const reserved_keys[] = {"time", "level", "message", "event"};

/* ---- event lines ---------------------------------------------------------- */

static bool is_lower(char c)
{
    return (c >= 'a' && c <= 'z') || c == '_';
}

static bool is_key_char(char c)
{
    return is_lower(c) || (c >= '0' && c <= '9');
}

static bool is_name_char(char c)
{
    return is_key_char(c) || (c >= 'A' && c <= 'Z') || c == '.' || c == '-';
}

/* Length of the key at text[i] when "key=" starts there, else 0. */
static size_t key_at(const char *text, size_t len, size_t i)
{
    if (i >= len || !is_lower(text[i]))
        return 0;
    size_t k = i + 1;
    while (k < len && is_key_char(text[k]))
        k++;
    return k < len && text[k] == '=' ? k - i : 0;
}

static bool is_reserved(struct log_span key)
{
    for (size_t i = 0; i < sizeof reserved_keys / sizeof reserved_keys[0]; i++)
        if (strlen(reserved_keys[i]) == key.len && memcmp(reserved_keys[i], key.p, key.len) == 0)
            return true;
    return false;
}

static void add_field(struct log_event *ev, struct log_span key, struct log_span value)
{
    if (ev->nfields < LOG_EVENT_FIELDS_MAX && !is_reserved(key))
        ev->fields[ev->nfields++] = (struct log_field){key, value};
}

/* Where the value starting at text[v] ends: sets *value (quotes taken off)
 * and returns the index just past it. */
static size_t value_at(const char *text, size_t len, size_t v, struct log_span *value)
{
    if (v < len && text[v] == '"') {
        for (size_t q = v + 1; q < len; q++) {
            if (text[q] == '"' && (q + 1 == len || text[q + 1] == ' ')) {
                *value = (struct log_span){text + v + 1, q - v - 1};
                return q + 1;
            }
        }
        *value = (struct log_span){text + v, len - v}; /* unclosed: as it is */
        return len;
    }
    size_t e = v;
    while (e < len && text[e] != ' ')
        e++;
    *value = (struct log_span){text + v, e - v};
    return e;
}

bool log_line_event(const char *text, size_t len, struct log_event *ev)
{
    ev->nfields = 0;
    size_t i = 0;
    while (i < len && is_lower(text[i]))
        i++;
    if (i == 0 || i >= len || text[i] != ' ')
        return false;
    ev->name = (struct log_span){text, i};
    i++;
    /* NAME: */
    size_t n = i;
    while (n < len && is_name_char(text[n]))
        n++;
    if (n > i && n < len && text[n] == ':' && !key_at(text, len, i)) {
        add_field(ev, ev->name, (struct log_span){text + i, n - i});
        if (n + 1 >= len || text[n + 1] != ' ')
            return false;
        i = n + 2;
    }
    size_t pairs = 0;
    for (size_t k; (k = key_at(text, len, i)) != 0;) {
        struct log_span key = {text + i, k}, value;
        size_t v = i + k + 1;
        size_t end = value_at(text, len, v, &value);
        pairs++;
        if (end < len && !key_at(text, len, end + 1)) {
            /* Not followed by another key=value: the last value, spaces and all. */
            add_field(ev, key, (struct log_span){text + v, len - v});
            i = len;
            break;
        }
        add_field(ev, key, value);
        i = end < len ? end + 1 : len;
    }
    return pairs >= 2 && i >= len && ev->nfields > 0; /* reserved keys are left out */
}

/* ---- JSON ----------------------------------------------------------------- */

size_t log_json_escape(char *out, size_t outsz, const char *in, size_t len, bool *cut)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (cut)
        *cut = false;
    if (outsz == 0) {
        if (cut)
            *cut = len > 0;
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        char esc[6];
        size_t n;
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c, n = 2;
        } else if (c < 0x20 || c >= 0x7f) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4], esc[5] = hex[c & 15], n = 6;
        } else {
            esc[0] = (char)c, n = 1;
        }
        if (o + n > outsz - 1) {
            if (cut)
                *cut = true;
            break;
        }
        memcpy(out + o, esc, n);
        o += n;
    }
    out[o] = '\0';
    return o;
}

/* A bounded writer for one JSON object. */
struct jw {
    char *out;
    size_t cap, len;
    bool cut;
};

static void jw_raw(struct jw *w, const char *s)
{
    size_t n = strlen(s);
    if (w->cut || w->len + n >= w->cap) {
        w->cut = true;
        return;
    }
    memcpy(w->out + w->len, s, n + 1);
    w->len += n;
}

/* A quoted string; with `shorten`, as much of it as leaves `keep` bytes. */
static void jw_string(struct jw *w, const char *s, size_t n, bool shorten, size_t keep)
{
    jw_raw(w, "\"");
    if (w->cut || w->len + keep >= w->cap) {
        w->cut = true;
        return;
    }
    bool cut;
    w->len += log_json_escape(w->out + w->len, w->cap - w->len - keep, s, n, &cut);
    if (cut && !shorten)
        w->cut = true;
    jw_raw(w, "\"");
}

static void stamp(char *out, size_t outsz, const struct timespec *t)
{
    struct tm tm;
    gmtime_r(&t->tv_sec, &tm);
    size_t n = strftime(out, outsz, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, outsz - n, ".%03ldZ", t->tv_nsec / 1000000L);
}

/* How the object may be shortened, tried in turn until it fits. */
enum json_shape { JSON_WHOLE, JSON_NO_FIELDS, JSON_SHORT_MESSAGE };

static bool json_try(struct jw *w, const struct log_record *r, const struct log_event *ev,
                     enum json_shape shape, bool newline)
{
    char when[40];
    stamp(when, sizeof when, &r->time);
    jw_raw(w, "{\"time\":\"");
    jw_raw(w, when);
    jw_raw(w, "\",\"level\":\"");
    jw_raw(w, log_level_name(r->level));
    jw_raw(w, "\",\"message\":");
    /* Room kept after a shortened message: `"}`, the newline and the NUL. */
    jw_string(w, r->text, r->len, shape == JSON_SHORT_MESSAGE, 4);
    if (ev && shape == JSON_WHOLE) {
        jw_raw(w, ",\"event\":");
        jw_string(w, ev->name.p, ev->name.len, false, 0);
        for (size_t i = 0; i < ev->nfields; i++) {
            const struct log_field *f = &ev->fields[i];
            jw_raw(w, ",");
            jw_string(w, f->key.p, f->key.len, false, 0);
            jw_raw(w, ":");
            jw_string(w, f->value.p, f->value.len, false, 0);
        }
    }
    jw_raw(w, newline ? "}\n" : "}");
    return !w->cut;
}

size_t log_line_json(char *out, size_t outsz, const struct log_record *r, bool newline)
{
    struct log_event ev;
    bool is_event = log_line_event(r->text, r->len, &ev);
    for (enum json_shape shape = is_event ? JSON_WHOLE : JSON_NO_FIELDS;
         shape <= JSON_SHORT_MESSAGE; shape++) {
        struct jw w = {out, outsz, 0, false};
        if (json_try(&w, r, is_event ? &ev : NULL, shape, newline))
            return w.len;
    }
    out[0] = '\0'; /* outsz below the contract's minimum */
    return 0;
}

/* ---- text and syslog ------------------------------------------------------ */

/* snprintf's result as a length that fits outsz, keeping a final newline. */
static size_t fitted(char *out, size_t outsz, int n, bool newline)
{
    if (n < 0) {
        out[0] = '\0';
        return 0;
    }
    if ((size_t)n < outsz)
        return (size_t)n;
    if (newline)
        out[outsz - 2] = '\n';
    return outsz - 1;
}

size_t log_line_text(char *out, size_t outsz, const struct log_record *r)
{
    char when[40];
    stamp(when, sizeof when, &r->time);
    int n = snprintf(out, outsz, "%s sallyport[%s]: %.*s\n", when, log_level_name(r->level),
                     (int)r->len, r->text);
    return fitted(out, outsz, n, true);
}

size_t log_line_syslog_header(char *out, size_t outsz, const struct log_record *r, long pid)
{
    struct tm tm;
    localtime_r(&r->time.tv_sec, &tm);
    int n = snprintf(out, outsz, "<%d>%s %2d %02d:%02d:%02d sallyport[%ld]: ",
                     SYSLOG_FACILITY_MAIL | severities[r->level], months[tm.tm_mon % 12],
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, pid);
    return fitted(out, outsz, n, false);
}
