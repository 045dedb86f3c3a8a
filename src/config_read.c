/* config_read — see config_read.h. Our line reader (read_line) counts lines,
 * spots section headers (inih reports neither empty sections nor header
 * lines) and over-long lines; the key handler (on_key) looks each key up in
 * one table and hands the value to that key's parser. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>

#include "config_read.h"
#include "config_value.h"

static const char *const kind_names[K_COUNT] = {
    [K_GLOBAL] = "global",     [K_CERTIFICATE] = "certificate",
    [K_LISTENER] = "listener", [K_BACKEND] = "backend",
    [K_ROUTE] = "route",       [K_MAILBOX] = "mailbox",
    [K_METRICS] = "metrics",   [K_ACME] = "acme",
};

/* What the key handler passes to a key's parser besides the value. */
struct key_use {
    int line;
    enum service service; /* for service-word keys of a backend */
};

/* Parses `text` into `field` (the key's field in its section's struct, or the
 * section's struct itself for keys with offset 0). Contract as config_value.h. */
typedef bool key_parser(void *field, const char *text, const struct key_use *use, char *err,
                        size_t errlen);

#define KEY_REQUIRED 1u  /* the section is incomplete without it */
#define KEY_LIST     2u  /* may go on over indented lines (each one adds to the list) */
#define KEY_RECORD   4u  /* the field lives in the loader's record, not the config */
#define KEY_CORE     8u  /* a refused value makes the section unusable (config_read.h) */
#define KEY_FILES    16u /* required, unless the certificate says acme = yes */

struct key_def {
    enum config_kind kind;
    const char *key; /* NULL: any service word (one endpoint of a backend) */
    key_parser *parse;
    size_t offset;
    unsigned flags;
};

/* Adapters from the typed parsers of config_value.h to key_parser. */
#define VALUE_KEY(name, type)                                                                      \
    static bool key_##name(void *field, const char *text, const struct key_use *use, char *err,    \
                           size_t errlen)                                                          \
    {                                                                                              \
        (void)use;                                                                                 \
        return value_##name(text, (type *)field, err, errlen);                                     \
    }
VALUE_KEY(duration, unsigned)
VALUE_KEY(size, size_t)
VALUE_KEY(count, unsigned)
VALUE_KEY(limit, unsigned)
VALUE_KEY(workers, unsigned)
VALUE_KEY(proxy_version, enum proxy_version)
VALUE_KEY(bool, bool)
VALUE_KEY(mode, enum listen_mode)
VALUE_KEY(balance, enum balance)
VALUE_KEY(service, enum service)
VALUE_KEY(flavour, enum tls_flavour)
VALUE_KEY(log_level, enum log_level)
VALUE_KEY(log_destination, enum log_destination)
VALUE_KEY(log_format, enum log_format)
VALUE_KEY(overload, bool)
VALUE_KEY(socket_path, char *)
VALUE_KEY(string, char *)
VALUE_KEY(hostname, char *)
VALUE_KEY(readable, char *)

/* One endpoint: "submission = HOST:PORT [flavour]". */
static bool key_endpoint(void *field, const char *text, const struct key_use *use, char *err,
                         size_t errlen)
{
    struct endpoint *ep = field;
    if (!value_endpoint(text, use->service, ep, err, errlen))
        return false;
    ep->line = use->line;
    return true;
}

/* "host = X": every endpoint without its own key, at the service's standard
 * port and flavour. Order-independent: a service key written later replaces
 * the endpoint, one written earlier is kept. */
static bool key_host(void *field, const char *text, const struct key_use *use, char *err,
                     size_t errlen)
{
    struct cfg_backend *backend = field;
    char host[300];
    if (!value_host(text, host, sizeof host, err, errlen))
        return false;
    for (int s = 0; s < SERVICE_COUNT; s++) {
        struct endpoint *ep = &backend->endpoints[s];
        if (ep->set || !service_info((enum service)s)->by_host)
            continue;
        if (!value_endpoint(host, (enum service)s, ep, err, errlen))
            return false;
        ep->line = use->line;
    }
    return true;
}

/* "client_limit_exceptions = PREFIX ...": the first line replaces the
 * default list, indented lines add to it; "none" alone empties it. */
static bool key_prefixes(void *field, const char *text, const struct key_use *use, char *err,
                         size_t errlen)
{
    struct cfg_global *global = field;
    (void)use;
    if (!global->limit_exceptions_set) {
        global->nlimit_exceptions = 0;
        global->limit_exceptions_set = true;
    }
    return value_prefixes(text, global->limit_exceptions, &global->nlimit_exceptions,
                          CONFIG_MAX_PREFIXES, &global->limit_exceptions_none, err, errlen);
}

static bool key_proxy_trusted(void *field, const char *text, const struct key_use *use, char *err,
                              size_t errlen)
{
    struct cfg_listener *listener = field;
    bool none = false;
    (void)use;
    if (!value_prefixes(text, listener->proxy_trusted, &listener->nproxy_trusted,
                        CONFIG_MAX_PREFIXES, &none, err, errlen))
        return false;
    if (none) {
        snprintf(err, errlen,
                 "'none' would trust nobody: list the addresses of the load "
                 "balancers in front of sallyport");
        return false;
    }
    return true;
}

/* "names = mail.example.com imap.example.com": host names only (a CA
 * checks each one, so no wildcard and no default "*"). */
static bool key_names(void *field, const char *text, const struct key_use *use, char *err,
                      size_t errlen)
{
    struct cfg_certificate *c = field;
    size_t before = c->nnames;
    (void)use;
    if (!value_sni(text, c->names, &c->nnames, CERT_MAX_NAMES, err, errlen))
        return false;
    for (size_t i = before; i < c->nnames; i++) {
        if (strchr(c->names[i], '*')) {
            snprintf(err, errlen,
                     "'%s': an ACME certificate lists host names only (tls-alpn-01 and http-01 "
                     "cannot prove a wildcard)",
                     c->names[i]);
            return false;
        }
    }
    return true;
}

static bool key_challenge(void *field, const char *text, const struct key_use *use, char *err,
                          size_t errlen)
{
    static const char *const words[] = {
        [CHALLENGE_TLS_ALPN_01] = "tls-alpn-01", [CHALLENGE_HTTP_01] = "http-01"};
    (void)use;
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        if (strcmp(text, words[i]) == 0) {
            *(enum acme_challenge *)field = (enum acme_challenge)i;
            return true;
        }
    }
    snprintf(err, errlen, "unknown challenge '%s' (expected tls-alpn-01 or http-01)", text);
    return false;
}

static bool key_sni(void *field, const char *text, const struct key_use *use, char *err,
                    size_t errlen)
{
    struct cfg_route *route = field;
    (void)use;
    return value_sni(text, route->sni, &route->nsni, ROUTE_MAX_NAMES, err, errlen);
}

#define OFF(type, field) offsetof(struct type, field)

/* Every key of every section. Order matters only for the lists of expected
 * keys in error messages. */
static const struct key_def keys[] = {
    {K_GLOBAL, "log_level", key_log_level, OFF(cfg_global, log_level), 0},
    {K_GLOBAL, "log", key_log_destination, OFF(cfg_global, log), 0},
    {K_GLOBAL, "log_format", key_log_format, OFF(cfg_global, log_format), 0},
    {K_GLOBAL, "syslog_socket", key_socket_path, OFF(cfg_global, syslog_socket), 0},
    {K_GLOBAL, "user", key_string, OFF(cfg_global, user), 0},
    {K_GLOBAL, "workers", key_workers, OFF(cfg_global, workers), 0},
    {K_GLOBAL, "plaintext_timeout", key_duration, OFF(cfg_global, plaintext_timeout), 0},
    {K_GLOBAL, "handshake_timeout", key_duration, OFF(cfg_global, handshake_timeout), 0},
    {K_GLOBAL, "connect_timeout", key_duration, OFF(cfg_global, connect_timeout), 0},
    {K_GLOBAL, "idle_timeout", key_duration, OFF(cfg_global, idle_timeout), 0},
    {K_GLOBAL, "shutdown_timeout", key_duration, OFF(cfg_global, shutdown_timeout), 0},
    {K_GLOBAL, "max_errors", key_count, OFF(cfg_global, max_errors), 0},
    {K_GLOBAL, "max_connections", key_count, OFF(cfg_global, max_connections), 0},
    {K_GLOBAL, "max_client_connections", key_limit, OFF(cfg_global, max_client_connections), 0},
    {K_GLOBAL, "client_connection_rate", key_limit, OFF(cfg_global, client_connection_rate), 0},
    {K_GLOBAL, "client_limit_exceptions", key_prefixes, 0, KEY_LIST},
    {K_GLOBAL, "overload", key_overload, OFF(cfg_global, overload_adapt), 0},
    {K_CERTIFICATE, "cert", key_readable, OFF(cfg_certificate, cert), KEY_FILES},
    {K_CERTIFICATE, "key", key_readable, OFF(cfg_certificate, key), KEY_FILES},
    {K_CERTIFICATE, "default", key_bool, OFF(cfg_certificate, is_default), 0},
    {K_CERTIFICATE, "acme", key_bool, OFF(cfg_certificate, acme), KEY_CORE},
    {K_CERTIFICATE, "names", key_names, 0, KEY_LIST},
    {K_CERTIFICATE, "challenge", key_challenge, OFF(cfg_certificate, challenge), 0},
    {K_LISTENER, "service", key_service, OFF(cfg_listener, service), KEY_CORE},
    {K_LISTENER, "address", key_string, OFF(cfg_listener, address), 0},
    {K_LISTENER, "mode", key_mode, OFF(cfg_listener, mode), KEY_CORE},
    {K_LISTENER, "hostname", key_hostname, OFF(cfg_listener, hostname), 0},
    {K_LISTENER, "proxy_protocol", key_bool, OFF(cfg_listener, proxy_protocol), 0},
    {K_LISTENER, "proxy_trusted", key_proxy_trusted, 0, KEY_LIST},
    {K_LISTENER, "idle_timeout", key_duration, OFF(cfg_listener, idle_timeout), 0},
    {K_LISTENER, "backend", key_string, OFF(config_record, backend_ref), KEY_RECORD},
    {K_BACKEND, "host", key_host, 0, KEY_CORE},
    {K_BACKEND, "ca", key_readable, OFF(cfg_backend, ca), 0},
    {K_BACKEND, "verify", key_bool, OFF(cfg_backend, verify), 0},
    {K_BACKEND, "tls_name", key_string, OFF(cfg_backend, tls_name), 0},
    {K_BACKEND, "proxy_protocol", key_proxy_version, OFF(cfg_backend, proxy_protocol), 0},
    {K_BACKEND, "xclient", key_bool, OFF(cfg_backend, xclient), 0},
    {K_BACKEND, "down_time", key_duration, OFF(cfg_backend, down_time), 0},
    {K_BACKEND, "check_interval", key_duration, OFF(cfg_backend, check_interval), 0},
    {K_BACKEND, NULL, key_endpoint, OFF(cfg_backend, endpoints), KEY_CORE},
    {K_ROUTE, "sni", key_sni, 0, KEY_REQUIRED | KEY_LIST},
    {K_ROUTE, "backend", key_string, OFF(config_record, backend_ref), KEY_REQUIRED | KEY_RECORD},
    {K_ROUTE, "mode", key_mode, OFF(cfg_route, mode), KEY_CORE},
    {K_ROUTE, "balance", key_balance, OFF(cfg_route, balance), 0},
    {K_MAILBOX, "address", key_string, OFF(cfg_mailbox, address), KEY_REQUIRED},
    {K_MAILBOX, "tls", key_flavour, OFF(cfg_mailbox, tls), KEY_CORE},
    {K_MAILBOX, "cert", key_readable, OFF(cfg_mailbox, cert), 0},
    {K_MAILBOX, "key", key_readable, OFF(cfg_mailbox, key), 0},
    {K_MAILBOX, "maildir", key_string, OFF(cfg_mailbox, maildir), KEY_REQUIRED},
    {K_MAILBOX, "users", key_readable, OFF(cfg_mailbox, users), 0},
    {K_MAILBOX, "hostname", key_hostname, OFF(cfg_mailbox, hostname), 0},
    {K_MAILBOX, "max_message_size", key_size, OFF(cfg_mailbox, max_message_size), 0},
    {K_METRICS, "address", key_string, OFF(cfg_metrics, address), KEY_REQUIRED},
    {K_ACME, "directory", key_string, OFF(cfg_acme, directory), 0},
    {K_ACME, "contact", key_string, OFF(cfg_acme, contact), 0},
    {K_ACME, "state_dir", key_string, OFF(cfg_acme, state_dir), 0},
    {K_ACME, "ca", key_readable, OFF(cfg_acme, ca), 0},
    {K_ACME, "retry_interval", key_duration, OFF(cfg_acme, retry_interval), 0},
    {K_ACME, "http_address", key_string, OFF(cfg_acme, http_address), 0},
};
#define NKEYS (sizeof keys / sizeof keys[0])
_Static_assert(NKEYS + SERVICE_COUNT <= CONFIG_KEY_SLOTS, "raise CONFIG_KEY_SLOTS");

void config_report(struct config_loader *ld, int line, const char *key, const char *fmt, ...)
{
    ld->nerrors++;
    if (!ld->errors)
        return;
    fprintf(ld->errors, "%s:%d: ", ld->path, line);
    if (key)
        fprintf(ld->errors, "%s: ", key);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(ld->errors, fmt, ap);
    va_end(ap);
    fputc('\n', ld->errors);
}

/* The section's struct in the config; valid until the arrays grow. */
static void *object(const struct config_loader *ld, const struct config_record *rec)
{
    struct config *cfg = ld->cfg;
    switch (rec->kind) {
    case K_GLOBAL:
        return &cfg->global;
    case K_CERTIFICATE:
        return &cfg->certificates[rec->index];
    case K_LISTENER:
        return &cfg->listeners[rec->index];
    case K_BACKEND:
        return &cfg->backends[rec->index];
    case K_ROUTE:
        return &cfg->routes[rec->index];
    case K_MAILBOX:
        return &cfg->mailboxes[rec->index];
    case K_METRICS:
        return &cfg->metrics;
    case K_ACME:
        return &cfg->acme;
    case K_COUNT:
        break;
    }
    abort();
}

/* The key's definition for a section kind, or NULL. Sets *service for
 * service-word keys. */
static const struct key_def *find_key(enum config_kind kind, const char *key, enum service *service)
{
    for (size_t i = 0; i < NKEYS; i++) {
        if (keys[i].kind != kind)
            continue;
        if (keys[i].key ? strcmp(keys[i].key, key) == 0 : service_parse(key, service) == 0)
            return &keys[i];
    }
    return NULL;
}

/* Index of a key in record.key_line. */
static size_t key_slot(const struct key_def *def, enum service service)
{
    return def->key ? (size_t)(def - keys) : NKEYS + (size_t)service;
}

/* Line of `key` in the section, or the header's line when it is not set. */
int config_key_line(const struct config_record *rec, const char *key)
{
    enum service service = SERVICE_COUNT;
    const struct key_def *def = find_key(rec->kind, key, &service);
    int line = def ? rec->key_line[key_slot(def, service)] : 0;
    return line ? line : rec->line;
}

bool config_key_set(const struct config_record *rec, const char *key)
{
    return config_key_line(rec, key) != rec->line;
}

/* Writes "a, b or c" (the keys a section kind takes) into out. */
static char *expected_keys(enum config_kind kind, char *out, size_t outlen)
{
    const char *names[NKEYS];
    size_t n = 0;
    for (size_t i = 0; i < NKEYS; i++)
        if (keys[i].kind == kind)
            names[n++] = keys[i].key ? keys[i].key : "a service word such as submission";
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && used < outlen; i++) {
        const char *sep = i == 0 ? "" : i + 1 == n ? " or " : ", ";
        int w = snprintf(out + used, outlen - used, "%s%s", sep, names[i]);
        used += w > 0 ? (size_t)w : 0;
    }
    return out;
}

static int on_key(void *user, const char *section, const char *name, const char *value)
{
    struct config_loader *ld = user;
    (void)section; /* we track sections ourselves, see read_line() */
    ld->handled = true;
    if (!name)
        return 1;
    bool continuation = ld->kind == LINE_CONTINUATION;
    ld->key_seen = name[0] != '\0'; /* as inih decides what continues a key */
    if (!ld->in_section) {
        if (!continuation)
            config_report(ld, ld->line, name, "key outside any section (put it under a [section])");
        return 1;
    }
    if (ld->cur == CONFIG_NO_RECORD)
        return 1; /* the section header was already reported */
    if (name[0] == '\0') {
        config_report(ld, ld->line, NULL, "syntax error: no key name before '='");
        return 1;
    }
    struct config_record *rec = &ld->recs[ld->cur];
    struct key_use use = {.line = ld->line, .service = SERVICE_COUNT};
    const struct key_def *def = find_key(rec->kind, name, &use.service);
    char err[512];
    if (!def) {
        if (!continuation)
            config_report(ld, ld->line, name, "unknown key in [%s] (expected %s)", rec->label,
                          expected_keys(rec->kind, err, sizeof err));
        return 1;
    }
    size_t slot = key_slot(def, use.service);
    if (continuation && !(def->flags & KEY_LIST)) {
        config_report(ld, ld->line, name,
                      "indented line continues '%s', which takes one value (remove the indentation "
                      "to start a new key)",
                      name);
        return 1;
    }
    if (!continuation && rec->key_line[slot]) {
        config_report(ld, ld->line, name, "duplicate key (already set at line %d)",
                      rec->key_line[slot]);
        return 1;
    }
    if (!continuation)
        rec->key_line[slot] = ld->line;
    char *base = def->flags & KEY_RECORD ? (char *)rec : object(ld, rec);
    size_t offset = def->offset + (def->key ? 0 : (size_t)use.service * sizeof(struct endpoint));
    if (!def->parse(base + offset, value, &use, err, sizeof err)) {
        config_report(ld, ld->line, name, "%s", err);
        rec->unusable |= (def->flags & KEY_CORE) != 0;
    }
    return 1;
}

/* Returns a pointer to one more zeroed element at the end of `array` (n
 * elements of `size`), storing the grown array in *grown; NULL when out of
 * memory (the array is then unchanged). */
static void *grow(void *array, size_t n, size_t size, void **grown)
{
    unsigned char *p = realloc(array, (n + 1) * size);
    if (!p)
        return NULL;
    memset(p + n * size, 0, size);
    *grown = p;
    return p + n * size;
}

/* Adds the backend of a [backend] or [mailbox] section. */
static bool add_backend(struct config_loader *ld, struct config_record *rec)
{
    struct config *cfg = ld->cfg;
    void *grown = NULL;
    struct cfg_backend *b = grow(cfg->backends, cfg->nbackends, sizeof *b, &grown);
    if (!b)
        return false;
    cfg->backends = grown;
    rec->backend = cfg->nbackends++;
    if (rec->kind == K_BACKEND)
        rec->index = rec->backend;
    b->line = rec->line;
    b->verify = rec->kind == K_BACKEND; /* a mailbox runs in-process: trusted */
    b->down_time = 30;
    return (b->name = strdup(rec->name)) != NULL;
}

/* Adds the section's struct (with its defaults) to the config and sets the
 * record's indexes. Returns false when out of memory; whatever was added
 * stays in the config for config_free(). */
static bool add_object(struct config_loader *ld, struct config_record *rec)
{
    struct config *cfg = ld->cfg;
    void *grown = NULL;
    switch (rec->kind) {
    case K_GLOBAL:
        return true;
    case K_METRICS:
        cfg->metrics.set = true;
        cfg->metrics.line = rec->line;
        return true;
    case K_ACME:
        cfg->acme.set = true;
        cfg->acme.line = rec->line;
        return true;
    case K_CERTIFICATE: {
        struct cfg_certificate *c = grow(cfg->certificates, cfg->ncertificates, sizeof *c, &grown);
        if (!c)
            return false;
        cfg->certificates = grown;
        rec->index = cfg->ncertificates++;
        c->line = rec->line;
        return (c->name = strdup(rec->name)) != NULL;
    }
    case K_LISTENER: {
        struct cfg_listener *l = grow(cfg->listeners, cfg->nlisteners, sizeof *l, &grown);
        if (!l)
            return false;
        cfg->listeners = grown;
        rec->index = cfg->nlisteners++;
        l->line = rec->line;
        l->mode = MODE_TERMINATE;
        l->web_route = CONFIG_NO_ROUTE;
        return (l->name = strdup(rec->name)) != NULL;
    }
    case K_ROUTE: {
        struct cfg_route *r = grow(cfg->routes, cfg->nroutes, sizeof *r, &grown);
        if (!r)
            return false;
        cfg->routes = grown;
        rec->index = cfg->nroutes++;
        r->line = rec->line;
        return (r->name = strdup(rec->name)) != NULL;
    }
    case K_MAILBOX: {
        struct cfg_mailbox *m = grow(cfg->mailboxes, cfg->nmailboxes, sizeof *m, &grown);
        if (!m)
            return false;
        cfg->mailboxes = grown;
        rec->index = cfg->nmailboxes++;
        m->line = rec->line;
        m->tls = TLS_PLAIN;
        m->max_message_size = 52428800;
        /* A mailbox is also a backend of the same name. */
        return (m->name = strdup(rec->name)) != NULL && add_backend(ld, rec);
    }
    case K_BACKEND:
        return add_backend(ld, rec);
    case K_COUNT:
        break;
    }
    abort();
}

/* True when a section of `kind` named `name` may be added; reports the clash
 * otherwise. Backends and mailboxes share one namespace. */
static bool name_is_free(struct config_loader *ld, enum config_kind kind, const char *name,
                         const char *label)
{
    for (size_t i = 0; i < ld->nrecs; i++) {
        const struct config_record *r = &ld->recs[i];
        bool same_kind = r->kind == kind;
        bool both_backends = (r->kind == K_BACKEND || r->kind == K_MAILBOX) &&
                             (kind == K_BACKEND || kind == K_MAILBOX);
        if ((!same_kind && !both_backends) || strcmp(r->name, name) != 0)
            continue;
        if (same_kind)
            config_report(ld, ld->line, label,
                          "duplicate section ([%s] is already defined at line %d)", r->label,
                          r->line);
        else
            config_report(
                ld, ld->line, label,
                "name '%s' is already used by [%s] at line %d (a mailbox is also a backend, "
                "so they share names)",
                name, r->label, r->line);
        return false;
    }
    return true;
}

/* Starts the section whose header reads "[inside]". Keys that follow go to
 * the new record, or are skipped (ld->cur = CONFIG_NO_RECORD) when the header is bad. */
static void begin_section(struct config_loader *ld, const char *inside, size_t len)
{
    char text[256];
    while (len > 0 && (*inside == ' ' || *inside == '\t'))
        inside++, len--;
    while (len > 0 && (inside[len - 1] == ' ' || inside[len - 1] == '\t'))
        len--;
    snprintf(text, sizeof text, "%.*s", (int)len, inside);
    ld->in_section = true;
    ld->key_seen = false;
    ld->cur = CONFIG_NO_RECORD;

    size_t kind_len = strcspn(text, " \t");
    const char *name = text + kind_len + strspn(text + kind_len, " \t");
    int kind = 0;
    while (kind < K_COUNT &&
           (strlen(kind_names[kind]) != kind_len || strncmp(text, kind_names[kind], kind_len) != 0))
        kind++;
    if (kind == K_COUNT) {
        config_report(
            ld, ld->line, text,
            "unknown section kind '%.*s' (expected global, certificate, listener, backend, "
            "route, mailbox, metrics or acme)",
            (int)kind_len, text);
        return;
    }
    bool singleton = kind == K_GLOBAL || kind == K_METRICS || kind == K_ACME;
    if (singleton && name[0]) {
        config_report(ld, ld->line, text, "[%s] takes no name (write [%s])", kind_names[kind],
                      kind_names[kind]);
        return;
    }
    if (!singleton && !name[0]) {
        config_report(ld, ld->line, text, "missing name (write [%s NAME])", text);
        return;
    }
    if (strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") !=
        strlen(name)) {
        config_report(ld, ld->line, text, "bad name '%s' (use letters, digits, '.', '_' and '-')",
                      name);
        return;
    }
    if (!name_is_free(ld, (enum config_kind)kind, name, text))
        return;

    void *grown = NULL;
    struct config_record *rec = grow(ld->recs, ld->nrecs, sizeof *rec, &grown);
    if (!rec) {
        config_report(ld, ld->line, text, "out of memory");
        return;
    }
    ld->recs = grown;
    rec->kind = (enum config_kind)kind;
    rec->line = ld->line;
    rec->index = rec->backend = CONFIG_NO_RECORD;
    char label[256];
    snprintf(label, sizeof label, "%s%s%s", kind_names[kind], name[0] ? " " : "", name);
    rec->label = strdup(label);
    if (rec->label)
        rec->name = rec->label + strlen(label) - strlen(name);
    if (!rec->label || !add_object(ld, rec)) {
        free(rec->label);
        config_report(ld, ld->line, text, "out of memory");
        return;
    }
    ld->cur = ld->nrecs++;
}

/* Reports the line just read when inih did not accept it. */
static void end_line(struct config_loader *ld)
{
    if (ld->kind == LINE_CONTENT && !ld->handled) {
        config_report(ld, ld->line, NULL,
                      "syntax error (expected \"key = value\", a [section] header or a ; comment)");
        if (!ld->first_syntax_error)
            ld->first_syntax_error = ld->line;
    }
    ld->kind = LINE_BLANK;
}

/* Sorts a line the way inih will read it (ini.c, ini_parse_stream) and starts
 * a section at a header. */
static void classify(struct config_loader *ld, char *line)
{
    char *p = line;
    if (ld->line == 1 && strncmp(p, "\xEF\xBB\xBF", 3) == 0)
        p += 3;
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n' || *p == '\f' || *p == '\v')
        p++;
    bool indented = p > line;
    if (*p == '\0' || *p == ';' || *p == '#') {
        ld->kind = LINE_BLANK;
    } else if (indented && ld->key_seen) {
        ld->kind = LINE_CONTINUATION;
    } else if (*p == '[') {
        /* Like inih: the header ends at ']' or at an inline " ;" comment. */
        char *end = p + 1;
        bool was_space = false;
        while (*end && *end != ']' && !(was_space && *end == ';')) {
            was_space = *end == ' ' || *end == '\t';
            end++;
        }
        ld->kind = *end == ']' ? LINE_HEADER : LINE_CONTENT;
        if (*end == ']')
            begin_section(ld, p + 1, (size_t)(end - p - 1));
    } else {
        ld->kind = LINE_CONTENT;
    }
}

/* inih's reader: fgets() that counts lines and refuses over-long ones and
 * NUL bytes (which fgets() would let split one line into several). */
static char *read_line(char *str, int num, void *stream)
{
    struct config_loader *ld = stream;
    end_line(ld);
    size_t len = 0, max = (size_t)num - 1;
    bool has_nul = false, too_long = false;
    int c;
    while ((c = fgetc(ld->fp)) != EOF) {
        if (c == '\0')
            has_nul = true;
        else if (len < max)
            str[len++] = (char)c;
        else if (c != '\n')
            too_long = true;
        if (c == '\n')
            break;
    }
    if (len == 0 && c == EOF && !has_nul)
        return NULL;
    str[len] = '\0';
    ld->line++;
    ld->handled = false;
    if (too_long || has_nul) {
        if (too_long)
            config_report(ld, ld->line, NULL,
                          "syntax error: line longer than %d characters (continue a long sni "
                          "list on indented lines)",
                          num - 1);
        else
            config_report(ld, ld->line, NULL, "syntax error: NUL byte in line");
        str[0] = '\0';
        return str;
    }
    classify(ld, str);
    return str;
}

void config_read(struct config_loader *ld)
{
    int rc = ini_parse_stream(read_line, ld, on_key, ld);
    end_line(ld);
    /* read_line() reports syntax errors as inih meets them; this catches a
     * rule of inih's it does not know. */
    if (rc > 0 && rc != ld->first_syntax_error)
        config_report(ld, rc, NULL, "syntax error");
    else if (rc < 0)
        config_report(ld, ld->line, NULL, "out of memory");
    for (size_t i = 0; i < ld->nrecs; i++) {
        const struct config_record *rec = &ld->recs[i];
        bool acme = rec->kind == K_CERTIFICATE && ld->cfg->certificates[rec->index].acme;
        for (size_t k = 0; k < NKEYS; k++) {
            bool required =
                (keys[k].flags & KEY_REQUIRED) || ((keys[k].flags & KEY_FILES) && !acme);
            if (keys[k].kind == rec->kind && required && !rec->key_line[k])
                config_report(ld, rec->line, rec->label, "missing required key '%s'", keys[k].key);
        }
    }
}

void config_read_free(struct config_loader *ld)
{
    for (size_t i = 0; i < ld->nrecs; i++) {
        free(ld->recs[i].label);
        free(ld->recs[i].backend_ref);
    }
    free(ld->recs);
}
