/* config_read — the first half of config_load(): reads sallyport.conf with
 * inih into a struct config, one record per section, checking each value as
 * it goes. The second half (config.c) finishes the sections and checks them
 * against each other. Internal to config.c; nothing else includes this. */
#ifndef SALLYPORT_CONFIG_READ_H
#define SALLYPORT_CONFIG_READ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"

enum config_kind {
    K_GLOBAL,
    K_CERTIFICATE,
    K_LISTENER,
    K_BACKEND,
    K_ROUTE,
    K_MAILBOX,
    K_METRICS,
    K_ACME,
    K_COUNT
};

#define CONFIG_NO_RECORD SIZE_MAX
#define CONFIG_KEY_SLOTS 80

/* One parsed section: where it is in the file and which keys it set. */
struct config_record {
    enum config_kind kind;
    size_t index;   /* into the kind's array in struct config */
    size_t backend; /* backends: own index; mailboxes: index of their backend */
    int line;       /* of the header */
    char *label;    /* "route example": the key of section-level errors */
    const char *name;
    char *backend_ref; /* routes: the backend's name as written */
    /* A value the cross checks depend on (a listener's service or mode, a
     * backend's endpoints, a mailbox's address or tls) was refused: the
     * section is left out of them, so that one mistake gives one error. */
    bool unusable;
    int key_line[CONFIG_KEY_SLOTS]; /* line of each key set (0 = not set) */
};

enum config_line {
    LINE_BLANK,        /* empty, a comment, or a line already dealt with */
    LINE_HEADER,       /* [section] */
    LINE_CONTINUATION, /* indented line after a key: more of that key's value */
    LINE_CONTENT,      /* anything else: must reach the key handler, or it is a syntax error */
};

struct config_loader {
    struct config *cfg;
    const char *path;
    FILE *fp;
    FILE *errors; /* may be NULL: errors are then only counted */
    int nerrors;
    struct config_record *recs; /* in file order */
    size_t nrecs;
    size_t cur; /* record of the section being read; CONFIG_NO_RECORD in a bad one */
    bool in_section;
    bool key_seen; /* a key was read in this section: indented lines continue it */
    int line;
    enum config_line kind;
    bool handled; /* the key handler saw the current line */
    int first_syntax_error;
};

/* Reads ld->fp (opened by the caller) to the end, filling ld->cfg (which
 * holds the defaults of [global]) and ld->recs, and reports every syntax
 * error, bad value and missing required key. */
void config_read(struct config_loader *ld);

/* Prints "file:line: key: message" to ld->errors (no "key: " when key is
 * NULL) and counts it. */
__attribute__((format(printf, 4, 5))) void config_report(struct config_loader *ld, int line,
                                                         const char *key, const char *fmt, ...);

/* Line of `key` in the section, or the section header's line when unset. */
int config_key_line(const struct config_record *rec, const char *key);

/* True when the section sets `key`. */
bool config_key_set(const struct config_record *rec, const char *key);

/* Frees the records (not the config). */
void config_read_free(struct config_loader *ld);

#endif
