/* maildir — delivery into a Maildir (https://cr.yp.to/proto/maildir.html).
 *
 * One message is streamed: maildir_open() creates a uniquely named file in
 * tmp/, maildir_write() appends chunks as they arrive (a large message is
 * never held in memory), and maildir_commit() makes it durable: fsync the
 * file, rename it into new/ (never replacing a file), fsync new/. Only after
 * commit has returned 0 may the message be acknowledged. maildir_abort()
 * removes the tmp/ file. Single-threaded: the unique-name counter is static. */
#ifndef SALLYPORT_MAILDIR_H
#define SALLYPORT_MAILDIR_H

#include <stdbool.h>
#include <stddef.h>

/* Longest unique file name, NUL included. */
#define MAILDIR_NAME_MAX 256

struct maildir_delivery {
    int fd;                      /* the tmp/ file, -1 when no delivery is open */
    int error;                   /* errno of the first failed write, 0 if none */
    size_t bytes;                /* bytes written so far */
    const char *dir;             /* the Maildir (borrowed for the delivery's life) */
    char name[MAILDIR_NAME_MAX]; /* "time.MusecPpidQcounterRrandom.host" */
};

/* Creates the Maildir `dir` (and its parents, like mkdir -p) and tmp/ new/
 * cur/ in it, mode 0700, when missing. Returns 0, or -1 with the reason in err. */
int maildir_create(const char *dir, char *err, size_t errlen);

/* Marks `d` as holding no delivery, so that maildir_abort() is a no-op. */
void maildir_init(struct maildir_delivery *d);

/* Starts a delivery into `dir` (which must outlive it): creates a new, unique
 * file in dir/tmp/. `hostname` goes into the name (with "/" and ":" escaped as
 * the Maildir spec asks). Returns 0, or -1 with the reason in err. */
int maildir_open(struct maildir_delivery *d, const char *dir, const char *hostname, char *err,
                 size_t errlen);

/* Appends `len` bytes. A failure is remembered in d->error (and later writes
 * are skipped) so that commit reports it once, at the end of the message. */
void maildir_write(struct maildir_delivery *d, const void *bytes, size_t len);

/* Finishes the delivery: fsync, rename tmp/NAME to new/NAME, fsync new/.
 * Returns 0 and the final path in `path` (d->name keeps the file name); or -1
 * with the reason in err, in which case nothing is left in tmp/ nor new/.
 * Either way `d` holds no open delivery afterwards. */
int maildir_commit(struct maildir_delivery *d, char *path, size_t pathlen, char *err,
                   size_t errlen);

/* Drops the delivery, removing its tmp/ file. Safe when none is open. */
void maildir_abort(struct maildir_delivery *d);

#endif
