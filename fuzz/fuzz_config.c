/* libFuzzer target for the config loader (src/config.c, config_read.c,
 * config_value.c, with inih underneath).
 *
 *   make fuzz          (or build/fuzz/fuzz_config fuzz/corpus/config)
 *
 * Input: the text of a sallyport.conf. Every "CERTS" in it stands for a
 * directory of certificates (made like tests/unit/test_config.c's, once per
 * user, kept as /tmp/sallyport-fuzz-certs-UID): CERTS/a.pem + a.key and
 * CERTS/b.pem + b.key (EC P-256 pairs), and CERTS/e.key (Ed25519, matching
 * no certificate). The text goes to a memfd and config_load() reads it as
 * /proc/self/fd/N, errors going to a memory stream.
 *
 * Host names: config_load() resolves them with getaddrinfo(). So that the
 * fuzzer neither floods a DNS resolver nor waits on one, this file interposes
 * getaddrinfo() (src/ is unchanged): addresses are parsed by the real one
 * with AI_NUMERICHOST, "localhost" is 127.0.0.1, names in the example
 * domains (*.test, *.example, *.internal, example.com/net/org and their
 * subdomains) resolve to 192.0.2.1 (TEST-NET-1), and anything else fails as
 * an unknown name, the way an unresolvable name does.
 * Inputs that name files under /dev, /proc or /sys are skipped: a fuzzed
 * "cert = /dev/zero" or "/dev/stdin" would hang the run, not find bugs.
 *
 * SALLYPORT_FUZZ_VERBOSE=1 in the environment prints what config_load() said
 * about each input (useful when replaying one).
 *
 * Besides memory errors and leaks (LeakSanitizer), it aborts when loading
 * breaks its contract (config.h):
 *  - NULL exactly when *nerrors > 0; one "file:line: ..." line per error,
 *    with the file's own name and a line number within the file;
 *  - a returned config is complete: every certificate and TLS mailbox has
 *    its context, every listener its address and host name, every route a
 *    backend and 1..ROUTE_MAX_NAMES lower-case names, every backend an
 *    endpoint. */
#include <dlfcn.h>
#include <netdb.h>
#include <arpa/inet.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Aborts, naming the broken invariant, when `ok` is false. */
#define check(ok) ((ok) ? (void)0 : broken(__LINE__, #ok))

static _Noreturn void broken(int line, const char *what)
{
    fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, line, what);
    abort();
}

/* ---- getaddrinfo without DNS ---------------------------------------------- */

typedef int getaddrinfo_fn(const char *, const char *, const struct addrinfo *, struct addrinfo **);
static getaddrinfo_fn *real_getaddrinfo;

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    static const char *const example_domains[] = {
        ".test", ".example", "example.com", "example.net", "example.org", ".internal",
    };
    struct addrinfo h = hints ? *hints : (struct addrinfo){0};
    unsigned char addr[sizeof(struct in6_addr)];
    if (!real_getaddrinfo)
        return EAI_FAIL;
    h.ai_flags |= AI_NUMERICHOST | AI_NUMERICSERV;
    if (!node || inet_pton(AF_INET, node, addr) == 1 || inet_pton(AF_INET6, node, addr) == 1)
        return real_getaddrinfo(node, service, &h, res);
    if (strcmp(node, "localhost") == 0)
        return real_getaddrinfo("127.0.0.1", service, &h, res);
    for (size_t i = 0; i < sizeof example_domains / sizeof example_domains[0]; i++) {
        if (ends_with(node, example_domains[i]))
            return real_getaddrinfo("192.0.2.1", service, &h, res);
    }
    return EAI_NONAME;
}

/* ---- certificates --------------------------------------------------------- */

static char certdir[64];
static char scratch[64]; /* certdir when it could not be kept: removed at exit */

static void remove_dir(const char *dir)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "fuzz_config: could not remove %s\n", dir);
}

static void remove_scratch(void)
{
    remove_dir(scratch);
}

/* True when `dir` is ours and holds the last file make_certs() writes. */
static bool certs_ready(const char *dir)
{
    struct stat st;
    char last[128];
    snprintf(last, sizeof last, "%s/e.key", dir);
    return lstat(dir, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == getuid() &&
           access(last, R_OK) == 0;
}

/* CERTS is made once per user and kept, so that runs (crashing ones
 * included) leave one directory behind rather than one each. It is made in a
 * temporary directory and renamed into place, so that parallel jobs never
 * see it half made. */
static void make_certs(void)
{
    snprintf(certdir, sizeof certdir, "/tmp/sallyport-fuzz-certs-%u", (unsigned)getuid());
    if (certs_ready(certdir))
        return;
    char tmp[64] = "/tmp/sallyport-fuzz-certs-XXXXXX";
    check(mkdtemp(tmp) != NULL);
    char cmd[1024];
    for (const char *n = "ab"; *n; n++) {
        snprintf(cmd, sizeof cmd,
                 "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                 "-keyout %s/%c.key -out %s/%c.pem -subj /CN=%c.example.com -days 3650 "
                 ">/dev/null 2>&1",
                 tmp, *n, tmp, *n, *n);
        check(system(cmd) == 0);
    }
    snprintf(cmd, sizeof cmd, "openssl genpkey -algorithm ed25519 -out %s/e.key >/dev/null 2>&1",
             tmp);
    check(system(cmd) == 0);
    if (rename(tmp, certdir) == 0)
        return;
    if (certs_ready(certdir)) { /* another job was first */
        remove_dir(tmp);
        return;
    }
    /* Something else has the name: use ours for this process only. */
    snprintf(certdir, sizeof certdir, "%s", tmp);
    snprintf(scratch, sizeof scratch, "%s", tmp);
    atexit(remove_scratch);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    void *sym = dlsym(RTLD_NEXT, "getaddrinfo");
    check(sym != NULL);
    memcpy(&real_getaddrinfo, &sym, sizeof sym); /* POSIX: a function's address */
    make_certs();
    return 0;
}

/* ---- the target ----------------------------------------------------------- */

/* Replaces every "CERTS" in data[0..size) with certdir; malloc'd, and
 * NUL-terminated only for the skip check (the file gets *len bytes). */
static char *expand(const uint8_t *data, size_t size, size_t *len)
{
    size_t dirlen = strlen(certdir), count = 0;
    for (size_t i = 0; i + 5 <= size; i++)
        if (memcmp(data + i, "CERTS", 5) == 0)
            count++, i += 4;
    char *text = malloc(size + count * dirlen + 1);
    check(text != NULL);
    size_t n = 0;
    for (size_t i = 0; i < size; i++) {
        if (i + 5 <= size && memcmp(data + i, "CERTS", 5) == 0) {
            memcpy(text + n, certdir, dirlen);
            n += dirlen, i += 4;
        } else {
            text[n++] = (char)data[i];
        }
    }
    text[n] = '\0';
    *len = n;
    return text;
}

static bool names_special_files(const char *text, size_t len)
{
    static const char *const dirs[] = {"/dev", "/proc", "/sys"};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        size_t m = strlen(dirs[i]);
        for (size_t j = 0; j + m <= len; j++)
            if (memcmp(text + j, dirs[i], m) == 0)
                return true;
    }
    return false;
}

/* Lines as fgets() counts them: '\n'-terminated ones and a final fragment. */
static int count_lines(const char *text, size_t len)
{
    int lines = 0;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    return lines + (len > 0 && text[len - 1] != '\n');
}

/* Every error is one line "PATH:LINE: ..." with 1 <= LINE <= lines. */
static void check_errors(const char *errors, size_t errlen, const char *path, int nerrors,
                         int lines)
{
    int seen = 0;
    size_t pathlen = strlen(path);
    check(strlen(errors) == errlen);
    for (const char *p = errors; *p;) {
        const char *nl = strchr(p, '\n');
        check(nl != NULL);
        check(strncmp(p, path, pathlen) == 0 && p[pathlen] == ':');
        char *end;
        long line = strtol(p + pathlen + 1, &end, 10);
        check(end > p + pathlen + 1 && end[0] == ':' && end[1] == ' ');
        check(line >= 1 && line <= lines);
        seen++;
        p = nl + 1;
    }
    check(seen == nerrors);
}

static bool is_lower_name(const char *s)
{
    for (; *s; s++)
        if (*s >= 'A' && *s <= 'Z')
            return false;
    return true;
}

static void check_config(const struct config *c)
{
    for (size_t i = 0; i < c->ncertificates; i++)
        check(c->certificates[i].ctx != NULL && c->certificates[i].name);
    for (size_t i = 0; i < c->nlisteners; i++) {
        const struct cfg_listener *l = &c->listeners[i];
        check(l->service < SERVICE_COUNT && l->address && l->hostname && l->addr.len > 0);
        check(l->mode == MODE_TERMINATE || l->mode == MODE_PASSTHROUGH);
        /* An https listener passes through; its backend is a route of its own. */
        check(l->service != SERVICE_HTTPS || l->mode == MODE_PASSTHROUGH);
        check(l->web_route == CONFIG_NO_ROUTE ||
              (l->service == SERVICE_HTTPS && l->web_route < c->nroutes &&
               c->routes[l->web_route].nsni == 0));
    }
    for (size_t i = 0; i < c->nbackends; i++) {
        const struct cfg_backend *b = &c->backends[i];
        bool any = false;
        for (int s = 0; s < SERVICE_COUNT; s++)
            any |= b->endpoints[s].set;
        check(any && b->name);
    }
    for (size_t i = 0; i < c->nroutes; i++) {
        const struct cfg_route *r = &c->routes[i];
        check(r->nbackends >= 1 && r->nbackends <= ROUTE_MAX_BACKENDS);
        for (size_t k = 0; k < r->nbackends; k++)
            check(r->backends[k] >= c->backends && r->backends[k] < c->backends + c->nbackends);
        /* Routes from [route] have names; an https listener's has none. */
        bool web_route = false;
        for (size_t k = 0; k < c->nlisteners; k++)
            web_route |= c->listeners[k].web_route == i;
        check((web_route ? r->nsni == 0 : r->nsni >= 1) && r->nsni <= ROUTE_MAX_NAMES);
        for (size_t j = 0; j < r->nsni; j++)
            check(r->sni[j][0] != '\0' && is_lower_name(r->sni[j]));
    }
    for (size_t i = 0; i < c->nmailboxes; i++) {
        const struct cfg_mailbox *m = &c->mailboxes[i];
        check(m->address && m->maildir && m->hostname && m->max_message_size > 0);
        check((m->tls == TLS_PLAIN) == (m->ctx == NULL));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("sallyport.conf", 0);
        check(fd >= 0);
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }

    size_t len;
    char *text = expand(data, size, &len);
    if (names_special_files(text, len)) {
        free(text);
        return -1; /* not added to the corpus */
    }
    check(ftruncate(fd, 0) == 0);
    check(pwrite(fd, text, len, 0) == (ssize_t)len);

    char *errors = NULL;
    size_t errlen = 0;
    FILE *err = open_memstream(&errors, &errlen);
    check(err != NULL);
    int nerrors = -1;
    struct config *c = config_load(path, err, &nerrors);
    check(fclose(err) == 0);

    if (getenv("SALLYPORT_FUZZ_VERBOSE")) /* when reproducing: what the loader said */
        fprintf(stderr, "config_load: %s, %d error(s)\n%s", c ? "loaded" : "NULL", nerrors, errors);
    check(nerrors >= 0);
    check((c == NULL) == (nerrors > 0));
    check_errors(errors, errlen, path, nerrors, count_lines(text, len));
    if (c) {
        check(strcmp(c->file, path) == 0);
        check_config(c);
        config_free(c);
    }
    free(errors);
    free(text);
    return 0;
}
