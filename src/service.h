/* service — the RFC 6186 / RFC 8314 service words a listener offers and a
 * backend provides: protocol, TLS flavour and standard port in one name. */
#ifndef SALLYPORT_SERVICE_H
#define SALLYPORT_SERVICE_H

#include <stdbool.h>
#include <stdint.h>

enum proto { PROTO_SMTP, PROTO_IMAP, PROTO_POP3, PROTO_SIEVE, PROTO_HTTPS, PROTO_COUNT };
/* The mail protocols, which have a dialogue, come first. */
#define PROTO_MAIL_COUNT PROTO_HTTPS

enum tls_flavour {
    TLS_PLAIN,    /* cleartext, no TLS at all (backends only) */
    TLS_IMPLICIT, /* TLS from the first byte (465, 993, 995) */
    TLS_STARTTLS, /* cleartext dialogue, then STARTTLS (587, 143, 110, 4190) */
};

enum service {
    SERVICE_SUBMISSIONS, /* SMTP submission, implicit TLS, 465 (RFC 8314) */
    SERVICE_SUBMISSION,  /* SMTP submission, STARTTLS, 587 (RFC 6409) */
    SERVICE_IMAPS,       /* IMAP, implicit TLS, 993 */
    SERVICE_IMAP,        /* IMAP, STARTTLS, 143 */
    SERVICE_POP3S,       /* POP3, implicit TLS, 995 */
    SERVICE_POP3,        /* POP3, STARTTLS (STLS), 110 */
    SERVICE_SIEVE,       /* ManageSieve, STARTTLS only, 4190 (RFC 5804) */
    SERVICE_HTTPS,       /* HTTPS, 443: passed through to a web server; ACME's tls-alpn-01 */
    SERVICE_COUNT
};

struct service_info {
    const char *name; /* "submissions" */
    enum proto proto;
    enum tls_flavour tls; /* the flavour clients expect on this service */
    uint16_t port;        /* the standard port */
    /* Seconds a relayed session may be silent both ways, unless configured
     * (idle_timeout): what the protocol's RFC lets a client expect. */
    unsigned idle_timeout;
    /* A backend's "host = X" gives it this service (the mail ones); the web
     * server's https endpoint is only ever written out. */
    bool by_host;
};

const struct service_info *service_info(enum service service);

/* Returns 0 and sets *out if `name` is a service word, else -1. */
int service_parse(const char *name, enum service *out);

const char *tls_flavour_name(enum tls_flavour flavour);

/* Parses "plain", "implicit" or "starttls"; returns 0, or -1 if unknown. */
int tls_flavour_parse(const char *text, enum tls_flavour *out);

const char *proto_name(enum proto proto);

#endif
