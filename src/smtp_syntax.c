#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "smtp_syntax.h"

/* Parses "<path>" at *cursor into out (without the brackets): no control
 * characters, no unquoted space or "<", at most SMTP_PATH_MAX octets;
 * quoted strings may hold ">" and backslash escapes. Advances *cursor past
 * the ">". Returns false on a syntax error. */
static bool parse_path(char **cursor, char *out)
{
    char *p = *cursor;
    size_t n = 0;
    bool quoted = false;
    if (*p++ != '<')
        return false;
    for (;; p++) {
        unsigned char c = (unsigned char)*p;
        if (c < ' ' || c == 0x7f)
            return false; /* also the end of the string */
        if (!quoted && c == '>')
            break;
        if (n >= SMTP_PATH_MAX)
            return false;
        if (!quoted && (c == ' ' || c == '<'))
            return false;
        if (c == '"') {
            quoted = !quoted;
        } else if (quoted && c == '\\') {
            if ((unsigned char)p[1] < ' ' || p[1] == 0x7f || n + 1 >= SMTP_PATH_MAX)
                return false;
            out[n++] = (char)c;
            c = (unsigned char)*++p;
        }
        out[n++] = (char)c;
    }
    out[n] = '\0';
    *cursor = p + 1;
    return true;
}

/* Parses "KEYWORD<path>" and returns the parameter text after it ("" if
 * none), or NULL on a syntax error. */
static char *parse_keyword_path(char *args, const char *keyword, char *path)
{
    size_t klen = strlen(keyword);
    if (strncasecmp(args, keyword, klen) != 0)
        return NULL;
    char *p = args + klen;
    while (*p == ' ')
        p++;
    if (!parse_path(&p, path) || (*p != '\0' && *p != ' '))
        return NULL;
    while (*p == ' ')
        p++;
    return p;
}

enum smtp_arg_result smtp_parse_mail_from(char *args, bool allow_auth, struct smtp_mail_from *out)
{
    out->has_size = false;
    out->size = 0;
    char *params = parse_keyword_path(args, "FROM:", out->path);
    if (!params)
        return SMTP_ARG_SYNTAX;
    char *save = NULL;
    for (char *p = strtok_r(params, " ", &save); p; p = strtok_r(NULL, " ", &save)) {
        if (strncasecmp(p, "SIZE=", 5) == 0) {
            const char *digits = p + 5;
            if (!*digits || strspn(digits, "0123456789") != strlen(digits))
                return SMTP_ARG_SYNTAX;
            errno = 0;
            out->size = strtoull(digits, NULL, 10);
            if (errno == ERANGE)
                out->size = ULLONG_MAX;
            out->has_size = true;
        } else if (strncasecmp(p, "BODY=", 5) == 0) {
            if (strcasecmp(p + 5, "7BIT") != 0 && strcasecmp(p + 5, "8BITMIME") != 0)
                return SMTP_ARG_SYNTAX;
        } else if (!(allow_auth && strncasecmp(p, "AUTH=", 5) == 0)) {
            return SMTP_ARG_UNKNOWN_PARAM;
        }
    }
    return SMTP_ARG_OK;
}

enum smtp_arg_result smtp_parse_rcpt_to(char *args, char *path)
{
    char *params = parse_keyword_path(args, "TO:", path);
    if (!params)
        return SMTP_ARG_SYNTAX;
    if (path[0] == '\0')
        return SMTP_ARG_EMPTY_PATH;
    return *params ? SMTP_ARG_UNKNOWN_PARAM : SMTP_ARG_OK;
}

bool smtp_valid_helo(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || len > SMTP_DOMAIN_MAX)
        return false;
    for (const char *p = name; *p; p++) {
        if (*p <= ' ' || *p > '~')
            return false;
    }
    return true;
}

/* The value of a base64 digit, -2 for the pad "=", -1 for anything else. */
static int base64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return c == '=' ? -2 : -1;
}

long smtp_base64_decode(const char *in, unsigned char *out, size_t outsz)
{
    size_t len = strlen(in), o = 0;
    if (len % 4 != 0)
        return -1;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        for (int j = 0; j < 4; j++)
            v[j] = base64_value(in[i + j]);
        size_t n = v[2] == -2 ? 1 : v[3] == -2 ? 2 : 3; /* bytes in this quantum */
        bool last = i + 4 == len;
        if (v[0] < 0 || v[1] < 0 || (n < 3 && !last) || (n == 1 && v[3] != -2) ||
            (n > 1 && v[2] < 0) || (n > 2 && v[3] < 0) || o + n > outsz)
            return -1;
        unsigned long w = (unsigned long)v[0] << 18 | (unsigned long)v[1] << 12;
        if (n > 1)
            w |= (unsigned long)v[2] << 6;
        if (n > 2)
            w |= (unsigned long)v[3];
        out[o++] = (unsigned char)(w >> 16);
        if (n > 1)
            out[o++] = (unsigned char)(w >> 8);
        if (n > 2)
            out[o++] = (unsigned char)w;
    }
    return (long)o;
}

bool smtp_sasl_plain(unsigned char *raw, size_t len, const char **authzid, const char **authcid,
                     const char **password)
{
    unsigned char *nul1 = memchr(raw, '\0', len);
    if (!nul1)
        return false;
    unsigned char *nul2 = memchr(nul1 + 1, '\0', len - (size_t)(nul1 + 1 - raw));
    if (!nul2 || nul2 == nul1 + 1)
        return false;
    raw[len] = '\0';
    *authzid = (const char *)raw;
    *authcid = (const char *)nul1 + 1;
    *password = (const char *)nul2 + 1;
    return true;
}

void smtp_date(char *out, size_t outsz, time_t when)
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct tm tm;
    localtime_r(&when, &tm);
    long offset = tm.tm_gmtoff / 60;
    char sign = offset < 0 ? '-' : '+';
    offset = offset < 0 ? -offset : offset;
    snprintf(out, outsz, "%s, %d %s %d %02d:%02d:%02d %c%02ld%02ld", days[tm.tm_wday], tm.tm_mday,
             months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec, sign,
             offset / 60, offset % 60);
}
