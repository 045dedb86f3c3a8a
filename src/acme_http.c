#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "acme_http.h"

/* Seconds: to connect, and for a whole request. A slow CA delays only the
 * ACME thread, never a session. */
#define CONNECT_TIMEOUT 10L
#define REQUEST_TIMEOUT 30L

struct acme_http {
    CURL *curl;
    const atomic_bool *stop;
    char *ca;
};

struct transfer {
    struct acme_response *res;
    bool too_large;
};

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    struct transfer *t = arg;
    struct acme_response *res = t->res;
    size_t len = size * n;
    if (res->len + len > ACME_HTTP_MAX_BODY) {
        t->too_large = true;
        return 0; /* curl ends the transfer: CURLE_WRITE_ERROR */
    }
    char *grown = realloc(res->body, res->len + len + 1);
    if (!grown)
        return 0;
    memcpy(grown + res->len, data, len);
    res->body = grown;
    res->len += len;
    res->body[res->len] = '\0';
    return len;
}

/* Copies a header's value (trimmed) into out when its name is `name`. */
static void take_header(const char *line, size_t len, const char *name, char *out, size_t outlen)
{
    size_t nlen = strlen(name);
    if (len <= nlen || strncasecmp(line, name, nlen) != 0 || line[nlen] != ':')
        return;
    const char *v = line + nlen + 1;
    const char *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    size_t vlen = (size_t)(end - v);
    if (vlen < outlen) {
        memcpy(out, v, vlen);
        out[vlen] = '\0';
    }
}

static size_t on_header(char *data, size_t size, size_t n, void *arg)
{
    struct transfer *t = arg;
    struct acme_response *res = t->res;
    size_t len = size * n;
    take_header(data, len, "Replay-Nonce", res->nonce, sizeof res->nonce);
    take_header(data, len, "Location", res->location, sizeof res->location);
    take_header(data, len, "Content-Type", res->content_type, sizeof res->content_type);
    char retry[32] = "";
    take_header(data, len, "Retry-After", retry, sizeof retry);
    if (retry[0] && strspn(retry, "0123456789") == strlen(retry) && strlen(retry) < 9)
        res->retry_after = (unsigned)strtoul(retry, NULL, 10);
    return len;
}

static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    const struct acme_http *http = arg;
    return http->stop && atomic_load(http->stop) ? 1 : 0;
}

struct acme_http *acme_http_new(const char *ca, const atomic_bool *stop)
{
    struct acme_http *http = calloc(1, sizeof *http);
    if (!http)
        return NULL;
    http->stop = stop;
    if ((ca && !(http->ca = strdup(ca))) || !(http->curl = curl_easy_init())) {
        acme_http_free(http);
        return NULL;
    }
    return http;
}

void acme_http_free(struct acme_http *http)
{
    if (!http)
        return;
    if (http->curl)
        curl_easy_cleanup(http->curl);
    free(http->ca);
    free(http);
}

void acme_response_clear(struct acme_response *res)
{
    free(res->body);
    memset(res, 0, sizeof *res);
}

/* The options every request has: HTTPS only, verified, bounded. */
static void set_common(struct acme_http *http, const char *url, struct transfer *t)
{
    CURL *c = http->curl;
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, CONNECT_TIMEOUT);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, REQUEST_TIMEOUT);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    if (http->ca)
        curl_easy_setopt(c, CURLOPT_CAINFO, http->ca);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "sallyport-acme");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, http);
}

static int perform(struct acme_http *http, const char *url, struct transfer *t, char *err,
                   size_t errlen)
{
    struct acme_response *res = t->res;
    CURLcode rc = curl_easy_perform(http->curl);
    if (rc != CURLE_OK) {
        snprintf(err, errlen, "%.300s: %s", url,
                 t->too_large                      ? "response larger than 1 MiB"
                 : rc == CURLE_ABORTED_BY_CALLBACK ? "stopping"
                                                   : curl_easy_strerror(rc));
        acme_response_clear(res);
        return -1;
    }
    curl_easy_getinfo(http->curl, CURLINFO_RESPONSE_CODE, &res->status);
    if (!res->body && !(res->body = calloc(1, 1))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

int acme_http_get(struct acme_http *http, const char *url, bool head, struct acme_response *res,
                  char *err, size_t errlen)
{
    memset(res, 0, sizeof *res);
    struct transfer t = {.res = res};
    set_common(http, url, &t);
    if (head)
        curl_easy_setopt(http->curl, CURLOPT_NOBODY, 1L);
    return perform(http, url, &t, err, errlen);
}

int acme_http_post(struct acme_http *http, const char *url, const char *body,
                   struct acme_response *res, char *err, size_t errlen)
{
    memset(res, 0, sizeof *res);
    struct transfer t = {.res = res};
    set_common(http, url, &t);
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/jose+json");
    if (!headers) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    curl_easy_setopt(http->curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(http->curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(http->curl, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    int rc = perform(http, url, &t, err, errlen);
    curl_slist_free_all(headers);
    return rc;
}
