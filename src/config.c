/* config — sallyport.conf into one struct config.
 *
 * config_read.c reads the file (inih) into the config, one record per
 * section, checking each value; this file then finishes each section
 * (defaults, certificates, addresses) and checks the sections against each
 * other (routes, backends, listeners). Errors never stop loading: every one
 * is reported, and any error means no config. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "acme_crypto.h"
#include "config.h"
#include "config_read.h"
#include "config_value.h"
#include "dialogue/dialogue.h"
#include "tls.h"

/* gethostname(), or "localhost" when it fails or is not a plain host name
 * (it goes into greetings and EHLO); malloc'd, NULL when out of memory. */
static char *machine_hostname(void)
{
    char name[256] = "";
    if (gethostname(name, sizeof name - 1) != 0 || !greeting_name_ok(name))
        snprintf(name, sizeof name, "localhost");
    return strdup(name);
}

/* ---- finishing each section once the whole file is read ---- */

/* A certificate is files (cert, key) or ACME's (acme = yes, names). */
static void finish_certificate(struct config_loader *ld, struct config_record *rec)
{
    struct cfg_certificate *c = &ld->cfg->certificates[rec->index];
    char err[512];
    if (c->acme) {
        for (const char *const *k = (const char *const[]){"cert", "key", NULL}; *k; k++)
            if (config_key_set(rec, *k))
                config_report(ld, config_key_line(rec, *k), *k,
                              "certificate '%s' has acme = yes: sallyport gets its certificate "
                              "and key itself (remove %s, or acme)",
                              c->name, *k);
        if (c->nnames == 0 && !config_key_set(rec, "names"))
            config_report(ld, rec->line, rec->label,
                          "acme = yes needs the names to get a certificate for (add names = "
                          "mail.example.com ...)");
        if (c->challenge == CHALLENGE_HTTP_01 && !ld->cfg->acme.http_address)
            config_report(ld, config_key_line(rec, "challenge"), "challenge",
                          "http-01 needs [acme] http_address, where the CA's requests to port "
                          "80 arrive (or use tls-alpn-01)");
    } else {
        for (const char *const *k = (const char *const[]){"names", "challenge", NULL}; *k; k++)
            if (config_key_set(rec, *k))
                config_report(ld, config_key_line(rec, *k), *k,
                              "only a certificate with acme = yes takes %s (add acme = yes, or "
                              "remove %s)",
                              *k, *k);
    }
    if (c->cert && c->key && !(c->ctx = tls_server_ctx_new(c->cert, c->key, err, sizeof err)))
        config_report(ld, config_key_line(rec, "cert"), "cert", "%s", err);
    for (size_t i = 0; c->is_default && i < rec->index; i++) {
        if (ld->cfg->certificates[i].is_default) {
            config_report(ld, config_key_line(rec, "default"), "default",
                          "certificate '%s' is marked default, and so is '%s' (line %d); only one "
                          "may be",
                          c->name, ld->cfg->certificates[i].name, ld->cfg->certificates[i].line);
            break;
        }
    }
}

static uint16_t address_port(const struct sock_addr *a)
{
    return a->ss.ss_family == AF_INET
               ? ((const struct sockaddr_in *)(const void *)&a->ss)->sin_port
               : ((const struct sockaddr_in6 *)(const void *)&a->ss)->sin6_port;
}

/* The families a listening socket on `a` takes connections for: IPv4
 * (bit 0), IPv6 (bit 1); and whether it takes every address of them. An
 * IPv6 socket is dual-stack (sock_listen), so [::] takes IPv4 too. */
static unsigned address_reach(const struct sock_addr *a, bool *wildcard)
{
    if (a->ss.ss_family == AF_INET) {
        *wildcard = ((const struct sockaddr_in *)(const void *)&a->ss)->sin_addr.s_addr == 0;
        return 1;
    }
    const struct in6_addr *in6 = &((const struct sockaddr_in6 *)(const void *)&a->ss)->sin6_addr;
    *wildcard = IN6_IS_ADDR_UNSPECIFIED(in6);
    return *wildcard ? 3 : IN6_IS_ADDR_V4MAPPED(in6) ? 1 : 2;
}

static bool same_address(const struct sock_addr *a, const struct sock_addr *b)
{
    if (a->ss.ss_family != b->ss.ss_family)
        return false;
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)&a->ss, *y = (const void *)&b->ss;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)&a->ss, *y = (const void *)&b->ss;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
}

/* `a` with an IPv4-mapped IPv6 address ([::ffff:192.0.2.1]) written as
 * the IPv4 address it is to the kernel. */
static struct sock_addr unmapped(const struct sock_addr *a)
{
    struct sock_addr out = *a;
    const struct sockaddr_in6 *in6 = (const void *)&a->ss;
    if (a->ss.ss_family != AF_INET6 || !IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
        return out;
    struct sockaddr_in in4 = {.sin_family = AF_INET, .sin_port = in6->sin6_port};
    memcpy(&in4.sin_addr, &in6->sin6_addr.s6_addr[12], 4);
    memset(&out.ss, 0, sizeof out.ss);
    memcpy(&out.ss, &in4, sizeof in4);
    out.len = sizeof in4;
    return out;
}

/* Whether sockets on a and b would take connections for the same address
 * and port: the same address, or a wildcard on the other's port and
 * family. The kernel refuses the second bind, except with SO_REUSEPORT
 * (workers > 1), where both would silently share the connections. */
static bool addresses_overlap(const struct sock_addr *a_written, const struct sock_addr *b_written)
{
    struct sock_addr a_plain = unmapped(a_written), b_plain = unmapped(b_written);
    const struct sock_addr *a = &a_plain, *b = &b_plain;
    if (address_port(a) != address_port(b))
        return false;
    if (same_address(a, b))
        return true;
    bool wild_a, wild_b;
    unsigned reach_a = address_reach(a, &wild_a), reach_b = address_reach(b, &wild_b);
    return (wild_a || wild_b) && (reach_a & reach_b) != 0;
}

static void finish_listener(struct config_loader *ld, struct config_record *rec)
{
    struct config *cfg = ld->cfg;
    struct cfg_listener *l = &cfg->listeners[rec->index];
    if (!config_key_set(rec, "service") && service_parse(l->name, &l->service) != 0) {
        config_report(ld, rec->line, rec->label,
                      "missing required key 'service' ('%s' is not a service word such as "
                      "submissions or submission)",
                      l->name);
        rec->unusable = true;
    }
    if (rec->unusable) /* service or mode unknown: the rest would be guesswork */
        return;
    if (!l->address) {
        char text[32];
        snprintf(text, sizeof text, "[::]:%u", (unsigned)service_info(l->service)->port);
        l->address = strdup(text);
    }
    if (!l->hostname)
        l->hostname = machine_hostname();
    char err[512];
    if (!l->address || !l->hostname) {
        config_report(ld, rec->line, rec->label, "out of memory");
    } else if (sock_addr_parse(l->address, service_info(l->service)->port, &l->addr, NULL, 0, err,
                               sizeof err) != 0) {
        config_report(ld, config_key_line(rec, "address"), "address", "%s", err);
    }
    if (!l->idle_timeout)
        l->idle_timeout = cfg->global.idle_timeout ? cfg->global.idle_timeout
                                                   : service_info(l->service)->idle_timeout;
    if (l->proxy_protocol && l->nproxy_trusted == 0)
        config_report(ld, config_key_line(rec, "proxy_protocol"), "proxy_protocol",
                      "proxy_protocol = yes needs proxy_trusted: the addresses of the load "
                      "balancers that may send PROXY headers");
    if (!l->proxy_protocol && l->nproxy_trusted > 0)
        config_report(ld, config_key_line(rec, "proxy_trusted"), "proxy_trusted",
                      "proxy_trusted has no effect without proxy_protocol = yes");
    if (l->service == SERVICE_HTTPS) {
        if (config_key_set(rec, "mode") && l->mode == MODE_TERMINATE)
            config_report(ld, config_key_line(rec, "mode"), "mode",
                          "an https listener passes TLS through to the web server untouched "
                          "(sallyport terminates only a CA's tls-alpn-01 check): remove mode");
        l->mode = MODE_PASSTHROUGH;
        return; /* [route]s are for mail; backend = NAME is checked with them */
    }
    if (rec->backend_ref)
        config_report(ld, config_key_line(rec, "backend"), "backend",
                      "only an https listener takes backend (mail listeners choose a backend "
                      "by [route])");
    if (l->mode == MODE_TERMINATE && cfg->ncertificates == 0)
        config_report(
            ld, config_key_line(rec, "mode"), config_key_set(rec, "mode") ? "mode" : rec->label,
            "listener '%s' terminates TLS, but there is no [certificate] (add one, or set "
            "mode = passthrough)",
            l->name);
    if (cfg->nroutes == 0)
        config_report(ld, rec->line, rec->label,
                      "no route: add a [route] with sni = * and a backend");
}

/* xclient = yes names the client one way: not also with a PROXY header. */
static void check_xclient(struct config_loader *ld, const struct config_record *rec,
                          const struct cfg_backend *b)
{
    if (b->proxy_protocol != PROXY_NONE)
        config_report(ld, config_key_line(rec, "xclient"), "xclient",
                      "backend '%s' already gets a PROXY header (proxy_protocol, line %d); "
                      "name the client one way only",
                      b->name, config_key_line(rec, "proxy_protocol"));
}

static void finish_backend(struct config_loader *ld, struct config_record *rec)
{
    const struct cfg_backend *b = &ld->cfg->backends[rec->index];
    if (b->xclient)
        check_xclient(ld, rec, b);
    for (int s = 0; s < SERVICE_COUNT; s++)
        if (b->endpoints[s].set)
            return;
    if (!rec->unusable)
        config_report(ld, rec->line, rec->label,
                      "no endpoints (set host = HOST, or one key per service such as "
                      "submissions = HOST:PORT)");
}

/* A mailbox's tls, cert and key: loads the certificate unless tls = plain. */
static void finish_mailbox_tls(struct config_loader *ld, struct config_record *rec)
{
    struct cfg_mailbox *m = &ld->cfg->mailboxes[rec->index];
    char err[512];
    if (m->tls == TLS_PLAIN) {
        if (m->cert || m->key)
            config_report(ld, config_key_line(rec, m->cert ? "cert" : "key"),
                          m->cert ? "cert" : "key",
                          "unused with tls = plain (remove it, or set tls = implicit or starttls)");
    } else if (!m->cert || !m->key) {
        if (!config_key_set(rec, m->cert ? "key" : "cert")) /* else it was refused already */
            config_report(ld, rec->line, rec->label,
                          "missing required key '%s' (needed with tls = %s)",
                          m->cert ? "key" : "cert", tls_flavour_name(m->tls));
    } else if (!(m->ctx = tls_server_ctx_new(m->cert, m->key, err, sizeof err))) {
        config_report(ld, config_key_line(rec, "cert"), "cert", "%s", err);
    }
}

static void finish_mailbox(struct config_loader *ld, struct config_record *rec)
{
    struct cfg_mailbox *m = &ld->cfg->mailboxes[rec->index];
    char err[512], host[256] = "";
    /* So far only a refused tls makes a mailbox unusable: cert and key
     * cannot be judged then. */
    if (!rec->unusable)
        finish_mailbox_tls(ld, rec);
    if (m->address) {
        if (m->address[0] == '*' || m->address[0] == ':' ||
            strspn(m->address, "0123456789") == strlen(m->address))
            config_report(
                ld, config_key_line(rec, "address"), "address",
                "'%s' has no host (the mailbox listens there and sallyport connects to it: "
                "write HOST:PORT, e.g. 127.0.0.1:2525)",
                m->address);
        else if (sock_addr_parse(m->address, 0, &m->addr, host, sizeof host, err, sizeof err))
            config_report(ld, config_key_line(rec, "address"), "address", "%s", err);
    }
    if (!host[0])
        rec->unusable = true; /* no endpoints for the pair checks */
    if (!m->hostname && !(m->hostname = machine_hostname()))
        config_report(ld, rec->line, rec->label, "out of memory");

    /* The backend of the same name: every SMTP service at the mailbox. */
    struct cfg_backend *b = &ld->cfg->backends[rec->backend];
    for (int s = 0; s < SERVICE_COUNT && host[0]; s++) {
        if (service_info((enum service)s)->proto != PROTO_SMTP)
            continue;
        struct endpoint *ep = &b->endpoints[s];
        ep->set = true;
        ep->line = config_key_line(rec, "address");
        snprintf(ep->host, sizeof ep->host, "%s", host);
        ep->tls = m->tls;
        ep->addrs[0] = m->addr;
        ep->naddrs = 1;
    }
}

/* An address of our own HTTP endpoints: HOST:PORT, both required. */
static void parse_http_address(struct config_loader *ld, struct config_record *rec, const char *key,
                               const char *text, const char *example, struct sock_addr *addr)
{
    char err[512];
    if (text[0] == '*' || strspn(text, "0123456789") == strlen(text) || !strrchr(text, ':'))
        config_report(ld, config_key_line(rec, key), key,
                      "'%s' needs a host and a port (write HOST:PORT, e.g. %s)", text, example);
    else if (sock_addr_parse(text, 0, addr, NULL, 0, err, sizeof err))
        config_report(ld, config_key_line(rec, key), key, "%s", err);
}

static void finish_metrics(struct config_loader *ld, struct config_record *rec)
{
    struct cfg_metrics *m = &ld->cfg->metrics;
    if (m->address) /* else reported as missing */
        parse_http_address(ld, rec, "address", m->address, "127.0.0.1:9465", &m->addr);
}

static void finish_acme(struct config_loader *ld, struct config_record *rec)
{
    struct cfg_acme *a = &ld->cfg->acme;
    if (a->directory && strncmp(a->directory, "https://", 8) != 0)
        config_report(ld, config_key_line(rec, "directory"), "directory",
                      "'%s' is not an https:// URL (ACME is spoken over HTTPS only: write the "
                      "CA's directory URL, e.g. %s)",
                      a->directory, ACME_DIRECTORY_DEFAULT);
    if (a->contact && (strchr(a->contact, ' ') || !strchr(a->contact, '@')))
        config_report(ld, config_key_line(rec, "contact"), "contact",
                      "'%s' is not an e-mail address (the CA writes to it about expiring "
                      "certificates)",
                      a->contact);
    if (a->state_dir && a->state_dir[0] != '/')
        config_report(ld, config_key_line(rec, "state_dir"), "state_dir",
                      "'%s' is not an absolute path", a->state_dir);
    if (a->http_address)
        parse_http_address(ld, rec, "http_address", a->http_address, "[::]:80", &a->http_addr);
    if (config_key_set(rec, "retry_interval") && a->retry_interval == 0)
        config_report(ld, config_key_line(rec, "retry_interval"), "retry_interval",
                      "0 would retry a failing CA without a pause (write seconds, e.g. 60)");
}

static void (*const finishers[K_COUNT])(struct config_loader *, struct config_record *) = {
    [K_CERTIFICATE] = finish_certificate, [K_LISTENER] = finish_listener,
    [K_BACKEND] = finish_backend,         [K_MAILBOX] = finish_mailbox,
    [K_METRICS] = finish_metrics,         [K_ACME] = finish_acme,
};

int config_acme_file(const struct config *config, const struct cfg_certificate *c, char *out,
                     size_t outlen)
{
    int n = snprintf(out, outlen, "%s/%s.pem", config->acme.state_dir, c->name);
    return n >= 0 && (size_t)n < outlen ? 0 : -1;
}

/* An ACME certificate's context: the state directory's certificate when it
 * loads, the last good one (even if expired, or for names since changed:
 * acme.c orders a new one then); otherwise a temporary self-signed one
 * until acme.c gets the first. */
static void load_acme_certificate(struct config_loader *ld, struct cfg_certificate *c)
{
    char path[4096], err[512];
    if (config_acme_file(ld->cfg, c, path, sizeof path) == 0 && access(path, F_OK) == 0 &&
        (c->ctx = tls_server_ctx_new(path, path, err, sizeof err)))
        return;
    c->temporary = true;
    EVP_PKEY *key = acme_key_new();
    X509 *cert =
        key ? acme_selfsigned_cert(key, (const char *const *)c->names, c->nnames, 7) : NULL;
    if (cert)
        c->ctx = tls_server_ctx_of(cert, key, err, sizeof err);
    else
        snprintf(err, sizeof err, "cannot make a temporary certificate");
    if (!c->ctx)
        config_report(ld, c->line, c->name, "%s", err);
    X509_free(cert);
    EVP_PKEY_free(key);
}

/* [acme]'s defaults (they hold without the section too), then every ACME
 * certificate's context. */
static void finish_acme_certificates(struct config_loader *ld)
{
    struct cfg_acme *a = &ld->cfg->acme;
    if ((!a->directory && !(a->directory = strdup(ACME_DIRECTORY_DEFAULT))) ||
        (!a->state_dir && !(a->state_dir = strdup(ACME_STATE_DIR_DEFAULT)))) {
        config_report(ld, a->line, "acme", "out of memory");
        return;
    }
    if (a->retry_interval == 0)
        a->retry_interval = 60;
    for (size_t i = 0; i < ld->cfg->ncertificates; i++) {
        struct cfg_certificate *c = &ld->cfg->certificates[i];
        if (c->acme && c->nnames > 0 && !ld->nerrors)
            load_acme_certificate(ld, c);
    }
}

/* ---- checks across sections ---- */

static const char *const flavour_words[] = {
    [TLS_PLAIN] = "plain", [TLS_IMPLICIT] = "implicit TLS", [TLS_STARTTLS] = "STARTTLS"};

/* DESIGN.md's table of listener/backend pairs: why a passthrough listener of
 * one flavour cannot use a backend endpoint of another; NULL = it can.
 * A terminating listener can use every flavour. */
static const char *const passthrough_problem[3][3] = {
    [TLS_IMPLICIT] =
        {
            [TLS_PLAIN] = "the client would wait for a TLS handshake that never comes",
            [TLS_STARTTLS] = "the client would wait for a greeting inside TLS that never comes",
        },
    [TLS_STARTTLS] =
        {
            [TLS_PLAIN] = "a plaintext backend cannot receive a TLS stream",
            [TLS_IMPLICIT] = "the backend would greet inside TLS",
        },
};

static const struct config_record *record_of_backend(const struct config_loader *ld, size_t backend)
{
    for (size_t i = 0; i < ld->nrecs; i++)
        if ((ld->recs[i].kind == K_BACKEND || ld->recs[i].kind == K_MAILBOX) &&
            ld->recs[i].backend == backend)
            return &ld->recs[i];
    return NULL;
}

/* The address a listener or mailbox record listens on, with its text and
 * section word; NULL when it has none (not usable, or another record kind). */
static const struct sock_addr *listening_address(const struct config_loader *ld,
                                                 const struct config_record *rec, const char **text,
                                                 const char **word, const char **name,
                                                 const char **key)
{
    const struct sock_addr *addr = NULL;
    *key = "address";
    if (rec->kind == K_LISTENER) {
        const struct cfg_listener *l = &ld->cfg->listeners[rec->index];
        addr = &l->addr, *text = l->address, *word = "listener", *name = l->name;
    } else if (rec->kind == K_MAILBOX) {
        const struct cfg_mailbox *m = &ld->cfg->mailboxes[rec->index];
        addr = &m->addr, *text = m->address, *word = "mailbox", *name = m->name;
    } else if (rec->kind == K_METRICS) {
        addr = &ld->cfg->metrics.addr, *text = ld->cfg->metrics.address, *word = "metrics",
        *name = NULL;
    } else if (rec->kind == K_ACME && ld->cfg->acme.http_address) {
        addr = &ld->cfg->acme.http_addr, *text = ld->cfg->acme.http_address, *word = "acme",
        *name = NULL, *key = "http_address";
    }
    return addr && addr->len ? addr : NULL;
}

/* Every listener and mailbox listens on an address of its own: one that
 * overlaps an earlier one is reported at the later one. */
static void check_addresses(struct config_loader *ld)
{
    for (size_t i = 0; i < ld->nrecs; i++) {
        const struct config_record *rec = &ld->recs[i];
        const char *text, *word, *name, *addr_key;
        const struct sock_addr *addr = listening_address(ld, rec, &text, &word, &name, &addr_key);
        for (size_t j = 0; addr && j < i; j++) {
            const char *other_text, *other_word, *other_name, *other_key;
            const struct sock_addr *other = listening_address(ld, &ld->recs[j], &other_text,
                                                              &other_word, &other_name, &other_key);
            if (!other || !addresses_overlap(addr, other))
                continue;
            const char *key = config_key_set(rec, addr_key) ? addr_key : rec->label;
            char section[128];
            snprintf(section, sizeof section, "[%s%s%s]", other_word, other_name ? " " : "",
                     other_name ? other_name : "");
            struct sock_addr plain = unmapped(addr), other_plain = unmapped(other);
            if (same_address(&plain, &other_plain))
                config_report(ld, config_key_line(rec, addr_key), key,
                              "%s is already used by %s at line %d (give each listener "
                              "and mailbox its own address)",
                              text, section, ld->recs[j].line);
            else
                config_report(ld, config_key_line(rec, addr_key), key,
                              "%s overlaps %s of %s at line %d: a wildcard address takes "
                              "the port on every address (give each its own port)",
                              text, other_text, section, ld->recs[j].line);
            break;
        }
    }
}

/* Checks every listener/route pair that can occur: the listener must reach
 * the route's backend in the mode the route gets on it. */
static void check_pairs(struct config_loader *ld, const struct config_record *rec,
                        const struct cfg_route *r, const struct cfg_backend *b)
{
    int line = config_key_line(rec, "backend");
    for (size_t i = 0; i < ld->nrecs; i++) {
        const struct config_record *lrec = &ld->recs[i];
        if (lrec->kind != K_LISTENER || lrec->unusable)
            continue;
        const struct cfg_listener *l = &ld->cfg->listeners[lrec->index];
        if (l->service == SERVICE_HTTPS)
            continue; /* routes are for mail: an https listener has its own backend */
        const struct service_info *info = service_info(l->service);
        const struct endpoint *ep = &b->endpoints[l->service];
        if (!ep->set) {
            config_report(ld, line, "backend",
                          "listener '%s' offers %s, but backend '%s' has none (set host = HOST or "
                          "%s = HOST:PORT in [backend %s])",
                          l->name, info->name, b->name, info->name, b->name);
            continue;
        }
        enum listen_mode mode = route_mode(l, r);
        if (b->xclient && mode == MODE_PASSTHROUGH)
            config_report(ld, line, "backend",
                          "listener '%s' passes TLS through, so sallyport cannot name the client "
                          "inside it to backend '%s' (xclient = yes); use proxy_protocol = v2 "
                          "there, or mode = terminate",
                          l->name, b->name);
        else if (b->xclient && !dialogue_for(info->proto)->identify_start)
            config_report(ld, line, "backend",
                          "listener '%s' offers %s, but %s has no command that names the client "
                          "to backend '%s' (xclient = yes); use proxy_protocol, or route it to a "
                          "backend without xclient",
                          l->name, info->name, dialogue_for(info->proto)->name, b->name);
        const char *why = passthrough_problem[info->tls][ep->tls];
        if (mode != MODE_PASSTHROUGH || !why)
            continue;
        char where[300];
        const struct sockaddr_in *sin = (const void *)&ep->addrs[0].ss;
        const struct sockaddr_in6 *sin6 = (const void *)&ep->addrs[0].ss;
        unsigned port =
            ntohs(ep->addrs[0].ss.ss_family == AF_INET ? sin->sin_port : sin6->sin6_port);
        snprintf(where, sizeof where, strchr(ep->host, ':') ? "[%s]:%u" : "%s:%u", ep->host, port);
        config_report(
            ld, line, "backend",
            "listener '%s' passes TLS through%s, so backend '%s' must speak %s for %s, but %s "
            "is %s (%s)",
            l->name, r->mode_set && r->mode != l->mode ? " for this route (mode)" : "", b->name,
            flavour_words[info->tls], info->name, where, flavour_words[ep->tls], why);
    }
}

/* Reports an SNI name that an earlier route (or the same one) already has. */
static void check_sni(struct config_loader *ld, const struct config_record *rec)
{
    const struct cfg_route *routes = ld->cfg->routes, *r = &routes[rec->index];
    int line = config_key_line(rec, "sni");
    for (size_t j = 0; j < r->nsni; j++) {
        for (size_t i = 0; i <= rec->index; i++) {
            size_t k = 0, end = i == rec->index ? j : routes[i].nsni;
            while (k < end && strcmp(routes[i].sni[k], r->sni[j]) != 0)
                k++;
            if (k == end)
                continue;
            if (i == rec->index)
                config_report(ld, line, "sni", "'%s' is listed twice", r->sni[j]);
            else if (strcmp(r->sni[j], "*") == 0)
                config_report(
                    ld, line, "sni",
                    "route '%s' is the default route ('*'), and so is route '%s' (line %d); "
                    "only one may be",
                    r->name, routes[i].name, routes[i].line);
            else
                config_report(ld, line, "sni", "'%s' is already routed by [route %s] at line %d",
                              r->sni[j], routes[i].name, routes[i].line);
            break;
        }
    }
}

/* "backend = NAME...": finds each (in order, each once, at most
 * ROUTE_MAX_BACKENDS) and checks every listener against it. */
static void link_backends(struct config_loader *ld, const struct config_record *rec,
                          struct cfg_route *r)
{
    const struct config *cfg = ld->cfg;
    int line = config_key_line(rec, "backend");
    const char *p = rec->backend_ref;
    for (;;) {
        p += strspn(p, " \t");
        size_t n = strcspn(p, " \t");
        if (n == 0)
            break;
        size_t i = 0;
        while (i < cfg->nbackends &&
               (strlen(cfg->backends[i].name) != n || strncmp(cfg->backends[i].name, p, n) != 0))
            i++;
        size_t k = 0;
        while (i < cfg->nbackends && k < r->nbackends && r->backends[k] != &cfg->backends[i])
            k++;
        if (i == cfg->nbackends) {
            config_report(ld, line, "backend", "no backend or mailbox named '%.*s'", (int)n, p);
        } else if (k < r->nbackends) {
            config_report(ld, line, "backend", "'%.*s' is listed twice", (int)n, p);
        } else if (r->nbackends == ROUTE_MAX_BACKENDS) {
            config_report(ld, line, "backend", "more than %d backends (list at most %d)",
                          ROUTE_MAX_BACKENDS, ROUTE_MAX_BACKENDS);
            return;
        } else {
            r->backends[r->nbackends++] = &cfg->backends[i];
            const struct config_record *brec = record_of_backend(ld, i);
            if (brec && !brec->unusable)
                check_pairs(ld, rec, r, &cfg->backends[i]);
        }
        p += n;
    }
}

static void check_route(struct config_loader *ld, struct config_record *rec)
{
    struct config *cfg = ld->cfg;
    struct cfg_route *r = &cfg->routes[rec->index];
    check_sni(ld, rec);
    r->mode_set = config_key_set(rec, "mode") && !rec->unusable; /* unusable: mode refused */
    if (r->mode_set && r->mode == MODE_TERMINATE && cfg->ncertificates == 0)
        config_report(ld, config_key_line(rec, "mode"), "mode",
                      "route '%s' terminates TLS, but there is no [certificate] (add one, or "
                      "set mode = passthrough)",
                      r->name);
    if (rec->backend_ref)
        link_backends(ld, rec, r);
}

/* The backend named `name`, or NULL. */
static struct cfg_backend *backend_named(const struct config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->nbackends; i++)
        if (strcmp(cfg->backends[i].name, name) == 0)
            return &cfg->backends[i];
    return NULL;
}

/* An https listener's backend = NAME: the web server, reached through a
 * route of its own (so that it is chosen, counted and checked as every
 * backend is). */
static void add_web_route(struct config_loader *ld, const struct config_record *rec)
{
    struct config *cfg = ld->cfg;
    struct cfg_listener *l = &cfg->listeners[rec->index];
    int line = config_key_line(rec, "backend");
    struct cfg_backend *b = backend_named(cfg, rec->backend_ref);
    const struct endpoint *ep = b ? &b->endpoints[SERVICE_HTTPS] : NULL;
    if (!b || b->mailbox) {
        config_report(ld, line, "backend", "no [backend] named '%s' (the web server's)",
                      rec->backend_ref);
        return;
    }
    if (!ep->set) {
        config_report(ld, line, "backend",
                      "listener '%s' offers https, but backend '%s' has none (write https = "
                      "HOST:PORT in [backend %s]; host = does not set it)",
                      l->name, b->name, b->name);
        return;
    }
    if (ep->tls != TLS_IMPLICIT) {
        config_report(ld, line, "backend",
                      "listener '%s' passes TLS through, so backend '%s' must speak TLS for "
                      "https, but it is %s",
                      l->name, b->name, tls_flavour_name(ep->tls));
        return;
    }
    if (b->xclient) {
        config_report(ld, line, "backend",
                      "backend '%s' has xclient = yes, which https has no command for (use "
                      "proxy_protocol)",
                      b->name);
        return;
    }
    void *grown = realloc(cfg->routes, (cfg->nroutes + 1) * sizeof *cfg->routes);
    char name[300];
    snprintf(name, sizeof name, "https:%s", l->name);
    if (!grown) {
        config_report(ld, line, "backend", "out of memory");
        return;
    }
    cfg->routes = grown;
    struct cfg_route *r = &cfg->routes[cfg->nroutes];
    *r = (struct cfg_route){
        .line = line, .backends = {b}, .nbackends = 1, .mode = MODE_PASSTHROUGH, .mode_set = true};
    if (!(r->name = strdup(name))) {
        config_report(ld, line, "backend", "out of memory");
        return;
    }
    l->web_route = cfg->nroutes++;
}

/* Runs every check that needs the whole file, in file order, and links
 * backends to mailboxes (the arrays no longer grow). */
static void finish(struct config_loader *ld)
{
    struct cfg_global *global = &ld->cfg->global;
    if (!global->limit_exceptions_set) {
        static const char *const loopback[] = {"127.0.0.0/8", "::1"};
        for (size_t i = 0; i < sizeof loopback / sizeof loopback[0]; i++)
            if (client_prefix_parse(loopback[i], &global->limit_exceptions[i]) == 0)
                global->nlimit_exceptions = i + 1;
    }
    for (size_t i = 0; i < ld->nrecs; i++) {
        if (finishers[ld->recs[i].kind])
            finishers[ld->recs[i].kind](ld, &ld->recs[i]);
    }
    finish_acme_certificates(ld);
    check_addresses(ld);
    for (size_t i = 0; i < ld->nrecs; i++) {
        if (ld->recs[i].kind == K_ROUTE)
            check_route(ld, &ld->recs[i]);
        else if (ld->recs[i].kind == K_MAILBOX)
            ld->cfg->backends[ld->recs[i].backend].mailbox = &ld->cfg->mailboxes[ld->recs[i].index];
    }
    for (size_t i = 0; i < ld->nrecs; i++) {
        const struct config_record *rec = &ld->recs[i];
        if (rec->kind == K_LISTENER && !rec->unusable && rec->backend_ref &&
            ld->cfg->listeners[rec->index].service == SERVICE_HTTPS)
            add_web_route(ld, rec);
    }
}

/* The file's text, malloc'd; NULL with errno set when it cannot be read
 * or is larger than any config should be (EFBIG). */
static char *read_text(const char *path, size_t *len)
{
    enum { MAX_CONFIG = 1 << 20 };
    FILE *fp = fopen(path, "r");
    if (!fp)
        return NULL;
    char *text = malloc(MAX_CONFIG + 1);
    size_t n = text ? fread(text, 1, MAX_CONFIG + 1, fp) : 0;
    int failed = ferror(fp) ? EIO : n > MAX_CONFIG ? EFBIG : !text ? ENOMEM : 0;
    fclose(fp);
    if (failed) {
        free(text);
        errno = failed;
        return NULL;
    }
    text[n] = '\0';
    *len = n;
    return text;
}

struct config *config_load_text(const char *path, const char *text, size_t len, FILE *errors,
                                int *nerrors)
{
    struct config *cfg = calloc(1, sizeof *cfg);
    struct config_loader ld = {
        .cfg = cfg,
        .path = path,
        .errors = errors,
        .cur = CONFIG_NO_RECORD,
    };
    if (!cfg || !(cfg->file = strdup(path)) || !(cfg->text = malloc(len + 1))) {
        config_report(&ld, 0, NULL, "out of memory");
        goto out;
    }
    cfg->global = (struct cfg_global){
        .log_level = LOG_LEVEL_INFO,
        .workers = 1,
        .plaintext_timeout = 60,
        .handshake_timeout = 30,
        .connect_timeout = 10,
        .shutdown_timeout = 30,
        .max_errors = 10,
        .max_connections = 1024,
        .max_client_connections = 32,
        .client_connection_rate = 10,
        .overload_adapt = true,
    };
    memcpy(cfg->text, text, len);
    cfg->text[len] = '\0';
    cfg->text_len = len;
    /* fmemopen() refuses a size of 0: an empty file reads as one empty line. */
    static char empty[] = "\n";
    if (!(ld.fp = len ? fmemopen(cfg->text, len, "r") : fmemopen(empty, 1, "r"))) {
        config_report(&ld, 0, NULL, "out of memory");
        goto out;
    }
    config_read(&ld);
    fclose(ld.fp);
    finish(&ld);
out:
    config_read_free(&ld);
    if (nerrors)
        *nerrors = ld.nerrors;
    if (ld.nerrors) {
        config_free(cfg);
        return NULL;
    }
    return cfg;
}

struct config *config_load(const char *path, FILE *errors, int *nerrors)
{
    size_t len = 0;
    char *text = read_text(path, &len);
    if (!text) {
        if (errors)
            fprintf(errors, "%s: cannot open: %s\n", path,
                    errno == EFBIG ? "larger than 1 MiB" : strerror(errno));
        if (nerrors)
            *nerrors = 1;
        return NULL;
    }
    struct config *cfg = config_load_text(path, text, len, errors, nerrors);
    free(text);
    return cfg;
}

void config_free(struct config *config)
{
    if (!config)
        return;
    free(config->file);
    free(config->text);
    free(config->acme.directory);
    free(config->acme.contact);
    free(config->acme.state_dir);
    free(config->acme.ca);
    free(config->acme.http_address);
    free(config->global.user);
    free(config->metrics.address);
    free(config->global.syslog_socket);
    for (size_t i = 0; i < config->ncertificates; i++) {
        struct cfg_certificate *c = &config->certificates[i];
        free(c->name);
        free(c->cert);
        free(c->key);
        for (size_t j = 0; j < c->nnames; j++)
            free(c->names[j]);
        SSL_CTX_free(c->ctx);
    }
    for (size_t i = 0; i < config->nlisteners; i++) {
        free(config->listeners[i].name);
        free(config->listeners[i].address);
        free(config->listeners[i].hostname);
    }
    for (size_t i = 0; i < config->nbackends; i++) {
        free(config->backends[i].name);
        free(config->backends[i].ca);
        free(config->backends[i].tls_name);
    }
    for (size_t i = 0; i < config->nroutes; i++) {
        free(config->routes[i].name);
        for (size_t j = 0; j < config->routes[i].nsni; j++)
            free(config->routes[i].sni[j]);
    }
    for (size_t i = 0; i < config->nmailboxes; i++) {
        struct cfg_mailbox *m = &config->mailboxes[i];
        free(m->name);
        free(m->address);
        free(m->cert);
        free(m->key);
        SSL_CTX_free(m->ctx);
        free(m->maildir);
        free(m->users);
        free(m->hostname);
    }
    free(config->certificates);
    free(config->listeners);
    free(config->backends);
    free(config->routes);
    free(config->mailboxes);
    free(config);
}

bool config_runnable(const struct config *config, FILE *errors)
{
    if (config->nlisteners > 0 || config->nmailboxes > 0)
        return true;
    fprintf(errors, "%s: no [listener] or [mailbox] section: nothing to run\n", config->file);
    return false;
}
