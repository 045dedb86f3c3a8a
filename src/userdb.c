#include <crypt.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "userdb.h"

#define USERS_LINE_MAX 1024
/* A valid SHA-512 crypt setting, used only when the file lists nobody. */
#define DUMMY_SETTING "$6$sallyportdummy$"

struct userdb_entry {
    char *name;
    char *hash;
};

struct userdb {
    struct userdb_entry *users;
    size_t count;
    struct crypt_data scratch; /* crypt_rn work area (~32 KiB), wiped after use */
};

/* Adds one user; returns false when out of memory. */
static bool add_user(struct userdb *db, const char *name, const char *hash)
{
    struct userdb_entry *grown = realloc(db->users, (db->count + 1) * sizeof *grown);
    if (!grown)
        return false;
    db->users = grown;
    char *n = strdup(name), *h = strdup(hash);
    if (!n || !h) {
        free(n);
        free(h);
        return false;
    }
    grown[db->count].name = n;
    grown[db->count].hash = h;
    db->count++;
    return true;
}

struct userdb *userdb_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot read users file %s: %s", path, strerror(errno));
        return NULL;
    }
    char line[USERS_LINE_MAX];
    int lineno = 0;
    struct userdb *db = calloc(1, sizeof *db);
    if (!db)
        goto nomem;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        size_t len = strlen(line);
        if (len == sizeof line - 1 && line[len - 1] != '\n') {
            snprintf(err, errlen, "%s:%d: line too long", path, lineno);
            goto fail;
        }
        while (len > 0 && strchr(" \t\r\n", line[len - 1]))
            line[--len] = '\0';
        char *name = line + strspn(line, " \t");
        if (*name == '\0' || *name == '#')
            continue;
        char *colon = strchr(name, ':');
        if (!colon || colon == name || colon[1] == '\0' || colon - name >= USERDB_NAME_MAX) {
            snprintf(err, errlen, "%s:%d: expected name:crypt-hash", path, lineno);
            goto fail;
        }
        *colon = '\0';
        if (!add_user(db, name, colon + 1))
            goto nomem;
    }
    explicit_bzero(line, sizeof line);
    fclose(f);
    return db;
nomem:
    snprintf(err, errlen, "out of memory reading %s", path);
fail:
    explicit_bzero(line, sizeof line);
    fclose(f);
    userdb_free(db);
    return NULL;
}

size_t userdb_count(const struct userdb *db)
{
    return db->count;
}

/* Compares in a time that depends only on the length of `expected`. */
static bool equal_const_time(const char *given, const char *expected)
{
    size_t glen = strlen(given), elen = strlen(expected);
    unsigned char diff = glen != elen;
    for (size_t i = 0; i < elen; i++)
        diff |= (unsigned char)((i < glen ? given[i] : 0) ^ expected[i]);
    return diff == 0;
}

bool userdb_check(struct userdb *db, const char *name, const char *password)
{
    const struct userdb_entry *user = NULL;
    for (size_t i = 0; i < db->count; i++) {
        if (strcmp(db->users[i].name, name) == 0)
            user = &db->users[i];
    }
    const char *hash = user ? user->hash : db->count ? db->users[0].hash : DUMMY_SETTING;
    const char *result = crypt_rn(password, hash, &db->scratch, (int)sizeof db->scratch);
    bool ok = user && result && result[0] != '*' && equal_const_time(result, hash);
    explicit_bzero(&db->scratch, sizeof db->scratch);
    return ok;
}

void userdb_free(struct userdb *db)
{
    if (!db)
        return;
    for (size_t i = 0; i < db->count; i++) {
        free(db->users[i].name);
        explicit_bzero(db->users[i].hash, strlen(db->users[i].hash));
        free(db->users[i].hash);
    }
    free(db->users);
    free(db);
}
