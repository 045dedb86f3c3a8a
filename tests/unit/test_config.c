/* Unit tests for config_load(): every error is asserted as the exact line an
 * operator sees, with the temporary config's path shown as "cfg" and the
 * temporary certificate directory as "CERTS". */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "config_value.h"

static char certdir[64];

/* Generates CERTS/a.pem+a.key, CERTS/b.pem+b.key (EC P-256) and CERTS/e.key
 * (Ed25519, so that it matches no certificate's key type). */
static int make_certs(void **state)
{
    (void)state;
    snprintf(certdir, sizeof certdir, "/tmp/sallyport-certs-XXXXXX");
    if (!mkdtemp(certdir))
        return -1;
    char cmd[1024];
    for (const char *n = "ab"; *n; n++) {
        snprintf(cmd, sizeof cmd,
                 "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                 "-keyout %s/%c.key -out %s/%c.pem -subj /CN=%c.example.com -days 2 "
                 ">/dev/null 2>&1",
                 certdir, *n, certdir, *n, *n);
        if (system(cmd) != 0)
            return -1;
    }
    snprintf(cmd, sizeof cmd, "openssl genpkey -algorithm ED25519 -out %s/e.key >/dev/null 2>&1",
             certdir);
    return system(cmd) == 0 ? 0 : -1;
}

static int remove_certs(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", certdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Returns a malloc'd copy of s with every `from` replaced by `to`. */
static char *replace(const char *s, const char *from, const char *to)
{
    size_t n = 0, flen = strlen(from), tlen = strlen(to);
    for (const char *p = s; (p = strstr(p, from)); p += flen)
        n++;
    char *out = malloc(strlen(s) + n * tlen + 1), *o = out;
    assert_non_null(out);
    for (const char *p = s, *hit;; p = hit + flen) {
        hit = strstr(p, from);
        size_t keep = hit ? (size_t)(hit - p) : strlen(p);
        memcpy(o, p, keep);
        o += keep;
        if (!hit)
            break;
        memcpy(o, to, tlen);
        o += tlen;
    }
    *o = '\0';
    return out;
}

struct result {
    struct config *cfg;
    char *errors; /* everything config_load() printed, normalised */
    int nerrors;
};

/* Loads `text` (with "CERTS" standing for the certificate directory) from a
 * temporary file. */
/* Loads `len` bytes of config text (NUL bytes allowed), no CERTS expansion. */
static struct result load_bytes(const char *text, size_t text_len)
{
    char path[] = "/tmp/sallyport-config-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, text_len, f), text_len);
    fclose(f);

    char *buf = NULL;
    size_t len = 0;
    FILE *errors = open_memstream(&buf, &len);
    assert_non_null(errors);
    struct result r = {.nerrors = -1};
    r.cfg = config_load(path, errors, &r.nerrors);
    fclose(errors);
    unlink(path);
    char *a = replace(buf, path, "cfg");
    r.errors = replace(a, certdir, "CERTS");
    free(a);
    free(buf);
    return r;
}

static struct result load(const char *text)
{
    char *real = replace(text, "CERTS", certdir);
    struct result r = load_bytes(real, strlen(real));
    free(real);
    return r;
}

static void done(struct result *r)
{
    config_free(r->cfg);
    free(r->errors);
}

/* Asserts that loading `text` fails with exactly `expected` (lines). */
static void expect_errors(const char *text, const char *expected, int nerrors)
{
    struct result r = load(text);
    assert_string_equal(r.errors, expected);
    assert_int_equal(r.nerrors, nerrors);
    assert_null(r.cfg);
    done(&r);
}

static unsigned port_of(const struct sock_addr *a)
{
    if (a->ss.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)(const void *)&a->ss)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)(const void *)&a->ss)->sin6_port);
}

/* A valid passthrough config, 9 lines; tests append sections at line 10. */
#define BASE                                                                                       \
    "[listener submissions]\n"                                                                     \
    "mode = passthrough\n"                                                                         \
    "\n"                                                                                           \
    "[backend mx1]\n"                                                                              \
    "host = 10.0.0.5\n"                                                                            \
    "\n"                                                                                           \
    "[route r]\n"                                                                                  \
    "sni = *\n"                                                                                    \
    "backend = mx1\n"

#define CERT "[certificate main]\ncert = CERTS/a.pem\nkey = CERTS/a.key\n"

/* ---- successful loads ---- */

static void test_short_config(void **state)
{
    (void)state;
    struct result r = load("[listener submissions]\n"
                           "mode = passthrough\n"
                           "[listener submission]\n"
                           "mode = passthrough\n"
                           "[backend mx1]\n"
                           "host = 10.0.0.5\n"
                           "[route example]\n"
                           "sni = *\n"
                           "backend = mx1\n");
    assert_string_equal(r.errors, "");
    assert_int_equal(r.nerrors, 0);
    struct config *c = r.cfg;
    assert_non_null(c);
    assert_int_equal(c->nbackends, 1);
    const struct cfg_backend *b = &c->backends[0];
    assert_string_equal(b->name, "mx1");
    assert_true(b->verify);
    assert_null(b->mailbox);
    const struct endpoint *s465 = &b->endpoints[SERVICE_SUBMISSIONS];
    const struct endpoint *s587 = &b->endpoints[SERVICE_SUBMISSION];
    assert_true(s465->set);
    assert_int_equal(s465->tls, TLS_IMPLICIT);
    assert_int_equal(port_of(&s465->addrs[0]), 465);
    assert_string_equal(s465->host, "10.0.0.5");
    assert_int_equal(s465->line, 6);
    assert_true(s587->set);
    assert_int_equal(s587->tls, TLS_STARTTLS);
    assert_int_equal(port_of(&s587->addrs[0]), 587);
    assert_int_equal(s587->addrs[0].ss.ss_family, AF_INET);

    assert_int_equal(c->nlisteners, 2);
    assert_int_equal(c->listeners[0].service, SERVICE_SUBMISSIONS);
    assert_int_equal(c->listeners[0].mode, MODE_PASSTHROUGH);
    assert_string_equal(c->listeners[0].address, "[::]:465");
    assert_int_equal(c->listeners[0].addr.ss.ss_family, AF_INET6);
    assert_int_equal(port_of(&c->listeners[0].addr), 465);
    assert_int_equal(c->listeners[1].service, SERVICE_SUBMISSION);
    assert_string_equal(c->listeners[1].address, "[::]:587");
    assert_int_equal(c->listeners[1].line, 3);
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    assert_string_equal(c->listeners[0].hostname, host);

    assert_int_equal(c->nroutes, 1);
    assert_ptr_equal(c->routes[0].backends[0], b);
    assert_int_equal(c->routes[0].nsni, 1);
    assert_string_equal(c->routes[0].sni[0], "*");
    done(&r);
}

static void test_global_defaults(void **state)
{
    (void)state;
    struct result r = load(BASE);
    assert_non_null(r.cfg);
    const struct cfg_global *g = &r.cfg->global;
    assert_int_equal(g->log_level, LOG_LEVEL_INFO);
    assert_int_equal(g->log, LOG_TO_STDERR);
    assert_int_equal(g->log_format, LOG_FORMAT_TEXT);
    assert_null(g->syslog_socket); /* LOG_SYSLOG_SOCKET_DEFAULT */
    assert_null(g->user);
    assert_int_equal(g->plaintext_timeout, 60);
    assert_int_equal(g->handshake_timeout, 30);
    assert_int_equal(g->connect_timeout, 10);
    assert_int_equal(g->idle_timeout, 0); /* each service's own (below) */
    assert_int_equal(g->max_errors, 10);
    assert_int_equal(g->max_connections, 1024);
    assert_int_equal(g->workers, 1); /* one event loop unless asked */
    assert_int_equal(g->max_client_connections, 32);
    assert_int_equal(g->client_connection_rate, 10);
    /* Loopback is exempt: a local webmail or proxy speaks for many users. */
    assert_int_equal(g->nlimit_exceptions, 2);
    assert_int_equal(g->limit_exceptions[0].bits, 96 + 8);
    assert_int_equal(g->limit_exceptions[0].addr[12], 127);
    assert_int_equal(g->limit_exceptions[1].bits, 128);
    assert_int_equal(g->limit_exceptions[1].addr[15], 1);
    done(&r);
}

static void test_client_limits(void **state)
{
    (void)state;
    struct result r = load("[global]\n"
                           "max_client_connections = 5\n"
                           "client_connection_rate = 0\n"
                           "client_limit_exceptions = 192.0.2.0/24\n"
                           "    2001:db8::/32 10.1.2.3\n" BASE);
    assert_string_equal(r.errors, "");
    assert_non_null(r.cfg);
    const struct cfg_global *g = &r.cfg->global;
    assert_int_equal(g->max_client_connections, 5);
    assert_int_equal(g->client_connection_rate, 0);
    assert_int_equal(g->nlimit_exceptions, 3); /* replaces the loopback default */
    assert_int_equal(g->limit_exceptions[0].bits, 96 + 24);
    assert_int_equal(g->limit_exceptions[1].bits, 32);
    assert_int_equal(g->limit_exceptions[2].bits, 128);
    done(&r);

    r = load("[global]\nclient_limit_exceptions = none\n" BASE);
    assert_string_equal(r.errors, "");
    assert_int_equal(r.cfg->global.nlimit_exceptions, 0);
    done(&r);
}

/* sallyport writes its hostname into greetings and EHLO lines: a value that
 * could split a line (a CR inside a config line survives inih) is refused. */
static void test_hostname_errors(void **state)
{
    (void)state;
    expect_errors("[listener submission]\nmode = passthrough\nhostname = mx\rRCPT TO:<x@y>\n"
                  "[backend mx1]\nhost = 10.0.0.5\n[route r]\nsni = *\nbackend = mx1\n"
                  "[mailbox m]\naddress = 127.0.0.1:2525\nmaildir = /tmp/m\nhostname = a b\n",
                  "cfg:3: hostname: bad host name 'mx?RCPT TO:<x@y>' (expected a name such as "
                  "mx.example.net: letters, digits, '-', '_' and '.')\n"
                  "cfg:12: hostname: bad host name 'a b' (expected a name such as "
                  "mx.example.net: letters, digits, '-', '_' and '.')\n",
                  2);
}

static void test_client_limit_errors(void **state)
{
    (void)state;
    expect_errors("[global]\n"
                  "client_limit_exceptions = 192.0.2.0/33\n"
                  "max_client_connections = lots\n" BASE,
                  "cfg:2: client_limit_exceptions: bad address prefix '192.0.2.0/33' (expected an "
                  "address or a prefix such as 192.0.2.0/24 or 2001:db8::/32, or none)\n"
                  "cfg:3: max_client_connections: bad limit 'lots' (expected a whole number, or 0 "
                  "for no limit)\n",
                  2);
    /* 32 fit (over indented lines too); a 33rd is refused, and the check
     * comes before the prefix is stored. */
    for (int extra = 0; extra < 2; extra++) {
        char text[4096] = "[global]\nclient_limit_exceptions =";
        for (int i = 0; i < 32 + extra; i++)
            snprintf(text + strlen(text), sizeof text - strlen(text), "%s10.0.%d.0/24",
                     i % 8 == 7 ? "\n  " : " ", i);
        strcat(text, "\n" BASE);
        struct result r = load(text);
        if (extra == 0) {
            assert_string_equal(r.errors, "");
            assert_int_equal(r.cfg->global.nlimit_exceptions, 32);
        } else {
            assert_string_equal(r.errors, "cfg:6: client_limit_exceptions: too many prefixes (at "
                                          "most 32)\n");
        }
        done(&r);
    }
    expect_errors("[global]\nclient_limit_exceptions = 10.0.0.0/8\n  none\n" BASE,
                  "cfg:3: client_limit_exceptions: 'none' cannot be combined with prefixes\n", 1);
    expect_errors("[global]\nclient_limit_exceptions = none\n  10.0.0.0/8\n" BASE,
                  "cfg:3: client_limit_exceptions: 'none' cannot be combined with prefixes\n", 1);
    expect_errors("[global]\nclient_limit_exceptions = none ::1\n" BASE,
                  "cfg:2: client_limit_exceptions: 'none' cannot be combined with prefixes\n", 1);
}

static void test_workers(void **state)
{
    (void)state;
    struct result r = load("[global]\nworkers = 4\n" BASE);
    assert_string_equal(r.errors, "");
    assert_int_equal(r.cfg->global.workers, 4);
    done(&r);
    r = load("[global]\nworkers = auto\n" BASE);
    assert_string_equal(r.errors, "");
    assert_int_equal(r.cfg->global.workers, 0); /* resolved to the CPU count at start */
    done(&r);
    expect_errors("[global]\nworkers = 0\n" BASE,
                  "cfg:2: workers: bad worker count '0' (expected auto, or 1 to 64)\n", 1);
    expect_errors("[global]\nworkers = 65\n" BASE,
                  "cfg:2: workers: bad worker count '65' (expected auto, or 1 to 64)\n", 1);
    expect_errors("[global]\nworkers = all\n" BASE,
                  "cfg:2: workers: bad worker count 'all' (expected auto, or 1 to 64)\n", 1);
}

static void test_log_keys(void **state)
{
    (void)state;
    struct result r = load("[global]\nlog = syslog\nlog_format = json\n"
                           "syslog_socket = /run/systemd/journal/dev-log\n" BASE);
    assert_string_equal(r.errors, "");
    assert_int_equal(r.cfg->global.log, LOG_TO_SYSLOG);
    assert_int_equal(r.cfg->global.log_format, LOG_FORMAT_JSON);
    assert_string_equal(r.cfg->global.syslog_socket, "/run/systemd/journal/dev-log");
    done(&r);
    char too_long[256];
    snprintf(too_long, sizeof too_long, "[global]\nsyslog_socket = /%0108d\n" BASE, 0);
    expect_errors(too_long, "cfg:2: syslog_socket: socket path too long (109 bytes; at most 107)\n",
                  1);
    expect_errors("[global]\nlog = file\nlog_format = xml\nsyslog_socket = dev/log\n" BASE,
                  "cfg:2: log: unknown log destination 'file' (expected stderr or syslog)\n"
                  "cfg:3: log_format: unknown log format 'xml' (expected text or json)\n"
                  "cfg:4: syslog_socket: socket path 'dev/log' is not absolute (write a path "
                  "starting with /)\n",
                  3);
    expect_errors("[global]\nlog = stderr\nlog = syslog\n" BASE,
                  "cfg:3: log: duplicate key (already set at line 2)\n", 1);
    expect_errors("[global]\nlogfile = /var/log/sallyport\n" BASE,
                  "cfg:2: logfile: unknown key in [global] (expected log_level, log, log_format, "
                  "syslog_socket, user, workers, plaintext_timeout, handshake_timeout, "
                  "connect_timeout, idle_timeout, shutdown_timeout, max_errors, max_connections, "
                  "max_client_connections, client_connection_rate, client_limit_exceptions or "
                  "overload)\n",
                  1);
}

/* overload = adapt (the default) or off. */
static void test_overload_key(void **state)
{
    (void)state;
    struct result r = load(BASE);
    assert_true(r.cfg->global.overload_adapt);
    done(&r);
    r = load("[global]\noverload = off\n" BASE);
    assert_string_equal(r.errors, "");
    assert_false(r.cfg->global.overload_adapt);
    done(&r);
    expect_errors("[global]\noverload = no\n" BASE,
                  "cfg:2: overload: unknown overload mode 'no' (expected adapt or off)\n", 1);
}

static void test_proxy_protocol_keys(void **state)
{
    (void)state;
    struct result r = load("[listener submissions]\n"
                           "mode = passthrough\n"
                           "proxy_protocol = yes\n"
                           "proxy_trusted = 10.0.0.0/8\n"
                           "  2001:db8::/32\n"
                           "[backend mx1]\nhost = 10.0.0.5\n[route r]\nsni = *\nbackend = mx1\n");
    assert_string_equal(r.errors, "");
    const struct cfg_listener *l = &r.cfg->listeners[0];
    assert_true(l->proxy_protocol);
    assert_int_equal(l->nproxy_trusted, 2);
    assert_int_equal(l->proxy_trusted[0].bits, 96 + 8);
    assert_int_equal(l->proxy_trusted[1].bits, 32);
    done(&r);
    r = load(BASE);
    assert_false(r.cfg->listeners[0].proxy_protocol); /* off unless asked */
    done(&r);
    expect_errors("[listener submissions]\nmode = passthrough\nproxy_protocol = yes\n"
                  "[backend mx1]\nhost = 10.0.0.5\n[route r]\nsni = *\nbackend = mx1\n",
                  "cfg:3: proxy_protocol: proxy_protocol = yes needs proxy_trusted: the "
                  "addresses of the load balancers that may send PROXY headers\n",
                  1);
    expect_errors("[listener submissions]\nmode = passthrough\nproxy_trusted = 10.0.0.1\n"
                  "[backend mx1]\nhost = 10.0.0.5\n[route r]\nsni = *\nbackend = mx1\n",
                  "cfg:3: proxy_trusted: proxy_trusted has no effect without "
                  "proxy_protocol = yes\n",
                  1);
    expect_errors("[listener submissions]\nmode = passthrough\nproxy_protocol = yes\n"
                  "proxy_trusted = none\n"
                  "[backend mx1]\nhost = 10.0.0.5\n[route r]\nsni = *\nbackend = mx1\n",
                  "cfg:4: proxy_trusted: 'none' would trust nobody: list the addresses of the "
                  "load balancers in front of sallyport\n"
                  "cfg:3: proxy_protocol: proxy_protocol = yes needs proxy_trusted: the "
                  "addresses of the load balancers that may send PROXY headers\n",
                  2);
}

static void test_global_values(void **state)
{
    (void)state;
    struct result r = load("[global]\n"
                           "log_level = debug\n"
                           "user = sallyport\n"
                           "plaintext_timeout = 45\n"
                           "handshake_timeout = 90s\n"
                           "connect_timeout = 2m\n"
                           "idle_timeout = 1h\n"
                           "max_errors = 3\n"
                           "max_connections = 50\n" BASE);
    assert_string_equal(r.errors, "");
    assert_non_null(r.cfg);
    const struct cfg_global *g = &r.cfg->global;
    assert_int_equal(g->log_level, LOG_LEVEL_DEBUG);
    assert_string_equal(g->user, "sallyport");
    assert_int_equal(g->plaintext_timeout, 45);
    assert_int_equal(g->handshake_timeout, 90);
    assert_int_equal(g->connect_timeout, 120);
    assert_int_equal(g->idle_timeout, 3600);
    assert_int_equal(g->max_errors, 3);
    assert_int_equal(g->max_connections, 50);
    done(&r);
}

static void test_backend_overrides(void **state)
{
    (void)state;
    struct result r = load(CERT "[listener submissions]\n"
                                "[listener submission]\n"
                                "address = 127.0.0.1:10587\n"
                                "hostname = mx.example.net\n"
                                "[backend mx1]\n"
                                "submission = 10.0.0.5:2587\n"
                                "host = 10.0.0.5\n"
                                "submissions = 127.0.0.1:2525 plain\n"
                                "ca = CERTS/a.pem\n"
                                "verify = no\n"
                                "tls_name = mx1.internal\n"
                                "[route r]\n"
                                "sni = *\n"
                                "backend = mx1\n");
    assert_string_equal(r.errors, "");
    struct config *c = r.cfg;
    assert_non_null(c);
    assert_non_null(c->certificates[0].ctx);
    const struct cfg_backend *b = &c->backends[0];
    const struct endpoint *s587 = &b->endpoints[SERVICE_SUBMISSION];
    assert_int_equal(port_of(&s587->addrs[0]), 2587);
    assert_int_equal(s587->tls, TLS_STARTTLS);
    assert_int_equal(s587->line, 9); /* its own key, not host's line 10 */
    const struct endpoint *s465 = &b->endpoints[SERVICE_SUBMISSIONS];
    assert_string_equal(s465->host, "127.0.0.1");
    assert_int_equal(port_of(&s465->addrs[0]), 2525);
    assert_int_equal(s465->tls, TLS_PLAIN);
    assert_int_equal(s465->line, 11);
    char *ca = replace(b->ca, certdir, "CERTS");
    assert_string_equal(ca, "CERTS/a.pem");
    free(ca);
    assert_false(b->verify);
    assert_string_equal(b->tls_name, "mx1.internal");
    assert_string_equal(c->listeners[1].address, "127.0.0.1:10587");
    assert_int_equal(port_of(&c->listeners[1].addr), 10587);
    assert_string_equal(c->listeners[1].hostname, "mx.example.net");
    assert_int_equal(c->listeners[0].mode, MODE_TERMINATE);
    done(&r);
}

static void test_backend_ipv6_host(void **state)
{
    (void)state;
    struct result r = load(BASE "[backend v6]\nhost = ::1\n[backend v6b]\nhost = [::1]\n");
    assert_string_equal(r.errors, "");
    assert_non_null(r.cfg);
    for (size_t i = 1; i < 3; i++) {
        const struct endpoint *ep = &r.cfg->backends[i].endpoints[SERVICE_SUBMISSIONS];
        assert_string_equal(ep->host, "::1");
        assert_int_equal(ep->addrs[0].ss.ss_family, AF_INET6);
        assert_int_equal(port_of(&ep->addrs[0]), 465);
    }
    done(&r);
}

static void test_mailbox_as_backend(void **state)
{
    (void)state;
    struct result r = load(CERT "[listener submissions]\n"
                                "[listener submission]\n"
                                "[mailbox demo]\n"
                                "address = 127.0.0.1:2525\n"
                                "maildir = /tmp/sallyport-demo-mail\n"
                                "[route all]\n"
                                "sni = *\n"
                                "backend = demo\n");
    assert_string_equal(r.errors, "");
    struct config *c = r.cfg;
    assert_non_null(c);
    assert_int_equal(c->nmailboxes, 1);
    assert_int_equal(c->nbackends, 1);
    const struct cfg_mailbox *m = &c->mailboxes[0];
    const struct cfg_backend *b = &c->backends[0];
    assert_string_equal(b->name, "demo");
    assert_ptr_equal(b->mailbox, m);
    assert_false(b->verify);
    assert_ptr_equal(c->routes[0].backends[0], b);
    for (int s = 0; s < SERVICE_COUNT; s++) {
        /* A mailbox speaks SMTP only: no IMAP, POP3 or Sieve endpoints. */
        if (service_info((enum service)s)->proto != PROTO_SMTP) {
            assert_false(b->endpoints[s].set);
            continue;
        }
        assert_true(b->endpoints[s].set);
        assert_int_equal(b->endpoints[s].tls, TLS_PLAIN);
        assert_string_equal(b->endpoints[s].host, "127.0.0.1");
        assert_int_equal(port_of(&b->endpoints[s].addrs[0]), 2525);
        assert_int_equal(b->endpoints[s].line, 7);
    }
    assert_int_equal(m->tls, TLS_PLAIN);
    assert_null(m->ctx);
    assert_null(m->users);
    assert_int_equal(m->max_message_size, 52428800);
    assert_string_equal(m->maildir, "/tmp/sallyport-demo-mail");
    assert_non_null(m->hostname);
    assert_int_equal(port_of(&m->addr), 2525);
    done(&r);
}

static void test_mailbox_with_tls(void **state)
{
    (void)state;
    struct result r = load("[listener submissions]\n"
                           "mode = passthrough\n"
                           "[mailbox demo]\n"
                           "address = 127.0.0.1:2465\n"
                           "tls = implicit\n"
                           "cert = CERTS/a.pem\n"
                           "key = CERTS/a.key\n"
                           "maildir = /tmp/m\n"
                           "users = CERTS/a.pem\n"
                           "hostname = demo.example\n"
                           "max_message_size = 10M\n"
                           "[route all]\n"
                           "sni = *\n"
                           "backend = demo\n");
    assert_string_equal(r.errors, "");
    struct config *c = r.cfg;
    assert_non_null(c);
    const struct cfg_mailbox *m = &c->mailboxes[0];
    assert_non_null(m->ctx);
    assert_int_equal(m->tls, TLS_IMPLICIT);
    assert_int_equal(m->max_message_size, 10 * 1024 * 1024);
    assert_string_equal(m->hostname, "demo.example");
    assert_non_null(m->users);
    assert_int_equal(c->backends[0].endpoints[SERVICE_SUBMISSION].tls, TLS_IMPLICIT);
    done(&r);
}

static void test_sni_lower_case(void **state)
{
    (void)state;
    struct result r = load(BASE "[route named]\n"
                                "sni = Mail.Example.COM *.Example.org\n"
                                "      OTHER.example.net\n"
                                "backend = mx1\n");
    assert_string_equal(r.errors, "");
    assert_non_null(r.cfg);
    const struct cfg_route *named = &r.cfg->routes[1];
    assert_int_equal(named->nsni, 3);
    assert_string_equal(named->sni[0], "mail.example.com");
    assert_string_equal(named->sni[1], "*.example.org");
    assert_string_equal(named->sni[2], "other.example.net");
    assert_string_equal(r.cfg->routes[0].sni[0], "*");
    assert_ptr_equal(named->backends[0], &r.cfg->backends[0]);
    done(&r);
}

static void test_terminate_accepts_every_flavour(void **state)
{
    (void)state;
    struct result r = load(CERT "[listener submissions]\n"
                                "mode = terminate\n"
                                "[listener submission]\n"
                                "[backend plain]\n"
                                "submissions = 127.0.0.1:2525 plain\n"
                                "submission = 127.0.0.1:2465 implicit\n"
                                "[backend swapped]\n"
                                "submissions = 127.0.0.1:2587 starttls\n"
                                "submission = 127.0.0.1:2525 plain\n"
                                "[route a]\nsni = a.example\nbackend = plain\n"
                                "[route b]\nsni = b.example\nbackend = swapped\n");
    assert_string_equal(r.errors, "");
    assert_non_null(r.cfg);
    done(&r);
}

/* ---- errors ---- */

static void test_unknown_key(void **state)
{
    (void)state;
    expect_errors(
        BASE "[backend mx2]\nhost = 10.0.0.6\nweight = 2\n",
        "cfg:12: weight: unknown key in [backend mx2] (expected host, ca, verify, "
        "tls_name, proxy_protocol, xclient, down_time, check_interval or a service word such as "
        "submission)\n",
        1);
}

static void test_backend_proxy_protocol(void **state)
{
    (void)state;
    struct result r = load(BASE "[backend mx2]\nhost = 10.0.0.6\nproxy_protocol = v2\n"
                                "[backend mx3]\nhost = 10.0.0.7\nproxy_protocol = v1\n");
    assert_string_equal(r.errors, "");
    assert_int_equal(r.cfg->backends[0].proxy_protocol, PROXY_NONE); /* off unless asked */
    assert_int_equal(r.cfg->backends[1].proxy_protocol, PROXY_V2);
    assert_int_equal(r.cfg->backends[2].proxy_protocol, PROXY_V1);
    done(&r);
    expect_errors(BASE "[backend mx2]\nhost = 10.0.0.6\nproxy_protocol = yes\n",
                  "cfg:12: proxy_protocol: unknown PROXY protocol version 'yes' (expected v1, "
                  "v2 or no)\n",
                  1);
}

static void test_backend_xclient(void **state)
{
    (void)state;
    static const char terminate[] = CERT "[listener submissions]\n"
                                         "[listener imaps]\n"
                                         "[backend mx1]\nhost = 10.0.0.5\nxclient = yes\n"
                                         "[route r]\nsni = *\nbackend = mx1\n";
    struct result r = load(terminate);
    assert_string_equal(r.errors, "");
    assert_true(r.cfg->backends[0].xclient);
    done(&r);
    r = load(BASE);
    assert_false(r.cfg->backends[0].xclient); /* off unless asked */
    done(&r);
    /* Passthrough: sallyport never sees inside the TLS it would name the client in. */
    expect_errors("[listener submissions]\nmode = passthrough\n"
                  "[backend mx1]\nhost = 10.0.0.5\nxclient = yes\n"
                  "[route r]\nsni = *\nbackend = mx1\n",
                  "cfg:8: backend: listener 'submissions' passes TLS through, so sallyport "
                  "cannot name the client inside it to backend 'mx1' (xclient = yes); use "
                  "proxy_protocol = v2 there, or mode = terminate\n",
                  1);
    /* ManageSieve has no such command. */
    expect_errors(CERT "[listener sieve]\n"
                       "[backend mx1]\nhost = 10.0.0.5\nxclient = yes\n"
                       "[route r]\nsni = *\nbackend = mx1\n",
                  "cfg:10: backend: listener 'sieve' offers sieve, but sieve has no command that "
                  "names the client to backend 'mx1' (xclient = yes); use proxy_protocol, or "
                  "route it to a backend without xclient\n",
                  1);
    /* One way only. */
    expect_errors(CERT "[listener submissions]\n"
                       "[backend mx1]\nhost = 10.0.0.5\nproxy_protocol = v2\nxclient = yes\n"
                       "[route r]\nsni = *\nbackend = mx1\n",
                  "cfg:8: xclient: backend 'mx1' already gets a PROXY header (proxy_protocol, "
                  "line 7); name the client one way only\n",
                  1);
}

static void test_route_mode(void **state)
{
    (void)state;
    struct result r = load(CERT "[listener submissions]\nmode = passthrough\n"
                                "[backend mx1]\nhost = 10.0.0.5\n"
                                "[route a]\nsni = a.example\nbackend = mx1\nmode = terminate\n"
                                "[route b]\nsni = *\nbackend = mx1\n");
    assert_string_equal(r.errors, "");
    const struct cfg_listener *l = &r.cfg->listeners[0];
    assert_true(r.cfg->routes[0].mode_set);
    assert_int_equal(route_mode(l, &r.cfg->routes[0]), MODE_TERMINATE);
    assert_false(r.cfg->routes[1].mode_set); /* the listener's */
    assert_int_equal(route_mode(l, &r.cfg->routes[1]), MODE_PASSTHROUGH);
    assert_int_equal(route_mode(l, NULL), MODE_PASSTHROUGH);
    done(&r);
    /* Each listener/route pair is checked in the route's mode. */
    expect_errors(CERT "[listener submission]\n"
                       "[backend mx1]\nsubmission = 10.0.0.5:587 plain\n"
                       "[route a]\nsni = *\nbackend = mx1\nmode = passthrough\n",
                  "cfg:9: backend: listener 'submission' passes TLS through for this route "
                  "(mode), so backend 'mx1' must speak STARTTLS for submission, but "
                  "10.0.0.5:587 is plain (a plaintext backend cannot receive a TLS stream)\n",
                  1);
    expect_errors(BASE "mode = sideways\n",
                  "cfg:10: mode: unknown mode 'sideways' (expected terminate or passthrough)\n", 1);
}

static void test_route_backends(void **state)
{
    (void)state;
    struct result r = load(BASE "[backend mx2]\nhost = 10.0.0.6\ndown_time = 2m\n"
                                "[route two]\nsni = two.example\nbackend = mx2  mx1\n"
                                "balance = roundrobin\n");
    assert_string_equal(r.errors, "");
    const struct cfg_route *one = &r.cfg->routes[0], *two = &r.cfg->routes[1];
    assert_int_equal(one->nbackends, 1);
    assert_int_equal(one->balance, BALANCE_ORDER); /* the default */
    assert_int_equal(two->nbackends, 2);
    assert_string_equal(two->backends[0]->name, "mx2"); /* in the order written */
    assert_string_equal(two->backends[1]->name, "mx1");
    assert_int_equal(two->balance, BALANCE_ROUNDROBIN);
    assert_int_equal(r.cfg->backends[0].down_time, 30); /* the default */
    assert_int_equal(r.cfg->backends[1].down_time, 120);
    done(&r);
    expect_errors(BASE "[route two]\nsni = two.example\nbackend = mx1 nope mx1\n",
                  "cfg:12: backend: no backend or mailbox named 'nope'\n"
                  "cfg:12: backend: 'mx1' is listed twice\n",
                  2);
    expect_errors(BASE "balance = random\n",
                  "cfg:10: balance: unknown balance 'random' (expected order or roundrobin)\n", 1);
    /* Every backend of the route is checked against every listener. */
    expect_errors(BASE "[backend mx2]\nsubmissions = 10.0.0.6:2525 plain\n"
                       "[route two]\nsni = two.example\nbackend = mx1 mx2\n",
                  "cfg:14: backend: listener 'submissions' passes TLS through, so backend "
                  "'mx2' must speak implicit TLS for submissions, but 10.0.0.6:2525 is plain (the "
                  "client would wait for a TLS handshake that never comes)\n",
                  1);
}

static void test_idle_timeouts(void **state)
{
    (void)state;
    /* Unset: each service's own (IMAP 31 minutes, SMTP 10). */
    struct result r = load(CERT "[listener imaps]\n[listener submissions]\n"
                                "[listener pop3]\nidle_timeout = 5s\n"
                                "[backend mx1]\nhost = 10.0.0.5\n[route r]\nsni = *\n"
                                "backend = mx1\n");
    assert_string_equal(r.errors, "");
    assert_int_equal(r.cfg->listeners[0].idle_timeout, 31 * 60);
    assert_int_equal(r.cfg->listeners[1].idle_timeout, 600);
    assert_int_equal(r.cfg->listeners[2].idle_timeout, 5); /* its own */
    done(&r);
    /* [global] idle_timeout applies to every listener without its own. */
    r = load("[global]\nidle_timeout = 2m\n" CERT "[listener imaps]\n"
             "[listener submissions]\nidle_timeout = 1h\n"
             "[backend mx1]\nhost = 10.0.0.5\n[route r]\nsni = *\nbackend = mx1\n");
    assert_string_equal(r.errors, "");
    assert_int_equal(r.cfg->listeners[0].idle_timeout, 120);
    assert_int_equal(r.cfg->listeners[1].idle_timeout, 3600);
    done(&r);
}

static void test_key_outside_section(void **state)
{
    (void)state;
    expect_errors("log_level = debug\n" BASE,
                  "cfg:1: log_level: key outside any section (put it under a [section])\n", 1);
}

static void test_unknown_section(void **state)
{
    (void)state;
    expect_errors(BASE "[frontend web]\nport = 25\n",
                  "cfg:10: frontend web: unknown section kind 'frontend' (expected global, "
                  "certificate, listener, backend, route, mailbox, metrics or acme)\n",
                  1);
}

static void test_bad_section_headers(void **state)
{
    (void)state;
    expect_errors(BASE "[listener]\n[global x]\n[route a/b]\n",
                  "cfg:10: listener: missing name (write [listener NAME])\n"
                  "cfg:11: global x: [global] takes no name (write [global])\n"
                  "cfg:12: route a/b: bad name 'a/b' (use letters, digits, '.', '_' and '-')\n",
                  3);
}

static void test_bad_mode(void **state)
{
    (void)state;
    expect_errors("[listener submissions]\nmode = passthru\n[backend mx1]\nhost = 10.0.0.5\n"
                  "[route r]\nsni = *\nbackend = mx1\n",
                  "cfg:2: mode: unknown mode 'passthru' (expected terminate or passthrough)\n", 1);
}

static void test_bad_values(void **state)
{
    (void)state;
    expect_errors("[global]\n"
                  "idle_timeout = 5x\n"
                  "connect_timeout = 0\n"
                  "max_errors = -1\n"
                  "log_level = loud\n" BASE "[listener alt]\n"
                  "service = smtps\n"
                  "[backend mx2]\n"
                  "host = 10.0.0.6\n"
                  "verify = maybe\n"
                  "submissions = 10.0.0.6:465 tls\n"
                  "[mailbox mb]\n"
                  "address = 127.0.0.1:2525\n"
                  "maildir = /tmp/m\n"
                  "max_message_size = 50X\n"
                  "tls = ssl\n",
                  "cfg:2: idle_timeout: bad duration '5x' (expected a positive number of seconds, "
                  "or a number with s, m or h: 30s, 5m, 1h)\n"
                  "cfg:3: connect_timeout: bad duration '0' (expected a positive number of "
                  "seconds, or a number with s, m or h: 30s, 5m, 1h)\n"
                  "cfg:4: max_errors: bad number '-1' (expected a positive whole number)\n"
                  "cfg:5: log_level: unknown log level 'loud' (expected debug, info, warn or "
                  "error)\n"
                  "cfg:16: service: unknown service 'smtps' (expected submissions, "
                  "submission, imaps, imap, pop3s, pop3, sieve or https)\n"
                  "cfg:19: verify: bad boolean 'maybe' (expected yes or no)\n"
                  "cfg:20: submissions: unknown TLS flavour 'tls' after the address (expected "
                  "plain, implicit or starttls)\n"
                  "cfg:24: max_message_size: bad size '50X' (expected a positive number of bytes, "
                  "or a number with K, M or G: 512K, 50M, 1G)\n"
                  "cfg:25: tls: unknown TLS flavour 'ssl' (expected plain, implicit or "
                  "starttls)\n",
                  9);
}

static void test_bad_addresses(void **state)
{
    (void)state;
    expect_errors(BASE "[backend a]\nhost = 10.0.0.5:25\n"
                       "[backend b]\nsubmissions = 2525\n"
                       "[backend c]\nsubmission = 10.0.0.5:99999\n"
                       "[listener submission]\nmode = passthrough\naddress = 1.2.3.4:0\n",
                  "cfg:11: host: bad host '10.0.0.5:25': host takes no port (set a port per "
                  "service instead, e.g. submission = HOST:2587)\n"
                  "cfg:13: submissions: '2525' has no host (expected HOST:PORT, e.g. "
                  "10.0.0.5:465)\n"
                  "cfg:15: submission: bad port '99999' in '10.0.0.5:99999': expected 1-65535\n"
                  "cfg:18: address: bad port '0' in '1.2.3.4:0': expected 1-65535\n",
                  4);
}

static void test_missing_required_key(void **state)
{
    (void)state;
    expect_errors("[listener submissions]\nmode = passthrough\n[backend mx1]\nhost = 10.0.0.5\n"
                  "[route r]\nsni = *\n"
                  "[listener smtp-in]\nmode = passthrough\n"
                  "[certificate c]\ncert = CERTS/a.pem\n",
                  "cfg:5: route r: missing required key 'backend'\n"
                  "cfg:9: certificate c: missing required key 'key'\n"
                  "cfg:7: listener smtp-in: missing required key 'service' ('smtp-in' is not a "
                  "service word such as submissions or submission)\n",
                  3);
}

static void test_duplicate_key(void **state)
{
    (void)state;
    expect_errors("[listener submissions]\nmode = passthrough\nmode = terminate\n"
                  "[backend mx1]\nhost = 10.0.0.5\n[route r]\nsni = *\nbackend = mx1\n",
                  "cfg:3: mode: duplicate key (already set at line 2)\n", 1);
}

static void test_duplicate_section(void **state)
{
    (void)state;
    expect_errors(BASE "[listener submissions]\nmode = passthrough\n"
                       "[mailbox mx1]\naddress = 127.0.0.1:2525\nmaildir = /tmp/m\n"
                       "[global]\n[global]\n",
                  "cfg:10: listener submissions: duplicate section ([listener submissions] is "
                  "already defined at line 1)\n"
                  "cfg:12: mailbox mx1: name 'mx1' is already used by [backend mx1] at line 4 (a "
                  "mailbox is also a backend, so they share names)\n"
                  "cfg:16: global: duplicate section ([global] is already defined at line 15)\n",
                  3);
}

static void test_unknown_backend(void **state)
{
    (void)state;
    expect_errors("[listener submissions]\nmode = passthrough\n[backend mx1]\nhost = 10.0.0.5\n"
                  "[route r]\nsni = *\nbackend = mx9\n",
                  "cfg:7: backend: no backend or mailbox named 'mx9'\n", 1);
}

/* DESIGN.md's table, every refused listener/backend pair. */
static void test_invalid_pairs(void **state)
{
    (void)state;
    static const struct {
        const char *listener, *endpoint, *error;
    } cases[] = {
        {"submissions", "submissions = 127.0.0.1:2525 plain",
         "listener 'submissions' passes TLS through, so backend 'mx1' must speak implicit TLS "
         "for submissions, but 127.0.0.1:2525 is plain (the client would wait for a TLS "
         "handshake that never comes)"},
        {"submissions", "submissions = 10.0.0.5:587 starttls",
         "listener 'submissions' passes TLS through, so backend 'mx1' must speak implicit TLS "
         "for submissions, but 10.0.0.5:587 is STARTTLS (the client would wait for a greeting "
         "inside TLS that never comes)"},
        {"submission", "submission = 10.0.0.5:465 implicit",
         "listener 'submission' passes TLS through, so backend 'mx1' must speak STARTTLS for "
         "submission, but 10.0.0.5:465 is implicit TLS (the backend would greet inside TLS)"},
        {"submission", "submission = [::1]:2587 plain",
         "listener 'submission' passes TLS through, so backend 'mx1' must speak STARTTLS for "
         "submission, but [::1]:2587 is plain (a plaintext backend cannot receive a TLS "
         "stream)"},
        {"submission", "submissions = 10.0.0.5",
         "listener 'submission' offers submission, but backend 'mx1' has none (set host = HOST "
         "or submission = HOST:PORT in [backend mx1])"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[512], expected[512];
        snprintf(text, sizeof text,
                 "[listener %s]\nmode = passthrough\n[backend mx1]\n%s\n"
                 "[route r]\nsni = *\nbackend = mx1\n",
                 cases[i].listener, cases[i].endpoint);
        snprintf(expected, sizeof expected, "cfg:7: backend: %s\n", cases[i].error);
        expect_errors(text, expected, 1);
    }
}

static void test_duplicate_sni(void **state)
{
    (void)state;
    expect_errors(BASE "[route a]\nsni = mail.example.com\nbackend = mx1\n"
                       "[route b]\nsni = x.example MAIL.example.com x.example\nbackend = mx1\n",
                  "cfg:14: sni: 'mail.example.com' is already routed by [route a] at line 10\n"
                  "cfg:14: sni: 'x.example' is listed twice\n",
                  2);
}

static void test_two_default_routes(void **state)
{
    (void)state;
    expect_errors(BASE "[route fallback]\nsni = *\nbackend = mx1\n",
                  "cfg:11: sni: route 'fallback' is the default route ('*'), and so is route 'r' "
                  "(line 7); only one may be\n",
                  1);
}

static void test_bad_sni_patterns(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "mail.*",
        "*mail.example.com",
        "mail..example.com",
        "-mail.example.com",
        "mail-.example.com",
        "mail_x.example",
        "*.*.example.com",
        "**",
        "mail.example.com.",
        "m\xc3\xa4il.example",
        ".example.com",
        "*.",
        "mail!.example",
        "mail\rx.example",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[512], expected[512];
        snprintf(text, sizeof text, BASE "[route x]\nsni = ok.example %s\nbackend = mx1\n", bad[i]);
        snprintf(expected, sizeof expected,
                 "cfg:11: sni: bad name '%s' (expected a host name such as mail.example.com, a "
                 "wildcard such as *.example.com, or * alone for the default route)\n",
                 bad[i]);
        expect_errors(text, expected, 1);
    }
}

static void test_certificate_errors(void **state)
{
    (void)state;
    expect_errors("[certificate one]\ncert = CERTS/a.pem\nkey = CERTS/e.key\n"
                  "[certificate two]\ncert = CERTS/missing.pem\nkey = CERTS/b.key\n" BASE,
                  "cfg:5: cert: cannot read 'CERTS/missing.pem': No such file or directory\n"
                  "cfg:2: cert: key CERTS/e.key does not match certificate CERTS/a.pem\n",
                  2);
}

/* An EC key for another EC certificate: OpenSSL refuses it while loading the
 * key; the error says so in the same words as for a key of another type. */
static void test_certificate_other_key(void **state)
{
    (void)state;
    struct result r =
        load(CERT "[certificate other]\ncert = CERTS/a.pem\nkey = CERTS/b.key\n" BASE);
    assert_null(r.cfg);
    assert_int_equal(r.nerrors, 1);
    assert_string_equal(r.errors,
                        "cfg:5: cert: key CERTS/b.key does not match certificate CERTS/a.pem\n");
    done(&r);
}

static void test_two_default_certificates(void **state)
{
    (void)state;
    expect_errors("[certificate a]\ncert = CERTS/a.pem\nkey = CERTS/a.key\ndefault = yes\n"
                  "[certificate b]\ncert = CERTS/b.pem\nkey = CERTS/b.key\ndefault = on\n" BASE,
                  "cfg:8: default: certificate 'b' is marked default, and so is 'a' (line 1); "
                  "only one may be\n",
                  1);
}

static void test_terminate_needs_certificate(void **state)
{
    (void)state;
    expect_errors("[listener submissions]\n[listener submission]\nmode = terminate\n"
                  "[backend mx1]\nhost = 10.0.0.5\n[route r]\nsni = *\nbackend = mx1\n",
                  "cfg:1: listener submissions: listener 'submissions' terminates TLS, but there "
                  "is no [certificate] (add one, or set mode = passthrough)\n"
                  "cfg:3: mode: listener 'submission' terminates TLS, but there is no "
                  "[certificate] (add one, or set mode = passthrough)\n",
                  2);
}

static void test_no_route(void **state)
{
    (void)state;
    expect_errors("[listener submissions]\nmode = passthrough\n[backend mx1]\nhost = 10.0.0.5\n",
                  "cfg:1: listener submissions: no route: add a [route] with sni = * and a "
                  "backend\n",
                  1);
}

static void test_listener_address_clash(void **state)
{
    (void)state;
    expect_errors(BASE "[listener alt]\nservice = submissions\nmode = passthrough\n"
                       "[listener alt2]\nservice = submissions\naddress = *\n"
                       "mode = passthrough\n",
                  "cfg:10: listener alt: [::]:465 is already used by [listener submissions] at "
                  "line 1 (give each listener and mailbox its own address)\n"
                  "cfg:15: address: * is already used by [listener submissions] at line 1 (give "
                  "each listener and mailbox its own address)\n",
                  2);
}

/* A mailbox and a listener on one address, or a wildcard over another's
 * port: with workers > 1 (SO_REUSEPORT) both binds would succeed and share
 * the connections, so the config refuses it whatever `workers` says. */
static void test_mailbox_address_clash(void **state)
{
    (void)state;
    expect_errors(BASE "[listener plain]\nservice = submission\naddress = 127.0.0.1:2525\n"
                       "mode = passthrough\n"
                       "[mailbox box]\naddress = 127.0.0.1:2525\nmaildir = /tmp/m\n"
                       "[mailbox wild]\naddress = 127.0.0.1:465\nmaildir = /tmp/m\n"
                       "[listener v4any]\nservice = submission\naddress = 0.0.0.0:2600\n"
                       "mode = passthrough\n"
                       "[listener v6one]\nservice = submission\naddress = [::1]:2600\n"
                       "mode = passthrough\n"
                       "[listener v4one]\nservice = submission\naddress = 127.0.0.1:2600\n"
                       "mode = passthrough\n",
                  "cfg:15: address: 127.0.0.1:2525 is already used by [listener plain] at line 10 "
                  "(give each listener and mailbox its own address)\n"
                  "cfg:18: address: 127.0.0.1:465 overlaps [::]:465 of [listener submissions] at "
                  "line 1: a wildcard address takes the port on every address (give each its own "
                  "port)\n"
                  "cfg:30: address: 127.0.0.1:2600 overlaps 0.0.0.0:2600 of [listener v4any] at "
                  "line 20: a wildcard address takes the port on every address (give each its own "
                  "port)\n",
                  3);
    /* An IPv4-mapped IPv6 address is the IPv4 address to the kernel. */
    expect_errors(BASE
                  "[listener mapped]\nservice = submission\naddress = [::ffff:127.0.0.1]:2525\n"
                  "mode = passthrough\n"
                  "[mailbox box]\naddress = 127.0.0.1:2525\nmaildir = /tmp/m\n",
                  "cfg:15: address: 127.0.0.1:2525 is already used by [listener mapped] at line 10 "
                  "(give each listener and mailbox its own address)\n",
                  1);
}

/* [metrics]: one, unnamed, at a HOST:PORT of its own. */
static void test_metrics_section(void **state)
{
    (void)state;
    struct result r = load(BASE "[metrics]\naddress = 127.0.0.1:9465\n");
    assert_non_null(r.cfg);
    assert_true(r.cfg->metrics.set);
    assert_string_equal(r.cfg->metrics.address, "127.0.0.1:9465");
    assert_int_equal(port_of(&r.cfg->metrics.addr), 9465);
    assert_int_equal(r.cfg->metrics.line, 10);
    done(&r);
    r = load(BASE);
    assert_non_null(r.cfg);
    assert_false(r.cfg->metrics.set);
    done(&r);
    expect_errors(BASE "[metrics]\naddress = [::]:465\n[metrics]\naddress = localhost\n"
                       "[metrics m]\n[metrics]\nport = 1\n",
                  "cfg:12: metrics: duplicate section ([metrics] is already defined at line 10)\n"
                  "cfg:14: metrics m: [metrics] takes no name (write [metrics])\n"
                  "cfg:15: metrics: duplicate section ([metrics] is already defined at line 10)\n"
                  "cfg:11: address: [::]:465 is already used by [listener submissions] at line 1 "
                  "(give each listener and mailbox its own address)\n",
                  4);
    expect_errors(BASE "[metrics]\naddress = 9465\n",
                  "cfg:11: address: '9465' needs a host and a port (write HOST:PORT, e.g. "
                  "127.0.0.1:9465)\n",
                  1);
    expect_errors(BASE "[metrics]\nport = 9465\n",
                  "cfg:11: port: unknown key in [metrics] (expected address)\n"
                  "cfg:10: metrics: missing required key 'address'\n",
                  2);
}

static void test_backend_without_endpoints(void **state)
{
    (void)state;
    expect_errors(BASE "[backend empty]\nverify = no\n",
                  "cfg:10: backend empty: no endpoints (set host = HOST, or one key per service "
                  "such as submissions = HOST:PORT)\n",
                  1);
}

static void test_mailbox_errors(void **state)
{
    (void)state;
    expect_errors(BASE "[mailbox a]\naddress = 127.0.0.1:2525\nmaildir = /tmp/m\ntls = starttls\n"
                       "[mailbox b]\naddress = 2526\nmaildir = /tmp/m\ncert = CERTS/a.pem\n"
                       "[mailbox c]\nmaildir = /tmp/m\nusers = /nonexistent/users\n",
                  "cfg:20: users: cannot read '/nonexistent/users': No such file or directory\n"
                  "cfg:18: mailbox c: missing required key 'address'\n"
                  "cfg:10: mailbox a: missing required key 'cert' (needed with tls = starttls)\n"
                  "cfg:17: cert: unused with tls = plain (remove it, or set tls = implicit or "
                  "starttls)\n"
                  "cfg:15: address: '2526' has no host (the mailbox listens there and sallyport "
                  "connects to it: write HOST:PORT, e.g. 127.0.0.1:2525)\n",
                  5);
}

static void test_syntax_errors(void **state)
{
    (void)state;
    expect_errors(BASE "this is not a key\n[listener submission\n= 5\n",
                  "cfg:10: syntax error (expected \"key = value\", a [section] header or a ; "
                  "comment)\n"
                  "cfg:11: syntax error (expected \"key = value\", a [section] header or a ; "
                  "comment)\n"
                  "cfg:12: syntax error: no key name before '='\n",
                  3);
}

static void test_continuation_of_single_value(void **state)
{
    (void)state;
    expect_errors("[listener submissions]\nmode = passthrough\n  address = 127.0.0.1:465\n"
                  "[backend mx1]\nhost = 10.0.0.5\n[route r]\nsni = *\nbackend = mx1\n",
                  "cfg:3: mode: indented line continues 'mode', which takes one value (remove the "
                  "indentation to start a new key)\n",
                  1);
}

static void test_long_line(void **state)
{
    (void)state;
    char text[1024] = BASE "[route long]\nbackend = mx1\nsni =";
    for (int i = 0; i < 20; i++)
        strcat(text, " host.example.com");
    strcat(text, "\n");
    expect_errors(text,
                  "cfg:12: syntax error: line longer than 199 characters (continue a long sni "
                  "list on indented lines)\n"
                  "cfg:10: route long: missing required key 'sni'\n",
                  2);
}

/* fgets() would stop at the NUL and read the rest of the line as more
 * lines, shifting every later line number. */
static void test_nul_byte_in_line(void **state)
{
    (void)state;
    static const char text[] = BASE "[route nul]\nbackend = m\0x1 ; a NUL\nsni = nul.example\n"
                                    "bogus\n";
    struct result r = load_bytes(text, sizeof text - 1);
    assert_string_equal(r.errors,
                        "cfg:11: syntax error: NUL byte in line\n"
                        "cfg:13: syntax error (expected \"key = value\", a [section] header or a ; "
                        "comment)\n"
                        "cfg:10: route nul: missing required key 'backend'\n");
    assert_int_equal(r.nerrors, 3);
    assert_null(r.cfg);
    done(&r);
}

static void test_comments_and_whitespace(void **state)
{
    (void)state;
    struct result r = load("\xEF\xBB\xBF; a comment\n"
                           "# another\n"
                           "[ listener  submissions ]   ; inline\n"
                           "mode = passthrough ; why not\n"
                           "\n"
                           "[backend mx1]\n"
                           "host: 10.0.0.5\n"
                           "[route r]\n"
                           "sni = * ; the default\n"
                           "backend = mx1\n");
    assert_string_equal(r.errors, "");
    assert_non_null(r.cfg);
    assert_string_equal(r.cfg->listeners[0].name, "submissions");
    assert_int_equal(r.cfg->listeners[0].line, 3);
    assert_int_equal(r.cfg->listeners[0].mode, MODE_PASSTHROUGH);
    assert_int_equal(r.cfg->routes[0].nsni, 1);
    done(&r);
}

static void test_crlf_line_ends(void **state)
{
    (void)state;
    struct result r =
        load("[listener submissions]\r\nmode = passthrough\r\n[backend mx1]\r\n"
             "host = 10.0.0.5\r\n[route r]\r\nsni = Mail.Example\r\nbackend = mx1\r\n");
    assert_string_equal(r.errors, "");
    assert_non_null(r.cfg);
    assert_int_equal(r.cfg->listeners[0].mode, MODE_PASSTHROUGH);
    assert_string_equal(r.cfg->routes[0].sni[0], "mail.example");
    assert_string_equal(r.cfg->backends[0].endpoints[SERVICE_SUBMISSIONS].host, "10.0.0.5");
    done(&r);
}

/* Everything wrong at once: every error is reported, in one run. */
static void test_many_errors(void **state)
{
    (void)state;
    expect_errors(
        "[global]\n"
        "idle_timeout = soon\n"
        "[listener submissions]\n"
        "mode = passthrough\n"
        "colour = blue\n"
        "[listener submission]\n"
        "mode = passthrough\n"
        "[backend mx1]\n"
        "submissions = 127.0.0.1:2525 plain\n"
        "submission = 10.0.0.5:587\n"
        "[route a]\n"
        "sni = mail.example.com\n"
        "backend = mx1\n"
        "[route b]\n"
        "sni = MAIL.example.com\n"
        "backend = mx2\n",
        "cfg:2: idle_timeout: bad duration 'soon' (expected a positive number of "
        "seconds, or a number with s, m or h: 30s, 5m, 1h)\n"
        "cfg:5: colour: unknown key in [listener submissions] (expected service, "
        "address, mode, hostname, proxy_protocol, proxy_trusted, idle_timeout or backend)\n"
        "cfg:13: backend: listener 'submissions' passes TLS through, so backend 'mx1' "
        "must speak implicit TLS for submissions, but 127.0.0.1:2525 is plain (the "
        "client would wait for a TLS handshake that never comes)\n"
        "cfg:15: sni: 'mail.example.com' is already routed by [route a] at line 11\n"
        "cfg:16: backend: no backend or mailbox named 'mx2'\n",
        5);
}

static void test_pairs_checked_for_every_listener(void **state)
{
    (void)state;
    expect_errors("[listener submissions]\n"
                  "mode = passthrough\n"
                  "[listener submission]\n"
                  "mode = passthrough\n"
                  "[backend mx1]\n"
                  "submissions = 127.0.0.1:2525 plain\n"
                  "submission = 127.0.0.1:2525 plain\n"
                  "[route a]\n"
                  "sni = *\n"
                  "backend = mx1\n",
                  "cfg:10: backend: listener 'submissions' passes TLS through, so backend 'mx1' "
                  "must speak implicit TLS for submissions, but 127.0.0.1:2525 is plain (the "
                  "client would wait for a TLS handshake that never comes)\n"
                  "cfg:10: backend: listener 'submission' passes TLS through, so backend 'mx1' "
                  "must speak STARTTLS for submission, but 127.0.0.1:2525 is plain (a plaintext "
                  "backend cannot receive a TLS stream)\n",
                  2);
}

static void test_missing_file(void **state)
{
    (void)state;
    char buf[256] = "";
    FILE *errors = fmemopen(buf, sizeof buf, "w");
    int n = 0;
    assert_null(config_load("/nonexistent/sallyport.conf", errors, &n));
    fclose(errors);
    assert_int_equal(n, 1);
    assert_string_equal(buf,
                        "/nonexistent/sallyport.conf: cannot open: No such file or directory\n");
    config_free(NULL);
}

/* ---- value parsers ---- */

static void test_value_duration(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        unsigned seconds; /* 0: refused */
    } cases[] = {
        {"30", 30},        {"30s", 30},      {"5m", 300}, {"1h", 3600}, {"0", 0},
        {"", 0},           {"-5", 0},        {"5x", 0},   {"5mm", 0},   {"m", 0},
        {"4294967296", 0}, {"99999999h", 0}, {" 5", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned out = 7;
        char err[256] = "";
        bool ok = value_duration(cases[i].text, &out, err, sizeof err);
        assert_int_equal(ok, cases[i].seconds != 0);
        assert_int_equal(out, ok ? cases[i].seconds : 7);
        assert_int_equal(err[0] != '\0', !ok);
    }
}

static void test_value_size(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        size_t bytes; /* 0: refused */
    } cases[] = {
        {"52428800", 52428800},
        {"50M", 52428800},
        {"512K", 524288},
        {"1G", 1073741824},
        {"1k", 1024},
        {"0", 0},
        {"1T", 0},
        {"M", 0},
        {"1.5M", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t out = 7;
        char err[256] = "";
        bool ok = value_size(cases[i].text, &out, err, sizeof err);
        assert_int_equal(ok, cases[i].bytes != 0);
        assert_int_equal(out, ok ? cases[i].bytes : 7);
    }
}

static void test_value_bool(void **state)
{
    (void)state;
    static const char *const yes[] = {"yes", "true", "on", "1", "YES", "On"};
    static const char *const no[] = {"no", "false", "off", "0", "No"};
    char err[128];
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        bool b = false;
        assert_true(value_bool(yes[i], &b, err, sizeof err));
        assert_true(b);
    }
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        bool b = true;
        assert_true(value_bool(no[i], &b, err, sizeof err));
        assert_false(b);
    }
    bool b = true;
    assert_false(value_bool("2", &b, err, sizeof err));
    assert_false(value_bool("", &b, err, sizeof err));
    assert_true(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_short_config),
        cmocka_unit_test(test_global_defaults),
        cmocka_unit_test(test_global_values),
        cmocka_unit_test(test_workers),
        cmocka_unit_test(test_log_keys),
        cmocka_unit_test(test_proxy_protocol_keys),
        cmocka_unit_test(test_backend_proxy_protocol),
        cmocka_unit_test(test_backend_xclient),
        cmocka_unit_test(test_route_mode),
        cmocka_unit_test(test_route_backends),
        cmocka_unit_test(test_idle_timeouts),
        cmocka_unit_test(test_backend_overrides),
        cmocka_unit_test(test_backend_ipv6_host),
        cmocka_unit_test(test_mailbox_as_backend),
        cmocka_unit_test(test_mailbox_with_tls),
        cmocka_unit_test(test_sni_lower_case),
        cmocka_unit_test(test_terminate_accepts_every_flavour),
        cmocka_unit_test(test_comments_and_whitespace),
        cmocka_unit_test(test_crlf_line_ends),
        cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_key_outside_section),
        cmocka_unit_test(test_unknown_section),
        cmocka_unit_test(test_bad_section_headers),
        cmocka_unit_test(test_bad_mode),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_bad_addresses),
        cmocka_unit_test(test_missing_required_key),
        cmocka_unit_test(test_duplicate_key),
        cmocka_unit_test(test_duplicate_section),
        cmocka_unit_test(test_unknown_backend),
        cmocka_unit_test(test_invalid_pairs),
        cmocka_unit_test(test_pairs_checked_for_every_listener),
        cmocka_unit_test(test_duplicate_sni),
        cmocka_unit_test(test_two_default_routes),
        cmocka_unit_test(test_bad_sni_patterns),
        cmocka_unit_test(test_certificate_errors),
        cmocka_unit_test(test_certificate_other_key),
        cmocka_unit_test(test_two_default_certificates),
        cmocka_unit_test(test_terminate_needs_certificate),
        cmocka_unit_test(test_no_route),
        cmocka_unit_test(test_listener_address_clash),
        cmocka_unit_test(test_mailbox_address_clash),
        cmocka_unit_test(test_metrics_section),
        cmocka_unit_test(test_overload_key),
        cmocka_unit_test(test_backend_without_endpoints),
        cmocka_unit_test(test_mailbox_errors),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_continuation_of_single_value),
        cmocka_unit_test(test_long_line),
        cmocka_unit_test(test_client_limits),
        cmocka_unit_test(test_client_limit_errors),
        cmocka_unit_test(test_hostname_errors),
        cmocka_unit_test(test_nul_byte_in_line),
        cmocka_unit_test(test_many_errors),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_value_duration),
        cmocka_unit_test(test_value_size),
        cmocka_unit_test(test_value_bool),
    };
    return cmocka_run_group_tests(tests, make_certs, remove_certs);
}
