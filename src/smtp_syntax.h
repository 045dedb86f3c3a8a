/* smtp_syntax — pure parsers for the mailbox's SMTP arguments (RFC 5321,
 * 1870, 6152, 4954): MAIL/RCPT paths and parameters, HELO names, base64 and
 * the SASL PLAIN message; and the RFC 5322 date of the trace header. No I/O,
 * no allocation: every output has a fixed bound. */
#ifndef SALLYPORT_SMTP_SYNTAX_H
#define SALLYPORT_SMTP_SYNTAX_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#define SMTP_PATH_MAX   256 /* octets of a path between "<" and ">" (RFC 5321 4.5.3.1.3) */
#define SMTP_DOMAIN_MAX 255 /* octets of a HELO/EHLO name */

enum smtp_arg_result {
    SMTP_ARG_OK,
    SMTP_ARG_SYNTAX,        /* not "KEYWORD:<path> [params]", or a bad parameter value */
    SMTP_ARG_UNKNOWN_PARAM, /* a parameter this server does not offer */
    SMTP_ARG_EMPTY_PATH,    /* "<>" where a mailbox is required (RCPT) */
};

struct smtp_mail_from {
    char path[SMTP_PATH_MAX + 1]; /* without the brackets; "" for the null sender */
    bool has_size;                /* SIZE=n given */
    unsigned long long size;      /* SIZE value, saturated at ULLONG_MAX */
};

/* Parses the arguments of MAIL: "FROM:<path> [SIZE=n] [BODY=7BIT|8BITMIME]
 * [AUTH=x]" (keywords case-insensitive; spaces after the colon tolerated).
 * AUTH= is accepted only when `allow_auth`. `args` is modified. */
enum smtp_arg_result smtp_parse_mail_from(char *args, bool allow_auth, struct smtp_mail_from *out);

/* Parses the arguments of RCPT: "TO:<path>" with no parameters. `path` must
 * hold SMTP_PATH_MAX + 1 bytes. `args` is modified. */
enum smtp_arg_result smtp_parse_rcpt_to(char *args, char *path);

/* True if `name` is a usable HELO/EHLO argument: 1 to SMTP_DOMAIN_MAX
 * printable ASCII characters without spaces (safe in a Received header). */
bool smtp_valid_helo(const char *name);

/* Decodes strict base64 (padded, no whitespace) into out. Returns the
 * decoded length, or -1 if malformed or longer than outsz. */
long smtp_base64_decode(const char *in, unsigned char *out, size_t outsz);

/* Splits a decoded SASL PLAIN message "authzid NUL authcid NUL password"
 * (RFC 4616) in place; `raw` must have room for a NUL at raw[len]. Returns
 * false if malformed (fewer than two NULs, or an empty authcid). */
bool smtp_sasl_plain(unsigned char *raw, size_t len, const char **authzid, const char **authcid,
                     const char **password);

/* Formats `when` as an RFC 5322 date in local time ("Sat, 22 Nov 2025
 * 07:26:00 +0100"), independent of the locale. */
void smtp_date(char *out, size_t outsz, time_t when);

#endif
