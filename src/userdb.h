/* userdb — the mailbox's users file: "name:crypt-hash" lines ("#" comments
 * and blank lines skipped), read once at start-up, checked with crypt_rn()
 * from libxcrypt. Hashes come from `openssl passwd -6`, mkpasswd, etc. */
#ifndef SALLYPORT_USERDB_H
#define SALLYPORT_USERDB_H

#include <stdbool.h>
#include <stddef.h>

/* Longest user name, NUL included. */
#define USERDB_NAME_MAX 256

struct userdb;

/* Reads `path`. Returns the database (possibly with no users), or NULL with
 * the reason in err ("users:3: expected name:crypt-hash"). */
struct userdb *userdb_load(const char *path, char *err, size_t errlen);

/* Number of users read. */
size_t userdb_count(const struct userdb *db);

/* True if `password` is the password of `name`. The hash is compared in
 * constant time, and an unknown name still costs one crypt (against the
 * first user's hash), so timing tells nothing about which names exist. */
bool userdb_check(struct userdb *db, const char *name, const char *password);

/* Frees the database, wiping the hashes. NULL is fine. */
void userdb_free(struct userdb *db);

#endif
