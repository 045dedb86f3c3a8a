#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "maildir.h"

/* Deliveries of this process, in every worker: part of each unique name. */
static atomic_ulong delivery_counter;

/* mkdir that accepts an existing directory. Returns 0 or -1 with errno. */
static int make_dir(const char *path)
{
    if (mkdir(path, 0700) == 0)
        return 0;
    int saved = errno;
    struct stat st;
    if (saved == EEXIST && stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode))
            return 0;
        errno = ENOTDIR;
        return -1;
    }
    errno = saved;
    return -1;
}

int maildir_create(const char *dir, char *err, size_t errlen)
{
    char path[PATH_MAX];
    size_t len = strlen(dir);
    if (len == 0 || len + sizeof "/tmp" > sizeof path) {
        snprintf(err, errlen, "bad maildir path '%s'", dir);
        return -1;
    }
    memcpy(path, dir, len + 1);
    /* Parents first, like mkdir -p. */
    for (size_t i = 1; i < len; i++) {
        if (path[i] != '/')
            continue;
        path[i] = '\0';
        if (make_dir(path) < 0) {
            snprintf(err, errlen, "cannot create %s: %s", path, strerror(errno));
            return -1;
        }
        path[i] = '/';
    }
    static const char *const subdirs[] = {"", "/tmp", "/new", "/cur"};
    for (size_t i = 0; i < sizeof subdirs / sizeof subdirs[0]; i++) {
        snprintf(path, sizeof path, "%s%s", dir, subdirs[i]);
        if (make_dir(path) < 0) {
            snprintf(err, errlen, "cannot create %s: %s", path, strerror(errno));
            return -1;
        }
    }
    return 0;
}

void maildir_init(struct maildir_delivery *d)
{
    d->fd = -1;
    d->error = 0;
    d->bytes = 0;
    d->dir = NULL;
    d->name[0] = '\0';
}

/* Writes the host name as the Maildir spec wants it in a file name: "/" as
 * "\057", ":" as "\072"; other unsafe bytes also as octal escapes. */
static void escape_host(char *out, size_t outsz, const char *host)
{
    size_t o = 0;
    for (; *host && o + 5 < outsz; host++) {
        unsigned char c = (unsigned char)*host;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '.' || c == '-' || c == '_') {
            out[o++] = (char)c;
        } else {
            o += (size_t)snprintf(out + o, outsz - o, "\\%03o", c);
        }
    }
    out[o] = '\0';
}

/* Path of `name` in subdirectory `sub` of the delivery's Maildir. Returns
 * false if it does not fit. */
static bool delivery_path(const struct maildir_delivery *d, const char *sub, char *out,
                          size_t outsz)
{
    int n = snprintf(out, outsz, "%s/%s/%s", d->dir, sub, d->name);
    return n > 0 && (size_t)n < outsz;
}

int maildir_open(struct maildir_delivery *d, const char *dir, const char *hostname, char *err,
                 size_t errlen)
{
    char host[128];
    char tmp[PATH_MAX];
    escape_host(host, sizeof host, hostname && hostname[0] ? hostname : "localhost");
    maildir_init(d);
    d->dir = dir;

    for (int attempt = 0; attempt < 8; attempt++) {
        struct timeval tv;
        unsigned long long rnd = 0;
        gettimeofday(&tv, NULL);
        if (getrandom(&rnd, sizeof rnd, GRND_NONBLOCK) != (ssize_t)sizeof rnd)
            rnd = (unsigned long long)tv.tv_usec * 2654435761ULL ^ (unsigned long long)tv.tv_sec;
        unsigned long count = atomic_fetch_add(&delivery_counter, 1) + 1;
        int n = snprintf(d->name, sizeof d->name, "%lld.M%06ldP%ldQ%luR%016llx.%s",
                         (long long)tv.tv_sec, (long)tv.tv_usec, (long)getpid(), count, rnd, host);
        if (n < 0 || (size_t)n >= sizeof d->name || !delivery_path(d, "tmp", tmp, sizeof tmp)) {
            snprintf(err, errlen, "maildir path too long in %s", dir);
            return -1;
        }
        d->fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (d->fd >= 0)
            return 0;
        if (errno != EEXIST)
            break;
    }
    snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
    maildir_init(d);
    return -1;
}

void maildir_write(struct maildir_delivery *d, const void *bytes, size_t len)
{
    const char *p = bytes;
    if (d->fd < 0 || d->error)
        return;
    while (len > 0) {
        ssize_t n = write(d->fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            d->error = n < 0 ? errno : EIO;
            return;
        }
        p += n;
        len -= (size_t)n;
        d->bytes += (size_t)n;
    }
}

void maildir_abort(struct maildir_delivery *d)
{
    char tmp[PATH_MAX];
    if (d->fd < 0)
        return;
    int saved = errno;
    close(d->fd);
    if (delivery_path(d, "tmp", tmp, sizeof tmp))
        unlink(tmp);
    maildir_init(d);
    errno = saved;
}

/* fsyncs a directory so that a rename into it survives a crash. */
static int sync_dir(const char *dir, const char *sub)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, sub);
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

/* Renames without ever replacing an existing file. */
static int rename_new(const char *from, const char *to)
{
    if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno != EINVAL && errno != ENOSYS)
        return -1;
    /* The file system cannot do RENAME_NOREPLACE: link(2) never replaces either. */
    if (link(from, to) < 0)
        return -1;
    unlink(from);
    return 0;
}

int maildir_commit(struct maildir_delivery *d, char *path, size_t pathlen, char *err, size_t errlen)
{
    char tmp[PATH_MAX], final[PATH_MAX];
    if (d->fd < 0) {
        snprintf(err, errlen, "no delivery open");
        return -1;
    }
    if (d->error) {
        snprintf(err, errlen, "write failed: %s", strerror(d->error));
        goto fail;
    }
    if (fsync(d->fd) < 0) {
        snprintf(err, errlen, "fsync failed: %s", strerror(errno));
        goto fail;
    }
    delivery_path(d, "tmp", tmp, sizeof tmp);
    if (!delivery_path(d, "new", final, sizeof final)) {
        snprintf(err, errlen, "maildir path too long");
        goto fail;
    }
    int fd = d->fd;
    d->fd = -1;
    if (close(fd) < 0) {
        snprintf(err, errlen, "close failed: %s", strerror(errno));
        unlink(tmp);
        maildir_init(d);
        return -1;
    }
    if (rename_new(tmp, final) < 0) {
        snprintf(err, errlen, "cannot rename into new/: %s", strerror(errno));
        unlink(tmp);
        maildir_init(d);
        return -1;
    }
    if (sync_dir(d->dir, "new") < 0) {
        /* Not durable, so not accepted: take it back rather than risk a loss. */
        snprintf(err, errlen, "fsync of new/ failed: %s", strerror(errno));
        unlink(final);
        maildir_init(d);
        return -1;
    }
    snprintf(path, pathlen, "%s", final);
    return 0; /* d->fd is -1; d->name still names the file */
fail:
    maildir_abort(d);
    return -1;
}
