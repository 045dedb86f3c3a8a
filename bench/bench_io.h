/* bench_io — one read and one write over a raw or TLS socket, shared by
 * benchd.c and loadgen.c. Both return >0 bytes, 0 on EOF (read only), -1
 * when the call would block (*ev set to the EV_READ/EV_WRITE to wait for),
 * or -2 on an error. */
#ifndef BENCH_IO_H
#define BENCH_IO_H

#include <errno.h>
#include <ev.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <sys/types.h>

static inline ssize_t io_ssl_result(SSL *ssl, int n, int *ev)
{
    switch (SSL_get_error(ssl, n)) {
    case SSL_ERROR_WANT_READ:
        *ev = EV_READ;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        *ev = EV_WRITE;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        if (errno == 0) /* EOF without close_notify */
            return 0;
        /* fall through */
    default:
        ERR_clear_error();
        return -2;
    }
}

static inline ssize_t io_read(int fd, SSL *ssl, void *buf, size_t len, int *ev)
{
    if (!ssl) {
        ssize_t n = recv(fd, buf, len, 0);
        if (n >= 0)
            return n;
        *ev = EV_READ;
        return errno == EAGAIN || errno == EINTR ? -1 : -2;
    }
    errno = 0;
    int n = SSL_read(ssl, buf, (int)len);
    return n > 0 ? n : io_ssl_result(ssl, n, ev);
}

static inline ssize_t io_write(int fd, SSL *ssl, const void *buf, size_t len, int *ev)
{
    if (!ssl) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        *ev = EV_WRITE;
        return errno == EAGAIN || errno == EINTR ? -1 : -2;
    }
    errno = 0;
    int n = SSL_write(ssl, buf, (int)len);
    if (n > 0)
        return n;
    ssize_t r = io_ssl_result(ssl, n, ev);
    return r == 0 ? -2 : r; /* a write never ends in EOF */
}

#endif
