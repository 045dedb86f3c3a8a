/* listener — one worker's listening socket for a [listener] section: accepts
 * clients and hands each to a new session. At the connection limit (all
 * workers' sessions count) the worker pauses all its listeners until a slot
 * frees; when the process runs out of file descriptors, a listener pauses
 * for a while instead of spinning. */
#ifndef SALLYPORT_LISTENER_H
#define SALLYPORT_LISTENER_H

#include <ev.h>
#include <stdbool.h>

#include "config.h"

struct worker;

struct listener {
    struct worker *worker;
    const struct cfg_listener *cfg;
    int fd;
    ev_io accept_w;
    ev_timer pause_w; /* EMFILE back-off */
};

/* Binds the socket (SO_REUSEPORT when `shared`: every worker binds its own
 * on the same address). Returns 0, or -1 with the reason in err. */
int listener_open(struct listener *l, struct worker *worker, const struct cfg_listener *cfg,
                  bool shared, char *err, size_t errlen);

/* Starts (or resumes) accepting. */
void listener_start(struct listener *l);

/* Stops accepting until listener_start(). */
void listener_pause(struct listener *l);

/* Stops accepting and closes the socket. */
void listener_close(struct listener *l);

#endif
