#include <string.h>

#include "service.h"

/* Idle timeouts by protocol: SMTP servers wait at least 5 minutes for a
 * command (RFC 5321 4.5.3.2.7), POP3 at least 10 (RFC 1939 3), IMAP at
 * least 30 and IDLE clients re-issue every 29 (RFC 9051 5.4, RFC 2177):
 * 31 minutes; ManageSieve names none. 10 minutes where the RFC allows it,
 * as before. */
#define IDLE_SMTP  600
#define IDLE_IMAP  (31 * 60)
#define IDLE_POP3  600
#define IDLE_SIEVE 600
#define IDLE_HTTPS 600

static const struct service_info services[SERVICE_COUNT] = {
    [SERVICE_SUBMISSIONS] = {"submissions", PROTO_SMTP, TLS_IMPLICIT, 465, IDLE_SMTP, true},
    [SERVICE_SUBMISSION] = {"submission", PROTO_SMTP, TLS_STARTTLS, 587, IDLE_SMTP, true},
    [SERVICE_IMAPS] = {"imaps", PROTO_IMAP, TLS_IMPLICIT, 993, IDLE_IMAP, true},
    [SERVICE_IMAP] = {"imap", PROTO_IMAP, TLS_STARTTLS, 143, IDLE_IMAP, true},
    [SERVICE_POP3S] = {"pop3s", PROTO_POP3, TLS_IMPLICIT, 995, IDLE_POP3, true},
    [SERVICE_POP3] = {"pop3", PROTO_POP3, TLS_STARTTLS, 110, IDLE_POP3, true},
    [SERVICE_SIEVE] = {"sieve", PROTO_SIEVE, TLS_STARTTLS, 4190, IDLE_SIEVE, true},
    [SERVICE_HTTPS] = {"https", PROTO_HTTPS, TLS_IMPLICIT, 443, IDLE_HTTPS, false},
};

static const char *const flavour_names[] = {
    [TLS_PLAIN] = "plain",
    [TLS_IMPLICIT] = "implicit",
    [TLS_STARTTLS] = "starttls",
};

static const char *const proto_names[PROTO_COUNT] = {
    [PROTO_SMTP] = "smtp",   [PROTO_IMAP] = "imap",   [PROTO_POP3] = "pop3",
    [PROTO_SIEVE] = "sieve", [PROTO_HTTPS] = "https",
};

const struct service_info *service_info(enum service service)
{
    return &services[service];
}

int service_parse(const char *name, enum service *out)
{
    for (int i = 0; i < SERVICE_COUNT; i++) {
        if (strcmp(name, services[i].name) == 0) {
            *out = (enum service)i;
            return 0;
        }
    }
    return -1;
}

const char *tls_flavour_name(enum tls_flavour flavour)
{
    return flavour_names[flavour];
}

int tls_flavour_parse(const char *text, enum tls_flavour *out)
{
    for (size_t i = 0; i < sizeof flavour_names / sizeof flavour_names[0]; i++) {
        if (strcmp(text, flavour_names[i]) == 0) {
            *out = (enum tls_flavour)i;
            return 0;
        }
    }
    return -1;
}

const char *proto_name(enum proto proto)
{
    return proto_names[proto];
}
