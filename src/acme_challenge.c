#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "acme_challenge.h"

enum kind { KIND_FREE, KIND_ALPN, KIND_HTTP };

struct answer {
    enum kind kind;
    char key[256]; /* the name (tls-alpn-01) or the token (http-01) */
    SSL_CTX *ctx;  /* tls-alpn-01 */
    char key_authorization[256];
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct answer answers[ACME_CHALLENGE_MAX];

/* Names compare case-insensitively, tokens (base64url) exactly. */
static bool same_key(const struct answer *a, const char *key)
{
    return a->kind == KIND_ALPN ? strcasecmp(a->key, key) == 0 : strcmp(a->key, key) == 0;
}

/* The slot of `key` of `kind`, else a free slot (*found false), else NULL.
 * Called with the lock held. */
static struct answer *slot_for(enum kind kind, const char *key, bool *found)
{
    struct answer *free_slot = NULL;
    for (size_t i = 0; i < ACME_CHALLENGE_MAX; i++) {
        struct answer *a = &answers[i];
        if (a->kind == kind && same_key(a, key)) {
            *found = true;
            return a;
        }
        if (a->kind == KIND_FREE && !free_slot)
            free_slot = a;
    }
    *found = false;
    return free_slot;
}

static void clear(struct answer *a)
{
    SSL_CTX_free(a->ctx);
    memset(a, 0, sizeof *a);
}

bool acme_challenge_put_alpn(const char *name, SSL_CTX *ctx)
{
    if (strlen(name) >= sizeof answers[0].key)
        return false;
    pthread_mutex_lock(&lock);
    bool found;
    struct answer *a = slot_for(KIND_ALPN, name, &found);
    if (a) {
        clear(a);
        a->kind = KIND_ALPN;
        snprintf(a->key, sizeof a->key, "%s", name);
        SSL_CTX_up_ref(ctx);
        a->ctx = ctx;
    }
    pthread_mutex_unlock(&lock);
    return a != NULL;
}

bool acme_challenge_put_http(const char *token, const char *key_authorization)
{
    if (strlen(token) >= sizeof answers[0].key ||
        strlen(key_authorization) >= sizeof answers[0].key_authorization)
        return false;
    pthread_mutex_lock(&lock);
    bool found;
    struct answer *a = slot_for(KIND_HTTP, token, &found);
    if (a) {
        clear(a);
        a->kind = KIND_HTTP;
        snprintf(a->key, sizeof a->key, "%s", token);
        snprintf(a->key_authorization, sizeof a->key_authorization, "%s", key_authorization);
    }
    pthread_mutex_unlock(&lock);
    return a != NULL;
}

void acme_challenge_remove(const char *name_or_token)
{
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < ACME_CHALLENGE_MAX; i++) {
        if (answers[i].kind != KIND_FREE && same_key(&answers[i], name_or_token))
            clear(&answers[i]);
    }
    pthread_mutex_unlock(&lock);
}

SSL_CTX *acme_challenge_alpn(const char *name)
{
    SSL_CTX *ctx = NULL;
    pthread_mutex_lock(&lock);
    bool found;
    struct answer *a = slot_for(KIND_ALPN, name, &found);
    if (found) {
        SSL_CTX_up_ref(a->ctx);
        ctx = a->ctx;
    }
    pthread_mutex_unlock(&lock);
    return ctx;
}

bool acme_challenge_http(const char *token, char *out, size_t outlen)
{
    pthread_mutex_lock(&lock);
    bool found;
    struct answer *a = slot_for(KIND_HTTP, token, &found);
    bool ok = found && strlen(a->key_authorization) < outlen;
    if (ok)
        snprintf(out, outlen, "%s", a->key_authorization);
    pthread_mutex_unlock(&lock);
    return ok;
}

void acme_challenge_page(void *arg, const char *target, struct httpd_reply *reply)
{
    static const char prefix[] = "/.well-known/acme-challenge/";
    static const char token_chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                      "0123456789-_";
    (void)arg;
    char answer[256];
    const char *token = target + sizeof prefix - 1;
    if (strncmp(target, prefix, sizeof prefix - 1) != 0 || !token[0] ||
        strspn(token, token_chars) != strlen(token) ||
        !acme_challenge_http(token, answer, sizeof answer) || !(reply->body = strdup(answer))) {
        reply->status = "404 Not Found";
        return;
    }
    reply->len = strlen(answer);
    reply->type = "application/octet-stream";
}

size_t acme_challenge_count(void)
{
    size_t n = 0;
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < ACME_CHALLENGE_MAX; i++)
        n += answers[i].kind != KIND_FREE;
    pthread_mutex_unlock(&lock);
    return n;
}
