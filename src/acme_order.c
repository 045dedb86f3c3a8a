/* acme_order — see acme_order.h. get_certificate() is the story: the
 * directory, the account, the order, one authorization at a time (its
 * answer put where the CA will look, then polled), finalize, download,
 * and install_file(). */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "acme_challenge.h"
#include "acme_crypto.h"
#include "acme_http.h"
#include "acme_order.h"
#include "log.h"
#include "tls.h"

/* Polls of an authorization or an order before the attempt fails, and the
 * pause between polls when the CA names none. */
#define POLLS_MAX     60
#define POLL_DEFAULT  1
#define POLL_WAIT_MAX 30 /* a Retry-After longer than this is cut to it */
/* A badNonce answer is retried with the nonce it carries, this often. */
#define NONCE_TRIES 3

struct acme_client {
    const atomic_bool *stop;
    acme_pause_fn *pause;
    void *pause_arg;
    struct acme_http *http;
    char *http_ca; /* the `ca` the curl handle was made with */
    EVP_PKEY *account_key;
    char account_dir[4096]; /* the state_dir the key was loaded from */
    char kid[1024];         /* account URL at `kid_directory` */
    char kid_directory[1024];
    char nonce[256];
    char new_nonce[1024], new_account[1024], new_order[1024];
    unsigned retry_after; /* a 429 or 503's Retry-After in this order */
};

/* ---- the CA's answers ----------------------------------------------------- */

/* "the CA said: DETAIL (TYPE)" from a problem document (RFC 7807), else the
 * HTTP status. */
static void ca_problem(const struct acme_response *res, const char *what, char *err, size_t errlen)
{
    json_t *doc = json_loads(res->body ? res->body : "", 0, NULL);
    const char *detail = json_string_value(json_object_get(doc, "detail"));
    const char *type = json_string_value(json_object_get(doc, "type"));
    if (detail)
        snprintf(err, errlen, "%s: the CA said: %.300s (%.100s)", what, detail,
                 type ? type : "no type");
    else
        snprintf(err, errlen, "%s: the CA answered HTTP %ld", what, res->status);
    json_decref(doc);
}

static bool is_bad_nonce(const struct acme_response *res)
{
    json_t *doc = json_loads(res->body ? res->body : "", 0, NULL);
    const char *type = json_string_value(json_object_get(doc, "type"));
    bool bad = type && strcmp(type, "urn:ietf:params:acme:error:badNonce") == 0;
    json_decref(doc);
    return bad;
}

static void take_nonce(struct acme_client *a, const struct acme_response *res)
{
    if (res->nonce[0])
        snprintf(a->nonce, sizeof a->nonce, "%s", res->nonce);
}

/* Reads the directory (RFC 8555 7.1.1). */
static int read_directory(struct acme_client *a, const char *url, char *err, size_t errlen)
{
    struct acme_response res;
    if (acme_http_get(a->http, url, false, &res, err, errlen) != 0)
        return -1;
    if ((res.status == 429 || res.status == 503) && res.retry_after > a->retry_after)
        a->retry_after = res.retry_after; /* maintenance, or rate limited */
    json_t *doc = res.status == 200 ? json_loads(res.body, 0, NULL) : NULL;
    const char *nn = json_string_value(json_object_get(doc, "newNonce"));
    const char *na = json_string_value(json_object_get(doc, "newAccount"));
    const char *no = json_string_value(json_object_get(doc, "newOrder"));
    int rc = -1;
    if (nn && na && no) {
        if (strcmp(a->new_nonce, nn) != 0)
            a->nonce[0] = '\0'; /* another CA: its nonce would only be refused */
        snprintf(a->new_nonce, sizeof a->new_nonce, "%s", nn);
        snprintf(a->new_account, sizeof a->new_account, "%s", na);
        snprintf(a->new_order, sizeof a->new_order, "%s", no);
        rc = 0;
    } else if (res.status == 200) {
        snprintf(err, errlen, "%s is not an ACME directory", url);
    } else {
        snprintf(err, errlen, "directory %s: HTTP %ld", url, res.status);
    }
    json_decref(doc);
    acme_response_clear(&res);
    return rc;
}

/* POSTs a JWS of `payload` ("" for POST-as-GET) to `url`, signed with the
 * account key (by kid once there is an account), with a fresh nonce; a
 * badNonce answer is tried again. The response is the caller's. */
static int post(struct acme_client *a, const char *url, const char *payload,
                struct acme_response *res, char *err, size_t errlen)
{
    for (int attempt = 0; attempt < NONCE_TRIES; attempt++) {
        if (!a->nonce[0]) {
            struct acme_response head;
            if (acme_http_get(a->http, a->new_nonce, true, &head, err, errlen) != 0)
                return -1;
            take_nonce(a, &head);
            acme_response_clear(&head);
            if (!a->nonce[0]) {
                snprintf(err, errlen, "the CA gave no nonce at %.900s", a->new_nonce);
                return -1;
            }
        }
        char *jws = acme_jws(a->account_key, a->kid[0] ? a->kid : NULL, a->nonce, url, payload);
        a->nonce[0] = '\0'; /* used */
        if (!jws) {
            snprintf(err, errlen, "cannot sign a request");
            return -1;
        }
        int rc = acme_http_post(a->http, url, jws, res, err, errlen);
        free(jws);
        if (rc != 0)
            return -1;
        take_nonce(a, res);
        if (!(res->status == 400 && is_bad_nonce(res)))
            return 0;
        acme_response_clear(res);
    }
    snprintf(err, errlen, "the CA refused %d nonces in a row", NONCE_TRIES);
    return -1;
}

/* POST `url` and parse the JSON answer; NULL (err set) unless the status is
 * 2xx and the body an object. `location` (may be NULL) gets the Location. */
static json_t *post_json(struct acme_client *a, const char *url, const char *payload,
                         const char *what, char *location, size_t loclen, unsigned *retry_after,
                         char *err, size_t errlen)
{
    struct acme_response res;
    if (post(a, url, payload, &res, err, errlen) != 0)
        return NULL;
    json_t *doc = NULL;
    if ((res.status == 429 || res.status == 503) && res.retry_after > a->retry_after)
        a->retry_after = res.retry_after; /* rate limited: wait at least this long */
    if (res.status < 200 || res.status > 299)
        ca_problem(&res, what, err, errlen);
    else if (!(doc = json_loads(res.body, 0, NULL)) || !json_is_object(doc)) {
        json_decref(doc);
        doc = NULL;
        snprintf(err, errlen, "%s: the CA's answer is not a JSON object", what);
    }
    if (doc && location)
        snprintf(location, loclen, "%s", res.location);
    if (retry_after)
        *retry_after = res.retry_after;
    acme_response_clear(&res);
    return doc;
}

/* ---- account --------------------------------------------------------------- */

/* The account key of the state directory: loaded, or made and written. A
 * key file that does not load is set aside (NAME.corrupt-TIME), not lost,
 * and a new account made. */
static int account_key(struct acme_client *a, const struct acme_settings *s, char *err,
                       size_t errlen)
{
    if (a->account_key && strcmp(a->account_dir, s->state_dir) == 0)
        return 0;
    EVP_PKEY_free(a->account_key);
    a->account_key = NULL;
    a->kid[0] = '\0';
    char path[4200];
    snprintf(path, sizeof path, "%s/account.key", s->state_dir);
    char why[512];
    a->account_key = acme_key_load(path, why, sizeof why);
    if (!a->account_key && errno != ENOENT) {
        char aside[4300];
        snprintf(aside, sizeof aside, "%s.corrupt-%lld", path, (long long)time(NULL));
        if (rename(path, aside) == 0)
            log_warn("acme: %s; kept as %s, making a new account key", why, aside);
        else
            log_warn("acme: %s; making a new account key", why);
    }
    if (!a->account_key) {
        a->account_key = acme_key_new();
        char *pem = NULL;
        size_t len = 0;
        if (!a->account_key || acme_key_pem(a->account_key, &pem, &len) != 0 ||
            acme_file_write(path, pem, len, err, errlen) != 0) {
            if (pem)
                OPENSSL_cleanse(pem, len);
            free(pem);
            EVP_PKEY_free(a->account_key);
            a->account_key = NULL;
            if (!err[0])
                snprintf(err, errlen, "cannot make an account key");
            return -1;
        }
        OPENSSL_cleanse(pem, len);
        free(pem);
        log_info("acme: made a new account key %s", path);
    }
    snprintf(a->account_dir, sizeof a->account_dir, "%s", s->state_dir);
    return 0;
}

/* Registers the account key with the CA (or finds it registered: RFC 8555
 * 7.3 answers 200 with the same URL). */
static int account(struct acme_client *a, const struct acme_settings *s, char *err, size_t errlen)
{
    if (a->kid[0] && strcmp(a->kid_directory, s->directory) == 0)
        return 0;
    a->kid[0] = '\0';
    json_t *req = json_pack("{s:b}", "termsOfServiceAgreed", 1);
    if (req && s->contact) {
        char mailto[600];
        snprintf(mailto, sizeof mailto, "mailto:%s", s->contact);
        json_object_set_new(req, "contact", json_pack("[s]", mailto));
    }
    char *payload = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    if (!payload) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    char kid[1024] = "";
    json_t *doc =
        post_json(a, a->new_account, payload, "account", kid, sizeof kid, NULL, err, errlen);
    free(payload);
    if (!doc)
        return -1;
    json_decref(doc);
    if (!kid[0]) {
        snprintf(err, errlen, "account: the CA gave no account URL");
        return -1;
    }
    snprintf(a->kid, sizeof a->kid, "%s", kid);
    snprintf(a->kid_directory, sizeof a->kid_directory, "%s", s->directory);
    return 0;
}

/* ---- one authorization ---------------------------------------------------- */

static const char *const challenge_types[] = {
    [CHALLENGE_TLS_ALPN_01] = "tls-alpn-01", [CHALLENGE_HTTP_01] = "http-01"};

/* Puts the answer to a challenge where the CA will look for it. `key` is
 * what to remove it by afterwards (the name or the token). */
static int put_answer(struct acme_client *a, enum acme_challenge type, const char *name,
                      const char *token, char *key, size_t keylen, char *err, size_t errlen)
{
    char *thumb = acme_thumbprint(a->account_key);
    char keyauth[512];
    if (!thumb || snprintf(keyauth, sizeof keyauth, "%s.%s", token, thumb) >= (int)sizeof keyauth) {
        free(thumb);
        snprintf(err, errlen, "%s: cannot make the key authorization", name);
        return -1;
    }
    free(thumb);
    if (type == CHALLENGE_HTTP_01) {
        snprintf(key, keylen, "%s", token);
        if (!acme_challenge_put_http(token, keyauth)) {
            snprintf(err, errlen, "%s: too many challenges pending", name);
            return -1;
        }
        return 0;
    }
    snprintf(key, keylen, "%s", name);
    EVP_PKEY *pkey = acme_key_new();
    X509 *cert = pkey ? acme_alpn_cert(pkey, name, keyauth) : NULL;
    SSL_CTX *ctx = cert ? tls_acme_ctx_new(cert, pkey, err, errlen) : NULL;
    bool put = ctx && acme_challenge_put_alpn(name, ctx);
    SSL_CTX_free(ctx);
    X509_free(cert);
    EVP_PKEY_free(pkey);
    if (!put) {
        snprintf(err, errlen, "%s: cannot make the tls-alpn-01 certificate", name);
        return -1;
    }
    return 0;
}

/* The error the CA gave a failed challenge, for the log. */
static void challenge_error(json_t *authz, const char *type, const char *name, char *err,
                            size_t errlen)
{
    json_t *challenges = json_object_get(authz, "challenges");
    size_t i;
    json_t *c;
    json_array_foreach(challenges, i, c)
    {
        const char *t = json_string_value(json_object_get(c, "type"));
        json_t *e = json_object_get(c, "error");
        if (t && strcmp(t, type) == 0 && e) {
            snprintf(err, errlen, "%s: %s failed: %.300s", name, type,
                     json_string_value(json_object_get(e, "detail"))
                         ? json_string_value(json_object_get(e, "detail"))
                         : "no detail");
            return;
        }
    }
    snprintf(err, errlen, "%s: the CA found the %s answer invalid", name, type);
    char *dump = json_dumps(authz, JSON_COMPACT);
    log_debug("acme: authorization: %s", dump ? dump : "?");
    free(dump);
}

/* Proves control of one name: answers its challenge and waits until the
 * CA has looked (RFC 8555 7.5.1). */
static int authorize(struct acme_client *a, const struct acme_job *job, const char *url, char *err,
                     size_t errlen)
{
    enum acme_challenge type = job->challenge;
    json_t *authz = post_json(a, url, "", "authorization", NULL, 0, NULL, err, errlen);
    if (!authz)
        return -1;
    const char *status = json_string_value(json_object_get(authz, "status"));
    const char *name =
        json_string_value(json_object_get(json_object_get(authz, "identifier"), "value"));
    bool ordered = false;
    for (size_t i = 0; name && i < job->nnames; i++)
        ordered |= strcasecmp(name, job->names[i]) == 0;
    if (!ordered) {
        snprintf(err, errlen, "the CA asks to authorize %.200s, which was not ordered",
                 name ? name : "a name it does not give");
        json_decref(authz);
        return -1;
    }
    if (status && strcmp(status, "valid") == 0) {
        json_decref(authz);
        return 0;
    }
    const char *token = NULL, *curl = NULL;
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(authz, "challenges"), i, c)
    {
        const char *t = json_string_value(json_object_get(c, "type"));
        if (t && strcmp(t, challenge_types[type]) == 0) {
            token = json_string_value(json_object_get(c, "token"));
            curl = json_string_value(json_object_get(c, "url"));
        }
    }
    if (!name || !status || strcmp(status, "pending") != 0 || !token || !curl ||
        strspn(token, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") !=
            strlen(token)) {
        snprintf(err, errlen, "%s: the CA offers no usable %s challenge (authorization %s)",
                 name ? name : url, challenge_types[type], status ? status : "without status");
        json_decref(authz);
        return -1;
    }
    char key[300];
    char who[256];
    char challenge_url[1024];
    snprintf(who, sizeof who, "%s", name);
    snprintf(challenge_url, sizeof challenge_url, "%s", curl);
    if (put_answer(a, type, who, token, key, sizeof key, err, errlen) != 0) {
        json_decref(authz);
        return -1;
    }
    json_decref(authz);
    int rc = -1;
    json_t *ch = post_json(a, challenge_url, "{}", "challenge", NULL, 0, NULL, err, errlen);
    json_decref(ch);
    for (int poll = 0; ch && poll < POLLS_MAX; poll++) {
        unsigned wait = 0;
        authz = post_json(a, url, "", "authorization", NULL, 0, &wait, err, errlen);
        status = json_string_value(json_object_get(authz, "status"));
        if (!authz || !status) {
            if (authz)
                snprintf(err, errlen, "%s: authorization without status", who);
            json_decref(authz);
            break;
        }
        bool deciding = strcmp(status, "pending") == 0 || strcmp(status, "processing") == 0;
        if (strcmp(status, "valid") == 0)
            rc = 0;
        else if (!deciding)
            challenge_error(authz, challenge_types[type], who, err, errlen);
        json_decref(authz);
        if (!deciding)
            break;
        if (!a->pause(a->pause_arg,
                      wait ? (wait < POLL_WAIT_MAX ? wait : POLL_WAIT_MAX) : POLL_DEFAULT)) {
            snprintf(err, errlen, "stopping");
            break;
        }
        if (poll + 1 == POLLS_MAX)
            snprintf(err, errlen, "%s: the CA did not decide within %d polls", who, POLLS_MAX);
    }
    acme_challenge_remove(key);
    return rc;
}

/* ---- the order ------------------------------------------------------------ */

/* Polls the order until its status is `want` (or fails); returns it. */
static json_t *await_order(struct acme_client *a, const char *url, json_t *order, const char *want,
                           char *err, size_t errlen)
{
    unsigned wait = 0; /* Retry-After of the last poll */
    for (int poll = 0; poll < POLLS_MAX; poll++) {
        const char *status = json_string_value(json_object_get(order, "status"));
        if (status && strcmp(status, want) == 0)
            return order;
        if (!status || strcmp(status, "invalid") == 0) {
            snprintf(err, errlen, "the order is %s", status ? status : "without status");
            json_decref(order);
            return NULL;
        }
        json_decref(order);
        if (!a->pause(a->pause_arg,
                      wait ? (wait < POLL_WAIT_MAX ? wait : POLL_WAIT_MAX) : POLL_DEFAULT)) {
            snprintf(err, errlen, "stopping");
            return NULL;
        }
        if (!(order = post_json(a, url, "", "order", NULL, 0, &wait, err, errlen)))
            return NULL;
    }
    json_decref(order);
    snprintf(err, errlen, "the order did not become %s within %d polls", want, POLLS_MAX);
    return NULL;
}

static char *new_order_payload(const struct acme_job *job)
{
    json_t *ids = json_array();
    for (size_t i = 0; ids && i < job->nnames; i++)
        json_array_append_new(ids, json_pack("{s:s,s:s}", "type", "dns", "value", job->names[i]));
    json_t *req = ids ? json_pack("{s:o}", "identifiers", ids) : NULL;
    char *payload = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    return payload;
}

/* An encrypted PEM block is refused, never prompted for on a terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *arg)
{
    (void)buf, (void)size, (void)rwflag, (void)arg;
    return -1;
}

/* The chain and key as one PEM file's text, after checking the chain's
 * leaf is for `key` and exactly the job's names. NULL (err set) if not. */
static char *certificate_file(const struct acme_job *job, const char *chain, size_t chainlen,
                              EVP_PKEY *key, X509 **leaf_out, char *err, size_t errlen)
{
    BIO *bio = BIO_new_mem_buf(chain, (int)chainlen);
    X509 *leaf = bio ? PEM_read_bio_X509(bio, NULL, no_passphrase, NULL) : NULL;
    BIO_free(bio);
    if (!leaf || X509_check_private_key(leaf, key) != 1 ||
        !acme_cert_covers(leaf, (const char *const *)job->names, job->nnames)) {
        snprintf(err, errlen, "the CA's certificate is not the one ordered");
        X509_free(leaf);
        return NULL;
    }
    char *pem = NULL;
    size_t len = 0;
    char *out = NULL;
    if (acme_key_pem(key, &pem, &len) == 0 && (out = malloc(chainlen + len + 2))) {
        memcpy(out, chain, chainlen);
        size_t at = chainlen;
        if (at > 0 && out[at - 1] != '\n')
            out[at++] = '\n';
        memcpy(out + at, pem, len);
        out[at + len] = '\0';
    }
    if (pem)
        OPENSSL_cleanse(pem, len);
    free(pem);
    if (!out)
        snprintf(err, errlen, "out of memory");
    *leaf_out = leaf;
    if (!out) {
        X509_free(leaf);
        *leaf_out = NULL;
    }
    return out;
}

/* Writes the chain and key to NAME.pem.new, loads that as the daemon will
 * (a chain OpenSSL refuses never replaces a good file), then renames it
 * over NAME.pem. */
static int install_file(const struct acme_settings *s, const struct acme_job *job, const char *file,
                        char *err, size_t errlen)
{
    char path[4400], next[4410];
    snprintf(path, sizeof path, "%s/%s.pem", s->state_dir, job->name);
    snprintf(next, sizeof next, "%s.new", path);
    if (acme_file_write(next, file, strlen(file), err, errlen) != 0)
        return -1;
    char why[512];
    SSL_CTX *ctx = tls_server_ctx_new(next, next, why, sizeof why);
    if (!ctx) {
        snprintf(err, errlen, "the CA's certificate does not load: %.400s", why);
        unlink(next);
        return -1;
    }
    SSL_CTX_free(ctx);
    if (rename(next, path) != 0) {
        snprintf(err, errlen, "cannot rename %.400s: %s", next, strerror(errno));
        unlink(next);
        return -1;
    }
    int dir = open(s->state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
        (void)fsync(dir); /* the rename itself, past a crash */
        close(dir);
    }
    return 0;
}

/* The curl handle, made again when the reload changed [acme] ca. */
static int http_for(struct acme_client *a, const struct acme_settings *s, char *err, size_t errlen)
{
    bool same = (!s->ca && !a->http_ca) || (s->ca && a->http_ca && strcmp(s->ca, a->http_ca) == 0);
    if (a->http && same)
        return 0;
    acme_http_free(a->http);
    free(a->http_ca);
    a->http_ca = s->ca ? strdup(s->ca) : NULL;
    a->http = (!s->ca || a->http_ca) ? acme_http_new(s->ca, a->stop) : NULL;
    if (!a->http) {
        snprintf(err, errlen, "out of memory for libcurl");
        return -1;
    }
    return 0;
}

/* Orders the job's certificate and writes it with its new key. */
static int get_certificate(struct acme_client *a, const struct acme_settings *s,
                           const struct acme_job *job, X509 **leaf, char *err, size_t errlen)
{
    if (http_for(a, s, err, errlen) != 0)
        return -1;
    if (read_directory(a, s->directory, err, errlen) != 0 || account_key(a, s, err, errlen) != 0 ||
        account(a, s, err, errlen) != 0)
        return -1;
    char *payload = new_order_payload(job);
    char order_url[1024] = "";
    json_t *order = payload ? post_json(a, a->new_order, payload, "new order", order_url,
                                        sizeof order_url, NULL, err, errlen)
                            : NULL;
    free(payload);
    if (!order)
        return -1;
    if (!order_url[0]) {
        snprintf(err, errlen, "new order: the CA gave no order URL");
        json_decref(order);
        return -1;
    }
    json_t *authzs = json_object_get(order, "authorizations");
    if (!json_is_array(authzs) || json_array_size(authzs) > job->nnames) {
        snprintf(err, errlen, "the order has %zu authorizations for %zu names",
                 json_array_size(authzs), job->nnames);
        json_decref(order);
        return -1;
    }
    size_t i;
    json_t *u;
    json_array_foreach(authzs, i, u)
    {
        if (!json_is_string(u) || authorize(a, job, json_string_value(u), err, errlen)) {
            if (!json_is_string(u))
                snprintf(err, errlen, "the order's authorizations are not URLs");
            json_decref(order);
            return -1;
        }
    }
    /* Every authorization is valid: the order turns ready (RFC 8555 7.4),
     * maybe only a moment later at a CA that updates it asynchronously. */
    json_incref(order);
    json_t *ready = await_order(a, order_url, order, "ready", err, errlen);
    if (!ready) {
        json_decref(order);
        return -1;
    }
    json_decref(ready);
    char finalize[1024];
    const char *f = json_string_value(json_object_get(order, "finalize"));
    snprintf(finalize, sizeof finalize, "%s", f ? f : "");
    json_decref(order);
    if (!finalize[0]) {
        snprintf(err, errlen, "the order has no finalize URL");
        return -1;
    }
    EVP_PKEY *key = acme_key_new();
    char *csr = key ? acme_csr(key, (const char *const *)job->names, job->nnames) : NULL;
    json_t *req = csr ? json_pack("{s:s}", "csr", csr) : NULL;
    payload = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    free(csr);
    order =
        payload ? post_json(a, finalize, payload, "finalize", NULL, 0, NULL, err, errlen) : NULL;
    free(payload);
    if (!key || !order) {
        if (!key || !err[0])
            snprintf(err, errlen, "cannot make the certificate request");
        EVP_PKEY_free(key);
        json_decref(order);
        return -1;
    }
    if (!(order = await_order(a, order_url, order, "valid", err, errlen))) {
        EVP_PKEY_free(key);
        return -1;
    }
    char cert_url[1024];
    const char *cu = json_string_value(json_object_get(order, "certificate"));
    snprintf(cert_url, sizeof cert_url, "%s", cu ? cu : "");
    json_decref(order);
    struct acme_response res;
    if (!cert_url[0] || post(a, cert_url, "", &res, err, errlen) != 0) {
        if (!cert_url[0])
            snprintf(err, errlen, "the valid order names no certificate");
        EVP_PKEY_free(key);
        return -1;
    }
    int rc = -1;
    char *file = NULL;
    if (res.status != 200)
        ca_problem(&res, "certificate", err, errlen);
    else if (memchr(res.body, '\0', res.len))
        snprintf(err, errlen, "the CA's certificate chain holds a NUL byte");
    else if ((file = certificate_file(job, res.body, res.len, key, leaf, err, errlen))) {
        rc = install_file(s, job, file, err, errlen);
        OPENSSL_cleanse(file, strlen(file));
        free(file);
        if (rc != 0) {
            X509_free(*leaf);
            *leaf = NULL;
        }
    }
    acme_response_clear(&res);
    EVP_PKEY_free(key);
    return rc;
}

/* ---- the client ------------------------------------------------------------ */

struct acme_client *acme_client_new(const atomic_bool *stop, acme_pause_fn *pause, void *arg)
{
    struct acme_client *c = calloc(1, sizeof *c);
    if (c) {
        c->stop = stop;
        c->pause = pause;
        c->pause_arg = arg;
    }
    return c;
}

int acme_client_order(struct acme_client *c, const struct acme_settings *s,
                      const struct acme_job *job, X509 **leaf, char *err, size_t errlen)
{
    c->retry_after = 0;
    int rc = get_certificate(c, s, job, leaf, err, errlen);
    if (rc != 0) {
        /* The next order starts afresh: a new nonce, and the account looked
         * up again (the CA may have lost or deactivated it). */
        c->nonce[0] = '\0';
        c->kid[0] = '\0';
    }
    return rc;
}

unsigned acme_client_retry_after(const struct acme_client *c)
{
    return c->retry_after;
}

void acme_client_free(struct acme_client *c)
{
    if (!c)
        return;
    acme_http_free(c->http);
    free(c->http_ca);
    EVP_PKEY_free(c->account_key);
    free(c);
}
