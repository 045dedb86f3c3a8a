#include <errno.h>
#include <openssl/err.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"

/* The reason of this thread's last CONN_ERROR (see conn_error()). */
static _Thread_local char last_error[160];
/* ... and its OpenSSL reason code, or -1 when the peer closed or the
 * socket failed, 0 when unknown (see conn_error_reason()). */
static _Thread_local int last_reason;

void conn_init(struct conn *c, int fd)
{
    c->fd = fd;
    c->ssl = NULL;
}

void conn_start_tls(struct conn *c, SSL *ssl)
{
    c->ssl = ssl;
    SSL_set_fd(ssl, c->fd);
}

/* ---- the replay BIO: bytes already read, then the socket ----------------
 *
 * A filter BIO on top of the socket BIO. Reads return the bytes sallyport
 * read before TLS started (the ClientHello it routed by) and then whatever
 * the socket gives; writes, retries and every control go to the socket
 * (so SSL_get_fd() still works). */

struct replay {
    size_t len, pos;
    unsigned char bytes[]; /* len bytes */
};

static int replay_read(BIO *b, char *out, int outl)
{
    struct replay *r = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (r && r->pos < r->len) {
        size_t n = r->len - r->pos < (size_t)outl ? r->len - r->pos : (size_t)outl;
        memcpy(out, r->bytes + r->pos, n);
        r->pos += n;
        return (int)n;
    }
    int ret = BIO_read(BIO_next(b), out, outl);
    BIO_copy_next_retry(b);
    return ret;
}

static int replay_write(BIO *b, const char *in, int inl)
{
    BIO_clear_retry_flags(b);
    int ret = BIO_write(BIO_next(b), in, inl);
    BIO_copy_next_retry(b);
    return ret;
}

static long replay_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    struct replay *r = BIO_get_data(b);
    long own = r ? (long)(r->len - r->pos) : 0;
    if (cmd == BIO_CTRL_PENDING)
        return own + BIO_ctrl(BIO_next(b), cmd, num, ptr);
    if (cmd == BIO_CTRL_EOF && own > 0)
        return 0;
    return BIO_ctrl(BIO_next(b), cmd, num, ptr);
}

static int replay_create(BIO *b)
{
    BIO_set_data(b, NULL);
    BIO_set_init(b, 1);
    return 1;
}

static int replay_destroy(BIO *b)
{
    free(BIO_get_data(b));
    BIO_set_data(b, NULL);
    return 1;
}

static BIO_METHOD *replay_method;
static pthread_once_t replay_once = PTHREAD_ONCE_INIT;

static void replay_method_init(void)
{
    int index = BIO_get_new_index();
    BIO_METHOD *m = index < 0 ? NULL : BIO_meth_new(index | BIO_TYPE_FILTER, "sallyport replay");
    if (m && BIO_meth_set_read(m, replay_read) && BIO_meth_set_write(m, replay_write) &&
        BIO_meth_set_ctrl(m, replay_ctrl) && BIO_meth_set_create(m, replay_create) &&
        BIO_meth_set_destroy(m, replay_destroy)) {
        replay_method = m;
        return;
    }
    BIO_meth_free(m);
}

bool conn_start_tls_replay(struct conn *c, SSL *ssl, const void *bytes, size_t len)
{
    pthread_once(&replay_once, replay_method_init);
    struct replay *r = malloc(sizeof *r + len);
    BIO *filter = replay_method ? BIO_new(replay_method) : NULL;
    BIO *sock = BIO_new_socket(c->fd, BIO_NOCLOSE);
    if (!r || !filter || !sock) {
        free(r);
        BIO_free(filter);
        BIO_free(sock);
        SSL_free(ssl);
        return false;
    }
    r->len = len;
    r->pos = 0;
    memcpy(r->bytes, bytes, len);
    BIO_set_data(filter, r);
    BIO_push(filter, sock);
    SSL_set_bio(ssl, filter, filter); /* one reference; SSL_free() frees the chain */
    c->ssl = ssl;
    return true;
}

/* Records the OpenSSL error queue (or errno) as the last error text. */
static void record_ssl_error(int ssl_err)
{
    unsigned long e = ERR_peek_last_error();
    last_reason = e != 0 ? ERR_GET_REASON(e) : ssl_err == SSL_ERROR_SYSCALL ? -1 : 0;
    if (e != 0) {
        char text[120];
        ERR_error_string_n(e, text, sizeof text);
        const char *reason = ERR_reason_error_string(e);
        snprintf(last_error, sizeof last_error, "%s", reason ? reason : text);
    } else if (ssl_err == SSL_ERROR_SYSCALL && errno != 0) {
        snprintf(last_error, sizeof last_error, "%s", strerror(errno));
    } else if (ssl_err == SSL_ERROR_SYSCALL) {
        snprintf(last_error, sizeof last_error, "unexpected EOF");
    } else {
        snprintf(last_error, sizeof last_error, "TLS error %d", ssl_err);
    }
    ERR_clear_error();
}

/* Maps SSL_get_error() to a conn_result: the single place that does so. */
static int map_ssl_result(struct conn *c, int ret)
{
    int err = SSL_get_error(c->ssl, ret);
    switch (err) {
    case SSL_ERROR_WANT_READ:
        return CONN_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return CONN_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        return CONN_EOF;
    default:
        record_ssl_error(err);
        return CONN_ERROR;
    }
}

ssize_t conn_read(struct conn *c, void *buf, size_t len)
{
    if (c->ssl) {
        ERR_clear_error();
        errno = 0;
        size_t got = 0;
        int ret = SSL_read_ex(c->ssl, buf, len, &got);
        if (ret == 1)
            return (ssize_t)got;
        return map_ssl_result(c, ret);
    }
    for (;;) {
        ssize_t n = recv(c->fd, buf, len, 0);
        if (n > 0)
            return n;
        if (n == 0)
            return CONN_EOF;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return CONN_WANT_READ;
        snprintf(last_error, sizeof last_error, "%s", strerror(errno));
        return CONN_ERROR;
    }
}

ssize_t conn_write(struct conn *c, const void *buf, size_t len)
{
    if (c->ssl) {
        ERR_clear_error();
        errno = 0;
        size_t put = 0;
        int ret = SSL_write_ex(c->ssl, buf, len, &put);
        if (ret == 1)
            return (ssize_t)put;
        return map_ssl_result(c, ret);
    }
    for (;;) {
        ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
        if (n >= 0)
            return n > 0 ? n : CONN_WANT_WRITE;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return CONN_WANT_WRITE;
        snprintf(last_error, sizeof last_error, "%s", strerror(errno));
        return CONN_ERROR;
    }
}

int conn_handshake(struct conn *c)
{
    ERR_clear_error();
    errno = 0;
    int ret = SSL_do_handshake(c->ssl);
    if (ret == 1)
        return CONN_DONE;
    int r = map_ssl_result(c, ret);
    if (r == CONN_EOF) {
        snprintf(last_error, sizeof last_error, "peer closed during handshake");
        last_reason = -1;
        return CONN_ERROR;
    }
    return r;
}

bool conn_pending(const struct conn *c)
{
    return c->ssl && SSL_has_pending(c->ssl);
}

void conn_shutdown_write(struct conn *c)
{
    if (c->ssl) {
        ERR_clear_error();
        if (SSL_is_init_finished(c->ssl))
            SSL_shutdown(c->ssl); /* best effort close_notify; never waits */
        ERR_clear_error();
    }
    if (c->fd >= 0)
        shutdown(c->fd, SHUT_WR);
}

void conn_close(struct conn *c)
{
    if (c->ssl) {
        ERR_clear_error();
        if (SSL_is_init_finished(c->ssl) && !(SSL_get_shutdown(c->ssl) & SSL_SENT_SHUTDOWN))
            SSL_shutdown(c->ssl); /* best effort close_notify; never waits */
        SSL_free(c->ssl);
        c->ssl = NULL;
        ERR_clear_error();
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}

void conn_handshake_failure(const struct conn *c, const char *who, char *out, size_t len)
{
    long verify = c->ssl ? SSL_get_verify_result(c->ssl) : X509_V_OK;
    if (verify != X509_V_OK)
        snprintf(out, len, "%scertificate rejected: %s", who,
                 X509_verify_cert_error_string(verify));
    else
        snprintf(out, len, "%sTLS handshake failed: %s", who, conn_error());
}

int conn_error_reason(void)
{
    return last_reason;
}

const char *conn_error(void)
{
    return last_error[0] ? last_error : "unknown error";
}
