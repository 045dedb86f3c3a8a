#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "config_value.h"

/* A number followed by an optional unit letter, and what each unit multiplies by. */
struct unit {
    char letter;
    unsigned long long factor;
};

static const struct unit duration_units[] = {{'s', 1}, {'m', 60}, {'h', 3600}, {0, 0}};
static const struct unit size_units[] = {
    {'K', 1ULL << 10},
    {'k', 1ULL << 10},
    {'M', 1ULL << 20},
    {'m', 1ULL << 20},
    {'G', 1ULL << 30},
    {'g', 1ULL << 30},
    {0, 0},
};

/* Parses digits and an optional unit from `units` into a positive value not
 * above `max`. Returns false on anything else. */
static bool number_with_unit(const char *text, const struct unit *units, unsigned long long max,
                             unsigned long long *out)
{
    if (text[0] < '0' || text[0] > '9')
        return false;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(text, &end, 10);
    if (errno)
        return false;
    unsigned long long factor = 1;
    if (*end) {
        const struct unit *u = units;
        while (u && u->letter && u->letter != *end)
            u++;
        if (!u || !u->letter || end[1] != '\0')
            return false;
        factor = u->factor;
    }
    if (n == 0 || n > max / factor)
        return false;
    *out = n * factor;
    return true;
}

bool value_duration(const char *text, unsigned *out, char *err, size_t errlen)
{
    unsigned long long n;
    if (!number_with_unit(text, duration_units, UINT_MAX, &n)) {
        snprintf(err, errlen,
                 "bad duration '%s' (expected a positive number of seconds, or a number "
                 "with s, m or h: 30s, 5m, 1h)",
                 text);
        return false;
    }
    *out = (unsigned)n;
    return true;
}

bool value_size(const char *text, size_t *out, char *err, size_t errlen)
{
    unsigned long long n;
    if (!number_with_unit(text, size_units, SIZE_MAX, &n)) {
        snprintf(err, errlen,
                 "bad size '%s' (expected a positive number of bytes, or a number "
                 "with K, M or G: 512K, 50M, 1G)",
                 text);
        return false;
    }
    *out = (size_t)n;
    return true;
}

bool value_count(const char *text, unsigned *out, char *err, size_t errlen)
{
    unsigned long long n;
    if (!number_with_unit(text, NULL, UINT_MAX, &n)) {
        snprintf(err, errlen, "bad number '%s' (expected a positive whole number)", text);
        return false;
    }
    *out = (unsigned)n;
    return true;
}

bool value_workers(const char *text, unsigned *out, char *err, size_t errlen)
{
    unsigned long long n;
    if (strcmp(text, "auto") == 0) {
        *out = 0;
        return true;
    }
    if (!number_with_unit(text, NULL, WORKERS_MAX, &n)) {
        snprintf(err, errlen, "bad worker count '%s' (expected auto, or 1 to %d)", text,
                 WORKERS_MAX);
        return false;
    }
    *out = (unsigned)n;
    return true;
}

bool value_proxy_version(const char *text, enum proxy_version *out, char *err, size_t errlen)
{
    static const struct {
        const char *word;
        enum proxy_version version;
    } words[] = {{"v1", PROXY_V1}, {"v2", PROXY_V2}, {"no", PROXY_NONE}};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        if (strcmp(text, words[i].word) == 0) {
            *out = words[i].version;
            return true;
        }
    }
    snprintf(err, errlen, "unknown PROXY protocol version '%s' (expected v1, v2 or no)", text);
    return false;
}

bool value_limit(const char *text, unsigned *out, char *err, size_t errlen)
{
    if (text[0] == '0' && strspn(text, "0") == strlen(text)) {
        *out = 0;
        return true;
    }
    unsigned long long n;
    if (!number_with_unit(text, NULL, UINT_MAX, &n)) {
        snprintf(err, errlen, "bad limit '%s' (expected a whole number, or 0 for no limit)", text);
        return false;
    }
    *out = (unsigned)n;
    return true;
}

bool value_bool(const char *text, bool *out, char *err, size_t errlen)
{
    static const char *const words[][2] = {
        {"no", "yes"}, {"false", "true"}, {"off", "on"}, {"0", "1"}};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        for (int truth = 0; truth < 2; truth++) {
            if (strcasecmp(text, words[i][truth]) == 0) {
                *out = truth;
                return true;
            }
        }
    }
    snprintf(err, errlen, "bad boolean '%s' (expected yes or no)", text);
    return false;
}

bool value_mode(const char *text, enum listen_mode *out, char *err, size_t errlen)
{
    static const char *const names[] = {
        [MODE_TERMINATE] = "terminate", [MODE_PASSTHROUGH] = "passthrough"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(text, names[i]) == 0) {
            *out = (enum listen_mode)i;
            return true;
        }
    }
    snprintf(err, errlen, "unknown mode '%s' (expected terminate or passthrough)", text);
    return false;
}

bool value_balance(const char *text, enum balance *out, char *err, size_t errlen)
{
    static const char *const names[] = {
        [BALANCE_ORDER] = "order", [BALANCE_ROUNDROBIN] = "roundrobin"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(text, names[i]) == 0) {
            *out = (enum balance)i;
            return true;
        }
    }
    snprintf(err, errlen, "unknown balance '%s' (expected order or roundrobin)", text);
    return false;
}

bool value_service(const char *text, enum service *out, char *err, size_t errlen)
{
    if (service_parse(text, out) == 0)
        return true;
    size_t n = (size_t)snprintf(err, errlen, "unknown service '%s' (expected ", text);
    for (int i = 0; i < SERVICE_COUNT && n < errlen; i++) {
        const char *sep = i == 0 ? "" : i + 1 == SERVICE_COUNT ? " or " : ", ";
        n +=
            (size_t)snprintf(err + n, errlen - n, "%s%s", sep, service_info((enum service)i)->name);
    }
    if (n < errlen)
        snprintf(err + n, errlen - n, ")");
    return false;
}

bool value_flavour(const char *text, enum tls_flavour *out, char *err, size_t errlen)
{
    if (tls_flavour_parse(text, out) == 0)
        return true;
    snprintf(err, errlen, "unknown TLS flavour '%s' (expected plain, implicit or starttls)", text);
    return false;
}

bool value_log_level(const char *text, enum log_level *out, char *err, size_t errlen)
{
    if (log_level_parse(text, out) == 0)
        return true;
    snprintf(err, errlen, "unknown log level '%s' (expected debug, info, warn or error)", text);
    return false;
}

bool value_log_destination(const char *text, enum log_destination *out, char *err, size_t errlen)
{
    if (log_destination_parse(text, out) == 0)
        return true;
    snprintf(err, errlen, "unknown log destination '%s' (expected stderr or syslog)", text);
    return false;
}

bool value_log_format(const char *text, enum log_format *out, char *err, size_t errlen)
{
    if (log_format_parse(text, out) == 0)
        return true;
    snprintf(err, errlen, "unknown log format '%s' (expected text or json)", text);
    return false;
}

bool value_overload(const char *text, bool *out, char *err, size_t errlen)
{
    if (strcmp(text, "adapt") == 0 || strcmp(text, "off") == 0) {
        *out = strcmp(text, "adapt") == 0;
        return true;
    }
    snprintf(err, errlen, "unknown overload mode '%s' (expected adapt or off)", text);
    return false;
}

bool value_socket_path(const char *text, char **out, char *err, size_t errlen)
{
    if (text[0] != '/') {
        snprintf(err, errlen, "socket path '%s' is not absolute (write a path starting with /)",
                 text);
        return false;
    }
    if (strlen(text) > LOG_SYSLOG_SOCKET_MAX) {
        snprintf(err, errlen, "socket path too long (%zu bytes; at most %d)", strlen(text),
                 LOG_SYSLOG_SOCKET_MAX);
        return false;
    }
    return value_string(text, out, err, errlen);
}

bool value_string(const char *text, char **out, char *err, size_t errlen)
{
    if (text[0] == '\0') {
        snprintf(err, errlen, "empty value (write a value after '=', or remove the line)");
        return false;
    }
    char *copy = strdup(text);
    if (!copy) {
        snprintf(err, errlen, "out of memory");
        return false;
    }
    *out = copy;
    return true;
}

bool greeting_name_ok(const char *text)
{
    size_t len = strlen(text);
    bool ok = len > 0 && len <= 253;
    for (const char *p = text; ok && *p; p++)
        ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
             *p == '-' || *p == '.' || *p == '_';
    return ok;
}

bool value_hostname(const char *text, char **out, char *err, size_t errlen)
{
    if (!greeting_name_ok(text)) {
        char shown[201];
        size_t n = 0;
        for (; n + 1 < sizeof shown && text[n]; n++)
            shown[n] = text[n] >= 0x20 && text[n] < 0x7f ? text[n] : '?';
        shown[n] = '\0';
        snprintf(err, errlen,
                 "bad host name '%s' (expected a name such as mx.example.net: letters, "
                 "digits, '-', '_' and '.')",
                 shown);
        return false;
    }
    return value_string(text, out, err, errlen);
}

bool value_readable(const char *text, char **out, char *err, size_t errlen)
{
    if (text[0] != '\0' && access(text, R_OK) != 0) {
        snprintf(err, errlen, "cannot read '%s': %s", text, strerror(errno));
        return false;
    }
    return value_string(text, out, err, errlen);
}

bool value_endpoint(const char *text, enum service service, struct endpoint *out, char *err,
                    size_t errlen)
{
    const struct service_info *info = service_info(service);
    char addr[256], word[32], extra[2];
    int words = sscanf(text, "%255s %31s %1s", addr, word, extra);
    if (words < 1 || words > 2) {
        snprintf(err, errlen,
                 "bad endpoint '%s' (expected HOST:PORT, optionally followed by "
                 "plain, implicit or starttls)",
                 text);
        return false;
    }
    struct endpoint ep = {.set = true, .tls = info->tls};
    if (words == 2 && tls_flavour_parse(word, &ep.tls) != 0) {
        snprintf(err, errlen,
                 "unknown TLS flavour '%s' after the address (expected plain, implicit or "
                 "starttls)",
                 word);
        return false;
    }
    if (addr[0] == '*' || addr[0] == ':' || strspn(addr, "0123456789") == strlen(addr)) {
        snprintf(err, errlen, "'%s' has no host (expected HOST:PORT, e.g. 10.0.0.5:%u)", addr,
                 (unsigned)info->port);
        return false;
    }
    if (sock_addr_resolve(addr, info->port, ep.addrs, ENDPOINT_MAX_ADDRS, &ep.naddrs, ep.host,
                          sizeof ep.host, err, errlen) != 0)
        return false;
    ep.line = out->line;
    *out = ep;
    return true;
}

bool value_host(const char *text, char *out, size_t outlen, char *err, size_t errlen)
{
    size_t colons = 0;
    for (const char *p = text; *p; p++)
        colons += *p == ':';
    const char *problem = NULL;
    if (text[0] == '\0' || strcmp(text, "*") == 0)
        problem = "expected the backend's host name or address";
    else if (strpbrk(text, " \t"))
        problem = "expected one host name or address (set a flavour per service instead, "
                  "e.g. submissions = HOST:465 implicit)";
    else if (colons == 1 || (text[0] == '[' && text[strlen(text) - 1] != ']'))
        problem = "host takes no port (set a port per service instead, e.g. "
                  "submission = HOST:2587)";
    else if ((size_t)snprintf(out, outlen, colons > 1 && text[0] != '[' ? "[%s]" : "%s", text) >=
             outlen)
        problem = "host name too long";
    if (problem) {
        snprintf(err, errlen, "bad host '%s': %s", text, problem);
        return false;
    }
    return true;
}

/* True for a lower-case DNS host name: dot-separated labels of [a-z0-9-],
 * 1-63 characters each, not starting or ending with '-'. */
static bool hostname_ok(const char *name, size_t len)
{
    if (len == 0 || len > 253)
        return false;
    size_t label = 0;
    for (size_t i = 0; i <= len; i++) {
        char c = i < len ? name[i] : '.';
        if (c == '.') {
            if (label == 0 || label > 63 || name[i - 1] == '-' || name[i - label] == '-')
                return false;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-') {
            label++;
        } else {
            return false;
        }
    }
    return true;
}

static bool sni_name_ok(const char *name, size_t len)
{
    if (len == 1 && name[0] == '*')
        return true;
    if (len > 2 && name[0] == '*' && name[1] == '.')
        return hostname_ok(name + 2, len - 2);
    return hostname_ok(name, len);
}

#define SNI_SEPARATORS " \t"

bool value_prefixes(const char *text, struct client_prefix *out, size_t *n, size_t max,
                    bool *none_seen, char *err, size_t errlen)
{
    struct client_prefix parsed[CONFIG_MAX_PREFIXES];
    size_t count = 0;
    char word[64];
    bool none = false;
    for (const char *p = text + strspn(text, SNI_SEPARATORS); *p; p += strspn(p, SNI_SEPARATORS)) {
        size_t len = strcspn(p, SNI_SEPARATORS);
        snprintf(word, sizeof word, "%.*s", (int)(len < sizeof word ? len : sizeof word - 1), p);
        p += len;
        if (strcasecmp(word, "none") == 0) {
            none = true;
            continue;
        }
        if (count == CONFIG_MAX_PREFIXES || *n + count >= max) {
            snprintf(err, errlen, "too many prefixes (at most %zu)", max);
            return false;
        }
        if (len >= sizeof word || client_prefix_parse(word, &parsed[count]) < 0) {
            snprintf(err, errlen,
                     "bad address prefix '%s' (expected an address or a prefix such as "
                     "192.0.2.0/24 or 2001:db8::/32, or none)",
                     word);
            return false;
        }
        count++;
    }
    if ((none && (count > 0 || *n > 0)) || (*none_seen && count > 0)) {
        snprintf(err, errlen, "'none' cannot be combined with prefixes");
        return false;
    }
    *none_seen = *none_seen || none;
    if (!none && count == 0) {
        snprintf(err, errlen, "no prefixes (list addresses or prefixes, or write none)");
        return false;
    }
    memcpy(out + *n, parsed, count * sizeof *parsed);
    *n += count;
    return true;
}

bool value_sni(const char *text, char **names, size_t *n, size_t max, char *err, size_t errlen)
{
    size_t count = 0;
    char lower[256];
    /* First pass: check every name, so that a bad one appends nothing. */
    for (const char *p = text + strspn(text, SNI_SEPARATORS); *p; p += strspn(p, SNI_SEPARATORS)) {
        size_t len = strcspn(p, SNI_SEPARATORS);
        size_t i;
        for (i = 0; i < len && i + 1 < sizeof lower; i++)
            lower[i] = (char)(p[i] >= 'A' && p[i] <= 'Z' ? p[i] - 'A' + 'a' : p[i]);
        lower[i] = '\0';
        if (i < len || !sni_name_ok(lower, len)) {
            snprintf(err, errlen,
                     "bad name '%.*s' (expected a host name such as mail.example.com, a "
                     "wildcard such as *.example.com, or * alone for the default route)",
                     (int)(len > 200 ? 200 : len), p);
            return false;
        }
        count++;
        p += len;
    }
    if (count == 0) {
        snprintf(err, errlen, "no names (list the names clients send, or * for the default route)");
        return false;
    }
    if (*n + count > max) {
        snprintf(err, errlen,
                 "too many names (at most %zu per route; split them over several routes)", max);
        return false;
    }
    for (const char *p = text + strspn(text, SNI_SEPARATORS); *p; p += strspn(p, SNI_SEPARATORS)) {
        size_t len = strcspn(p, SNI_SEPARATORS);
        char *name = strndup(p, len);
        if (!name) {
            snprintf(err, errlen, "out of memory");
            return false;
        }
        for (char *c = name; *c; c++)
            *c = (char)(*c >= 'A' && *c <= 'Z' ? *c - 'A' + 'a' : *c);
        names[(*n)++] = name;
        p += len;
    }
    return true;
}
