/* listener — one listening socket of a [listener] section: accepts clients
 * and hands each to a new session. At the connection limit, or when the
 * process runs out of file descriptors, it pauses instead of spinning. */
#ifndef SALLYPORT_LISTENER_H
#define SALLYPORT_LISTENER_H

#include <ev.h>
#include <stdbool.h>

#include "config.h"

struct server;

struct listener {
    struct server *server;
    const struct cfg_listener *cfg;
    int fd;
    ev_io accept_w;
    ev_timer pause_w; /* EMFILE back-off */
    bool paused;
};

/* Binds the socket. Returns 0, or -1 with the reason in err. */
int listener_open(struct listener *l, struct server *server, const struct cfg_listener *cfg,
                  char *err, size_t errlen);

/* Starts (or resumes) accepting. */
void listener_start(struct listener *l);

/* Stops accepting and closes the socket. */
void listener_close(struct listener *l);

#endif
