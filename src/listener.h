/* listener — one worker's listening socket for a [listener] section: accepts
 * clients and hands each to a new session. At the connection limit (all
 * workers' sessions count) the worker pauses all its listeners until a slot
 * frees; when the process runs out of file descriptors, a listener pauses
 * for a while instead of spinning. Either way, a client waiting to be
 * accepted first gets the place of a silent one if there is one old enough
 * to give way (overload.h). */
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

/* Sets up accepting on `fd`, the worker's socket for `cfg` (bound and
 * listening; the worker's generation owns it). Nothing accepts yet. */
void listener_init(struct listener *l, struct worker *worker, const struct cfg_listener *cfg,
                   int fd);

/* Starts (or resumes) accepting. */
void listener_start(struct listener *l);

/* Stops accepting until listener_start(). */
void listener_pause(struct listener *l);

/* Stops accepting for good (the socket is the generation's to close). */
void listener_stop(struct listener *l);

/* True when a client waits to be accepted (even while paused). */
bool listener_pending(const struct listener *l);

#endif
