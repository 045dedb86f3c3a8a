/* config_value — parsers for the values of sallyport.conf keys (see
 * docs/sallyport.conf.5 for the syntax each one accepts).
 *
 * Contract shared by every parser: on success it returns true and fills *out;
 * on failure it returns false, leaves *out unchanged and writes into err a
 * one-line reason for the operator that says what was wrong and what to write
 * instead (the caller prefixes "file:line: key: "). */
#ifndef SALLYPORT_CONFIG_VALUE_H
#define SALLYPORT_CONFIG_VALUE_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

/* "30", "30s", "5m", "1h": a positive number of seconds. */
bool value_duration(const char *text, unsigned *out, char *err, size_t errlen);

/* "52428800", "512K", "50M", "1G" (powers of 1024): a positive byte count. */
bool value_size(const char *text, size_t *out, char *err, size_t errlen);

/* A positive whole number. */
bool value_count(const char *text, unsigned *out, char *err, size_t errlen);

/* A whole number, where 0 means "no limit". */
bool value_limit(const char *text, unsigned *out, char *err, size_t errlen);

/* "auto" (stored as 0: one per CPU this process may run on) or a count of
 * event loops from 1 to WORKERS_MAX. */
bool value_workers(const char *text, unsigned *out, char *err, size_t errlen);

/* v1 | v2 | no: the PROXY header a backend is sent. */
bool value_proxy_version(const char *text, enum proxy_version *out, char *err, size_t errlen);

/* yes/no, true/false, on/off, 1/0, in any case. */
bool value_bool(const char *text, bool *out, char *err, size_t errlen);

/* terminate | passthrough */
bool value_mode(const char *text, enum listen_mode *out, char *err, size_t errlen);
/* "order" or "roundrobin". */
bool value_balance(const char *text, enum balance *out, char *err, size_t errlen);

/* A service word: submissions, submission, ... (service.h). */
bool value_service(const char *text, enum service *out, char *err, size_t errlen);

/* plain | implicit | starttls */
bool value_flavour(const char *text, enum tls_flavour *out, char *err, size_t errlen);

/* debug | info | warn | error */
bool value_log_level(const char *text, enum log_level *out, char *err, size_t errlen);

/* stderr | syslog */
bool value_log_destination(const char *text, enum log_destination *out, char *err, size_t errlen);

/* text | json */
bool value_log_format(const char *text, enum log_format *out, char *err, size_t errlen);
/* "adapt" (true) or "off" (false): the overload key. */
bool value_overload(const char *text, bool *out, char *err, size_t errlen);

/* The path of a Unix socket: absolute, at most LOG_SYSLOG_SOCKET_MAX bytes.
 * It need not exist yet. *out as for value_string(). */
bool value_socket_path(const char *text, char **out, char *err, size_t errlen);

/* Any non-empty text. *out becomes a malloc'd copy the caller frees. */
bool value_string(const char *text, char **out, char *err, size_t errlen);

/* A host name sallyport calls itself in greetings and EHLO: letters,
 * digits, '-', '_' and '.', so that it can never split a protocol line. */
bool value_hostname(const char *text, char **out, char *err, size_t errlen);

/* True if `text` is a host name value_hostname() accepts. */
bool greeting_name_ok(const char *text);

/* A path this process can read now; *out as for value_string(). */
bool value_readable(const char *text, char **out, char *err, size_t errlen);

/* "HOST[:PORT] [plain|implicit|starttls]" for one service of a backend: the
 * port defaults to the service's standard port, the flavour to the service's
 * standard flavour. Resolves HOST (getaddrinfo) and fills set, host, tls and
 * addr; out->line is left to the caller. */
bool value_endpoint(const char *text, enum service service, struct endpoint *out, char *err,
                    size_t errlen);

/* The value of a backend's "host" key: one host name or address without a
 * port. Writes it into out (size outlen) in the form value_endpoint() takes,
 * with IPv6 addresses bracketed. */
bool value_host(const char *text, char *out, size_t outlen, char *err, size_t errlen);

/* A list of address prefixes ("192.0.2.0/24 2001:db8::/32 ::1") appended to
 * out[*n], at most `max` in all, or "none" alone (appends nothing; *none is
 * set). "none" after prefixes, or prefixes after "none" (*none already set,
 * from an earlier line), is an error. A bad entry appends nothing. */
bool value_prefixes(const char *text, struct client_prefix *out, size_t *n, size_t max, bool *none,
                    char *err, size_t errlen);

/* Appends the space-separated SNI names of `text` to names[*n] (at most `max`
 * in all), lower-cased and malloc'd for the caller to free. A name is a host
 * name, "*.suffix" (one label of wildcard) or "*" alone (the default route).
 * Either every name of `text` is appended or none is. */
bool value_sni(const char *text, char **names, size_t *n, size_t max, char *err, size_t errlen);

#endif
