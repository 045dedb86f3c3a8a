#include <ctype.h>
#include <pthread.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "tls.h"

/* AEAD, forward-secret suites for TLS 1.2; TLS 1.3 suites are all fine. */
#define TLS12_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20"

#define STORE_MAX_NAMES 64

struct store_entry {
    SSL_CTX *ctx;
    char *names[STORE_MAX_NAMES];
    size_t nnames;
};

struct ticket_key {
    unsigned char name[16];
    unsigned char aes[32];  /* AES-256-CBC */
    unsigned char hmac[32]; /* HMAC-SHA256 */
};

struct tls_tickets {
    pthread_mutex_t lock;
    struct ticket_key keys[TLS_TICKET_KEYS]; /* [0] the newest */
};

struct tls_store {
    struct tls_tickets *tickets;
    struct store_entry *entries;
    size_t count;
    size_t default_index;
    tls_sni_check check;
    tls_alpn_check alpn_check;
};

/* Copies the first OpenSSL error (or `fallback`) into err and clears the queue. */
static void take_error(char *err, size_t errlen, const char *what, const char *path)
{
    unsigned long e = ERR_peek_error();
    const char *reason = e ? ERR_reason_error_string(e) : NULL;
    snprintf(err, errlen, "%s %s%s%s", what, path ? path : "", reason ? ": " : "",
             reason ? reason : "");
    ERR_clear_error();
}

static void apply_policy(SSL_CTX *ctx)
{
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS);
    SSL_CTX_set_read_ahead(ctx, 1);
}

/* OpenSSL fills a certificate's cache of its extensions (key ids, usage)
 * the first time a verification needs it, under the certificate's lock
 * but read by other threads without it. Filling it here, while one thread
 * alone holds the context, leaves the workers only reading. */
static void cache_extensions(X509 *cert)
{
    if (cert)
        (void)X509_check_purpose(cert, -1, 0);
}

static void cache_store_extensions(SSL_CTX *ctx)
{
    STACK_OF(X509_OBJECT) *objects = X509_STORE_get0_objects(SSL_CTX_get_cert_store(ctx));
    for (int i = 0; i < sk_X509_OBJECT_num(objects); i++)
        cache_extensions(X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objects, i)));
}

static void cache_chain_extensions(SSL_CTX *ctx)
{
    cache_extensions(SSL_CTX_get0_certificate(ctx));
    STACK_OF(X509) *chain = NULL;
    if (SSL_CTX_get0_chain_certs(ctx, &chain) == 1)
        for (int i = 0; i < sk_X509_num(chain); i++)
            cache_extensions(sk_X509_value(chain, i));
}

/* An encrypted key is refused: a daemon never prompts on a terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *arg)
{
    (void)buf, (void)size, (void)rwflag, (void)arg;
    return -1;
}

/* A server context with the policy, before its certificate. */
static SSL_CTX *server_ctx(char *err, size_t errlen)
{
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        take_error(err, errlen, "cannot create TLS context", NULL);
        return NULL;
    }
    apply_policy(ctx);
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
    return ctx;
}

SSL_CTX *tls_server_ctx_new(const char *cert_path, const char *key_path, char *err, size_t errlen)
{
    SSL_CTX *ctx = server_ctx(err, errlen);
    if (!ctx)
        return NULL;
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_path) != 1) {
        take_error(err, errlen, "cannot load certificate", cert_path);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_path, SSL_FILETYPE_PEM) != 1) {
        /* A key of the certificate's type but another pair fails here. */
        if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
            ERR_clear_error();
            snprintf(err, errlen, "key %s does not match certificate %s", key_path, cert_path);
        } else {
            take_error(err, errlen, "cannot load key", key_path);
        }
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "key %s does not match certificate %s", key_path, cert_path);
        goto fail;
    }
    cache_chain_extensions(ctx);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *tls_server_ctx_of(X509 *cert, EVP_PKEY *key, char *err, size_t errlen)
{
    SSL_CTX *ctx = server_ctx(err, errlen);
    if (!ctx)
        return NULL;
    if (SSL_CTX_use_certificate(ctx, cert) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        take_error(err, errlen, "cannot use certificate", NULL);
        SSL_CTX_free(ctx);
        return NULL;
    }
    cache_chain_extensions(ctx);
    return ctx;
}

SSL_CTX *tls_client_ctx_new(const char *ca_path, bool verify, char *err, size_t errlen)
{
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        take_error(err, errlen, "cannot create TLS context", NULL);
        return NULL;
    }
    apply_policy(ctx);
    if (verify) {
        int ok = ca_path ? SSL_CTX_load_verify_file(ctx, ca_path)
                         : SSL_CTX_set_default_verify_paths(ctx);
        if (ok != 1) {
            take_error(err, errlen, "cannot load CA file", ca_path ? ca_path : "(system)");
            SSL_CTX_free(ctx);
            return NULL;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        cache_store_extensions(ctx); /* a CA file's; the system's load as looked up */
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    return ctx;
}

static bool is_ip_literal(const char *name)
{
    ASN1_OCTET_STRING *ip = a2i_IPADDRESS(name);
    if (!ip) {
        ERR_clear_error();
        return false;
    }
    ASN1_OCTET_STRING_free(ip);
    return true;
}

SSL *tls_client_new(SSL_CTX *ctx, const char *name)
{
    SSL *ssl = SSL_new(ctx);
    if (!ssl)
        return NULL;
    bool ip = is_ip_literal(name);
    if (!ip)
        SSL_set_tlsext_host_name(ssl, name);
    if (SSL_CTX_get_verify_mode(ctx) & SSL_VERIFY_PEER) {
        X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (ip)
            X509_VERIFY_PARAM_set1_ip_asc(param, name);
        else
            X509_VERIFY_PARAM_set1_host(param, name, 0);
    }
    SSL_set_connect_state(ssl);
    return ssl;
}

static char *lowercase_dup(const char *s, size_t len)
{
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++)
        out[i] = (char)tolower((unsigned char)s[i]);
    out[len] = '\0';
    return out;
}

size_t tls_ctx_names(SSL_CTX *ctx, char **names, size_t max)
{
    X509 *cert = SSL_CTX_get0_certificate(ctx);
    size_t n = 0;
    if (!cert)
        return 0;
    GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans) && n < max; i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);
        if (gn->type != GEN_DNS)
            continue;
        const unsigned char *p = ASN1_STRING_get0_data(gn->d.dNSName);
        char *copy = lowercase_dup((const char *)p, (size_t)ASN1_STRING_length(gn->d.dNSName));
        if (copy)
            names[n++] = copy;
    }
    GENERAL_NAMES_free(sans);
    if (n == 0 && max > 0) {
        char cn[256];
        X509_NAME *subject = X509_get_subject_name(cert);
        int len = X509_NAME_get_text_by_NID(subject, NID_commonName, cn, sizeof cn);
        if (len > 0) {
            char *copy = lowercase_dup(cn, (size_t)len);
            if (copy)
                names[n++] = copy;
        }
    }
    ERR_clear_error();
    return n;
}

bool tls_name_matches(const char *pattern, const char *name)
{
    if (strcasecmp(pattern, name) == 0)
        return true;
    if (pattern[0] != '*' || pattern[1] != '.')
        return false;
    const char *dot = strchr(name, '.');
    /* The wildcard covers exactly one non-empty leftmost label. */
    return dot && dot != name && strcasecmp(pattern + 1, dot) == 0;
}

/* Which SSL_CTX ex_data slot holds a context's tls_tickets. */
static int tickets_index = -1;
static pthread_once_t tickets_index_once = PTHREAD_ONCE_INIT;

static void make_tickets_index(void)
{
    tickets_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static int fresh_key(struct ticket_key *key)
{
    return RAND_bytes(key->name, sizeof key->name) == 1 &&
                   RAND_priv_bytes(key->aes, sizeof key->aes) == 1 &&
                   RAND_priv_bytes(key->hmac, sizeof key->hmac) == 1
               ? 0
               : -1;
}

struct tls_tickets *tls_tickets_new(void)
{
    pthread_once(&tickets_index_once, make_tickets_index);
    struct tls_tickets *t = calloc(1, sizeof *t);
    if (!t || tickets_index < 0)
        goto fail;
    for (int i = 0; i < TLS_TICKET_KEYS; i++) {
        if (fresh_key(&t->keys[i]) < 0)
            goto fail;
    }
    pthread_mutex_init(&t->lock, NULL);
    return t;
fail:
    free(t);
    ERR_clear_error();
    return NULL;
}

int tls_tickets_rotate(struct tls_tickets *t)
{
    struct ticket_key key;
    if (fresh_key(&key) < 0) {
        ERR_clear_error();
        return -1;
    }
    pthread_mutex_lock(&t->lock);
    memmove(&t->keys[1], &t->keys[0], (TLS_TICKET_KEYS - 1) * sizeof t->keys[0]);
    t->keys[0] = key;
    pthread_mutex_unlock(&t->lock);
    OPENSSL_cleanse(&key, sizeof key);
    return 0;
}

void tls_tickets_free(struct tls_tickets *t)
{
    if (!t)
        return;
    pthread_mutex_destroy(&t->lock);
    OPENSSL_cleanse(t->keys, sizeof t->keys);
    free(t);
}

/* OpenSSL's ticket callback (SSL_CTX_set_tlsext_ticket_key_evp_cb): seal
 * with the newest key; open with whichever key the ticket names, asking
 * for a new ticket when it is not the newest. */
static int on_ticket_key(SSL *ssl, unsigned char name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
                         EVP_CIPHER_CTX *cipher, EVP_MAC_CTX *mac, int seal)
{
    struct tls_tickets *t = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), tickets_index);
    if (!t)
        return -1;
    int found = -1, rc = -1;
    pthread_mutex_lock(&t->lock);
    if (seal) {
        found = 0;
        memcpy(name, t->keys[0].name, sizeof t->keys[0].name);
        if (RAND_bytes(iv, 16) != 1)
            goto out;
    } else {
        for (int i = 0; i < TLS_TICKET_KEYS && found < 0; i++) {
            if (memcmp(name, t->keys[i].name, sizeof t->keys[i].name) == 0)
                found = i;
        }
        if (found < 0) {
            rc = 0; /* an unknown key: a full handshake */
            goto out;
        }
    }
    const struct ticket_key *key = &t->keys[found];
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)key->hmac, sizeof key->hmac),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    if (EVP_MAC_CTX_set_params(mac, params) != 1)
        goto out;
    int ok = seal ? EVP_EncryptInit_ex(cipher, EVP_aes_256_cbc(), NULL, key->aes, iv)
                  : EVP_DecryptInit_ex(cipher, EVP_aes_256_cbc(), NULL, key->aes, iv);
    if (ok == 1)
        rc = found == 0 ? 1 : 2;
out:
    pthread_mutex_unlock(&t->lock);
    return rc;
}

void tls_ctx_use_tickets(SSL_CTX *ctx, struct tls_tickets *tickets)
{
    SSL_CTX_set_ex_data(ctx, tickets_index, tickets);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, on_ticket_key);
}

struct tls_store *tls_store_new(struct tls_tickets *tickets)
{
    struct tls_store *store = calloc(1, sizeof(struct tls_store));
    if (store)
        store->tickets = tickets;
    return store;
}

/* Picks the entry for `sni`: an exact SAN match first, then a wildcard SAN,
 * then the default. */
static SSL_CTX *store_pick(const struct tls_store *store, const char *sni)
{
    if (sni) {
        for (int pass = 0; pass < 2; pass++) {
            for (size_t i = 0; i < store->count; i++) {
                const struct store_entry *e = &store->entries[i];
                for (size_t j = 0; j < e->nnames; j++) {
                    bool wildcard = e->names[j][0] == '*';
                    if (wildcard != (pass == 1))
                        continue;
                    if (tls_name_matches(e->names[j], sni))
                        return e->ctx;
                }
            }
        }
    }
    return store->entries[store->default_index].ctx;
}

static int on_servername(SSL *ssl, int *alert, void *arg)
{
    struct tls_store *store = arg;
    const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (store->check && !store->check(tls_app(ssl), sni)) {
        *alert = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    SSL_CTX *ctx = store_pick(store, sni);
    if (ctx != SSL_get_SSL_CTX(ssl))
        SSL_set_SSL_CTX(ssl, ctx);
    return SSL_TLSEXT_ERR_OK;
}

int tls_alpn_find(const unsigned char *list, unsigned len, const char *name)
{
    size_t want = strlen(name);
    for (unsigned i = 0; i < len;) {
        unsigned n = list[i];
        if (n == 0 || n > len - i - 1)
            return -1;
        if (n == want && memcmp(list + i + 1, name, n) == 0)
            return (int)i;
        i += 1 + n;
    }
    return -1;
}

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned inlen, void *arg)
{
    struct tls_store *store = arg;
    if (!store->alpn_check)
        return SSL_TLSEXT_ERR_NOACK;
    int at = store->alpn_check(tls_app(ssl), in, inlen);
    if (at < 0)
        return SSL_TLSEXT_ERR_ALERT_FATAL; /* OpenSSL sends no_application_protocol */
    *out = in + at + 1;
    *outlen = in[at];
    return SSL_TLSEXT_ERR_OK;
}

/* The tls-alpn-01 handshake selects acme-tls/1, or fails (RFC 8737 4). */
static int on_acme_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                        const unsigned char *in, unsigned inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    int at = tls_alpn_find(in, inlen, TLS_ACME_ALPN);
    if (at < 0)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = in + at + 1;
    *outlen = in[at];
    return SSL_TLSEXT_ERR_OK;
}

SSL_CTX *tls_acme_ctx_new(X509 *cert, EVP_PKEY *key, char *err, size_t errlen)
{
    SSL_CTX *ctx = tls_server_ctx_of(cert, key, err, errlen);
    if (ctx) {
        SSL_CTX_set_alpn_select_cb(ctx, on_acme_alpn, NULL);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    }
    return ctx;
}

SSL *tls_acme_accept(SSL_CTX *ctx)
{
    SSL *ssl = SSL_new(ctx);
    if (ssl)
        SSL_set_accept_state(ssl);
    return ssl;
}

bool tls_store_add(struct tls_store *store, SSL_CTX *ctx, bool is_default)
{
    struct store_entry *grown = realloc(store->entries, (store->count + 1) * sizeof *grown);
    if (!grown)
        return false;
    store->entries = grown;
    struct store_entry *e = &store->entries[store->count];
    e->ctx = ctx;
    e->nnames = tls_ctx_names(ctx, e->names, STORE_MAX_NAMES);
    SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
    SSL_CTX_set_tlsext_servername_arg(ctx, store);
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, store);
    if (store->tickets)
        tls_ctx_use_tickets(ctx, store->tickets);
    if (is_default)
        store->default_index = store->count;
    store->count++;
    return true;
}

void tls_store_set_sni_check(struct tls_store *store, tls_sni_check check)
{
    store->check = check;
}

void tls_store_set_alpn_check(struct tls_store *store, tls_alpn_check check)
{
    store->alpn_check = check;
}

bool tls_store_ready(const struct tls_store *store)
{
    return store && store->count > 0;
}

SSL *tls_store_accept(struct tls_store *store, void *app)
{
    SSL *ssl = SSL_new(store->entries[store->default_index].ctx);
    if (!ssl)
        return NULL;
    SSL_set_app_data(ssl, app);
    SSL_set_accept_state(ssl);
    return ssl;
}

void *tls_app(SSL *ssl)
{
    return SSL_get_app_data(ssl);
}

void tls_store_free(struct tls_store *store)
{
    if (!store)
        return;
    for (size_t i = 0; i < store->count; i++) {
        for (size_t j = 0; j < store->entries[i].nnames; j++)
            free(store->entries[i].names[j]);
        SSL_CTX_free(store->entries[i].ctx);
    }
    free(store->entries);
    free(store);
}
