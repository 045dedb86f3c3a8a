/* config — the INI file, parsed with inih into one immutable struct config.
 *
 * Section shapes (see docs/sallyport.conf.5 for the full reference):
 *   [global]                 log_level, log, log_format, syslog_socket, user,
 *                            timeouts, limits, overload
 *   [certificate NAME]       cert, key, default; or acme = yes, names, challenge
 *   [listener NAME]          service (default: NAME when it is a service word),
 *                            address, mode, hostname; https listeners: backend
 *   [backend NAME]           host, one key per service word, ca, verify, tls_name,
 *                            proxy_protocol, xclient
 *   [route NAME]             sni, backend (one or more), balance, mode (default: the
 *                            listener's)
 *   [mailbox NAME]           address, tls, cert, key, maildir, users, hostname,
 *                            max_message_size; also usable as "backend = NAME"
 *   [metrics]                address
 *   [acme]                   directory, contact, state_dir, ca, retry_interval,
 *                            http_address
 *
 * Every error is reported as "file:line: key: what is wrong" (key is the
 * section name for section-level errors), and loading goes on to find them all.
 * Certificates are loaded (and checked against their keys) during loading. */
#ifndef SALLYPORT_CONFIG_H
#define SALLYPORT_CONFIG_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "client_table.h"
#include "log.h"
#include "service.h"
#include "sock.h"

enum listen_mode { MODE_TERMINATE, MODE_PASSTHROUGH };

/* What a backend is sent first on every connection: nothing, or a PROXY
 * protocol header naming the client. */
enum proxy_version { PROXY_NONE, PROXY_V1, PROXY_V2 };

#define CONFIG_MAX_PREFIXES 32
/* Event loops (threads) at most: workers = 1..WORKERS_MAX, or auto. */
#define WORKERS_MAX 64

struct cfg_global {
    enum log_level log_level;        /* log_level = info */
    enum log_destination log;        /* log = stderr | syslog */
    enum log_format log_format;      /* log_format = text | json */
    bool overload_adapt;             /* overload = adapt (true) | off: overload.h */
    char *syslog_socket;             /* syslog_socket = /dev/log (NULL: the default) */
    char *user;                      /* user = (none): drop to this user after binding */
    unsigned workers;                /* workers = 1: event loops; 0 = auto (one per CPU) */
    unsigned plaintext_timeout;      /* seconds, default 60: cleartext phase */
    unsigned handshake_timeout;      /* seconds, default 30: each TLS handshake */
    unsigned connect_timeout;        /* seconds, default 10: backend connect + prelude */
    unsigned idle_timeout;           /* seconds; 0 = each service's default (service.c) */
    unsigned shutdown_timeout;       /* seconds, default 30: sessions may finish after SIGTERM */
    unsigned max_errors;             /* default 10: bad commands before "421" */
    unsigned max_connections;        /* default 1024: concurrent client sessions */
    unsigned max_client_connections; /* default 32: concurrent sessions per client address */
    unsigned client_connection_rate; /* default 10: new sessions per second per address */
    /* client_limit_exceptions = 127.0.0.0/8 ::1: addresses the per-client
     * limits skip (a local webmail or proxy speaks for many users). */
    struct client_prefix limit_exceptions[CONFIG_MAX_PREFIXES];
    size_t nlimit_exceptions;
    bool limit_exceptions_set;
    bool limit_exceptions_none; /* "none" was written */
};

/* Names one ACME certificate may cover (Let's Encrypt allows 100). */
#define CERT_MAX_NAMES 32
/* How the CA checks that sallyport answers for a name (acme.h). */
enum acme_challenge { CHALLENGE_TLS_ALPN_01, CHALLENGE_HTTP_01 };
struct cfg_certificate {
    char *name;
    int line;
    char *cert; /* path of the PEM chain */
    char *key;  /* path of the PEM key */
    bool is_default;
    /* acme = no: yes gets the certificate for `names` from [acme]'s CA and
     * keeps it fresh (acme.h); cert and key are then not written. */
    bool acme;
    char *names[CERT_MAX_NAMES]; /* names = ...: lower-cased host names */
    size_t nnames;
    enum acme_challenge challenge; /* challenge = tls-alpn-01 */
    /* An ACME certificate served with a temporary self-signed one, because
     * the state directory has none that loads yet. */
    bool temporary;
    SSL_CTX *ctx; /* loaded and key-checked; owned by the config until taken */
};

struct cfg_listener {
    char *name;
    int line;
    enum service service;
    char *address;         /* as written, or the default "[::]:<standard port>" */
    struct sock_addr addr; /* resolved */
    enum listen_mode mode; /* mode = terminate */
    char *hostname;        /* hostname = the machine's host name */
    /* proxy_protocol = no: yes requires a PROXY header (v1 or v2) first on
     * every connection, from an address in proxy_trusted only. */
    bool proxy_protocol;
    struct client_prefix proxy_trusted[CONFIG_MAX_PREFIXES];
    size_t nproxy_trusted;
    /* idle_timeout = (global idle_timeout, else the service's default):
     * seconds a relayed session may pass no bytes either way. Resolved at
     * load time, never 0. */
    unsigned idle_timeout;
    /* https listeners: backend = NAME, the web server every connection that
     * is not a CA's tls-alpn-01 check passes through to, by the route
     * config.c makes for it ("https:LISTENER", no SNI names) at this index
     * of config->routes; CONFIG_NO_ROUTE without a backend. */
    size_t web_route;
};
#define CONFIG_NO_ROUTE ((size_t)-1)

/* Addresses kept per endpoint: a host name with several is tried in turn. */
#define ENDPOINT_MAX_ADDRS 4

/* Where one service of a backend lives. */
struct endpoint {
    bool set;
    int line;
    char host[256]; /* host part as written, for logs and the default TLS name */
    enum tls_flavour tls;
    struct sock_addr addrs[ENDPOINT_MAX_ADDRS]; /* resolved at load time, in DNS order */
    size_t naddrs;                              /* >= 1 once set */
};

struct cfg_mailbox {
    char *name;
    int line;
    char *address; /* required */
    struct sock_addr addr;
    enum tls_flavour tls; /* tls = plain */
    char *cert;           /* required unless tls = plain */
    char *key;
    SSL_CTX *ctx;            /* loaded when tls != plain */
    char *maildir;           /* required; created (with tmp/ new/ cur/) at start-up */
    char *users;             /* optional: "user:crypt-hash" lines; AUTH required when set */
    char *hostname;          /* default: the machine's host name */
    size_t max_message_size; /* bytes, default 52428800 (50 MiB) */
};

struct cfg_backend {
    char *name;
    int line;
    struct endpoint endpoints[SERVICE_COUNT];
    char *ca;                          /* ca = (system store) */
    bool verify;                       /* verify = yes */
    char *tls_name;                    /* tls_name = (the endpoint's host) */
    enum proxy_version proxy_protocol; /* proxy_protocol = no */
    /* xclient = no: yes names the client in the protocol itself once
     * sallyport terminated TLS: SMTP and POP3 XCLIENT, IMAP ID. */
    bool xclient;
    /* down_time = 30: seconds an address that failed a session before any
     * client byte went to it is skipped while its route has another. */
    unsigned down_time;
    /* check_interval = (none): every this many seconds, connect to each
     * address and read the greeting (probe.c); 0 = off. */
    unsigned check_interval;
    /* Non-NULL when this backend is an embedded mailbox ([mailbox NAME] makes
     * one backend of the same name, every SMTP service at its address). */
    const struct cfg_mailbox *mailbox;
};

#define ROUTE_MAX_NAMES 64
/* Backends one route may list. */
#define ROUTE_MAX_BACKENDS 8

/* How a route with several backends spreads its sessions: "order" tries
 * them as listed (the first that is up serves), "roundrobin" starts each
 * session at the next one. Either way a failed one is followed by the rest. */
enum balance { BALANCE_ORDER, BALANCE_ROUNDROBIN };

struct cfg_route {
    char *name;
    int line;
    char *sni[ROUTE_MAX_NAMES]; /* lower-cased; "*.example.com" wildcards; "*" = default */
    size_t nsni;
    const struct cfg_backend *backends[ROUTE_MAX_BACKENDS]; /* backend = NAME... */
    size_t nbackends;
    enum balance balance; /* balance = order */
    /* mode = (the listener's): terminate or passthrough for this route on
     * every TLS listener, decided once the ClientHello named it. */
    enum listen_mode mode;
    bool mode_set;
};

/* What a listener does with the TLS of a connection routed to `route`. */
static inline enum listen_mode route_mode(const struct cfg_listener *listener,
                                          const struct cfg_route *route)
{
    if (listener->service == SERVICE_HTTPS)
        return MODE_PASSTHROUGH; /* the web server's TLS is never sallyport's */
    return route && route->mode_set ? route->mode : listener->mode;
}

/* [metrics]: the Prometheus endpoint (scrape.c, httpd.c), when `set`. */
struct cfg_metrics {
    bool set;
    int line;
    char *address; /* required: HOST:PORT */
    struct sock_addr addr;
};

/* [acme]: the CA that certificates with acme = yes come from (acme.h).
 * Its defaults hold without the section. */
#define ACME_DIRECTORY_DEFAULT "https://acme-v02.api.letsencrypt.org/directory"
#define ACME_STATE_DIR_DEFAULT "/var/lib/sallyport/acme"
struct cfg_acme {
    bool set;
    int line;
    char *directory;         /* directory = Let's Encrypt's production URL */
    char *contact;           /* contact = (none): an e-mail address for the CA's notices */
    char *state_dir;         /* state_dir = /var/lib/sallyport/acme: account key, certificates */
    char *ca;                /* ca = (system store): PEM bundle that verifies the CA's HTTPS */
    unsigned retry_interval; /* retry_interval = 60: seconds to the first retry; doubles */
    char *http_address;      /* http_address = (none): HOST:PORT answering http-01 */
    struct sock_addr http_addr;
};

struct config;

/* The file an ACME certificate and its key live in: STATE_DIR/NAME.pem. */
int config_acme_file(const struct config *config, const struct cfg_certificate *c, char *out,
                     size_t outlen);

struct config {
    char *file;
    char *text; /* the file as read: a certificate refresh parses it again */
    size_t text_len;
    struct cfg_acme acme;
    struct cfg_global global;
    struct cfg_metrics metrics;
    struct cfg_certificate *certificates;
    size_t ncertificates;
    struct cfg_listener *listeners;
    size_t nlisteners;
    struct cfg_backend *backends; /* mailbox backends included */
    size_t nbackends;
    struct cfg_route *routes;
    size_t nroutes;
    struct cfg_mailbox *mailboxes;
    size_t nmailboxes;
};

/* Reads and validates `path`. On success returns the config and leaves
 * *nerrors at 0. On failure returns NULL, prints every error to `errors` as
 * "file:line: key: what is wrong" and sets *nerrors. */
struct config *config_load(const char *path, FILE *errors, int *nerrors);

/* config_load() of `text`, what `path` held when it was last read (the
 * config's `text`): the same config again with the certificates as they are
 * now, without taking up edits made to the file since. */
struct config *config_load_text(const char *path, const char *text, size_t len, FILE *errors,
                                int *nerrors);

/* True when the config has something to run (a listener or a mailbox);
 * otherwise says so on `errors`. */
bool config_runnable(const struct config *config, FILE *errors);

/* Frees the config, including certificate contexts still owned by it. */
void config_free(struct config *config);

#endif
