/* sallyport — an SNI-routing gateway for mail: implicit TLS first, STARTTLS
 * done safely. This file is the command line, signals, start-up and the loop. */
#include <errno.h>
#include <ev.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "generation.h"
#include "log.h"
#include "notify.h"
#include "server.h"

#define SALLYPORT_VERSION "0.1.0"

static void usage(FILE *out)
{
    fprintf(out, "usage: sallyport [-t] [-d] -c FILE\n"
                 "  -c FILE  configuration file (see sallyport.conf(5))\n"
                 "  -t       check the configuration and exit (0 = valid)\n"
                 "  -d       log at debug level\n"
                 "  -V       print the version and exit\n");
}

/* A graceful stop's clock: shutdown_timeout, then the goodbyes, then at
 * most this long for the last replies to be flushed (their own drain and
 * linger timers are shorter) before the loop ends regardless. */
#define GOODBYE_GRACE 10.0

struct stopping {
    struct server *server;
    ev_timer timer;
    int phase; /* 0 running, 1 draining, 2 goodbyes said */
};

static void on_stop_timer(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct stopping *st = t->data;
    if (st->phase == 1) {
        log_info("shutdown_timeout reached: ending the sessions still open");
        st->phase = 2;
        server_end_sessions(st->server);
        ev_timer_set(t, GOODBYE_GRACE, 0.);
        ev_timer_start(loop, t);
        return;
    }
    ev_break(loop, EVBREAK_ALL);
}

/* SIGTERM or SIGINT: the first drains (no new connections, sessions may
 * finish for shutdown_timeout), a second one stops at once. */
static void on_stop_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)revents;
    struct stopping *st = w->data;
    if (st->phase > 0) {
        log_info("received signal %d again: stopping now", w->signum);
        ev_break(loop, EVBREAK_ALL);
        return;
    }
    unsigned timeout = st->server->current->config->global.shutdown_timeout;
    log_info("received signal %d: no new connections; open sessions may finish within %us "
             "(signal again to stop at once)",
             w->signum, timeout);
    st->phase = 1;
    notify_stopping();
    ev_timer_init(&st->timer, on_stop_timer, timeout, 0.);
    st->timer.data = st;
    ev_timer_start(loop, &st->timer);
    server_drain(st->server);
}

/* SIGHUP: read the config again (server_reload()). */
static void on_reload_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop, (void)revents;
    struct stopping *st = w->data;
    log_info("received signal %d: reloading", w->signum);
    server_reload(st->server);
}

/* SIGUSR1: renew every ACME certificate now. */
static void on_renew_signal(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop, (void)revents;
    struct stopping *st = w->data;
    log_info("received signal %d: renewing every ACME certificate now", w->signum);
    server_renew_certificates(st->server);
}

/* Drops root for `user` once sockets are bound and keys are read. */
static int drop_privileges(const char *user)
{
    struct passwd *pw = getpwnam(user);
    if (!pw) {
        log_error("user %s: no such user", user);
        return -1;
    }
    if (setgroups(0, NULL) < 0 && errno != EPERM) {
        log_error("setgroups: %s", strerror(errno));
        return -1;
    }
    if (initgroups(user, pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 || setuid(pw->pw_uid) < 0) {
        log_error("cannot become user %s: %s", user, strerror(errno));
        return -1;
    }
    if (setuid(0) == 0 && pw->pw_uid != 0) {
        log_error("cannot drop root privileges");
        return -1;
    }
    log_info("running as user %s", user);
    return 0;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    int check_only = 0, debug = 0, opt;
    while ((opt = getopt(argc, argv, "c:tdVh")) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 't':
            check_only = 1;
            break;
        case 'd':
            debug = 1;
            break;
        case 'V':
            printf("sallyport %s\n", SALLYPORT_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!path || optind != argc) {
        usage(stderr);
        return 2;
    }

    int nerrors = 0;
    struct config *config = config_load(path, stderr, &nerrors);
    if (!config) {
        fprintf(stderr, "%s: %d error%s\n", path, nerrors, nerrors == 1 ? "" : "s");
        return 1;
    }
    if (!config_runnable(config, stderr)) {
        config_free(config);
        return 1;
    }
    if (check_only) {
        printf("%s: configuration ok\n", path);
        config_free(config);
        return 0;
    }
    log_set_level(debug ? LOG_LEVEL_DEBUG : config->global.log_level);
    signal(SIGPIPE, SIG_IGN);
    /* From here on every line goes through the log writer, in the config's
     * format and to its destination; a stalled reader blocks only it. */
    log_configure(config->global.log, config->global.log_format, config->global.syslog_socket);
    log_start();

    notify_open();
    const char *user = config->global.user ? strdup(config->global.user) : NULL;
    struct server server;
    int started = server_start(&server, config, path); /* the config is the server's now */
    server.log_level_fixed = debug;
    if (started < 0 || (user && drop_privileges(user) < 0)) {
        server_stop(&server);
        free((void *)user);
        notify_close();
        log_stop();
        return 1;
    }
    free((void *)user);
    struct ev_loop *loop = EV_DEFAULT; /* worker 0's loop takes the signals */
    struct stopping stopping = {.server = &server};
    ev_init(&stopping.timer, on_stop_timer);
    ev_signal sigterm, sigint, sighup, sigusr1;
    ev_signal_init(&sigterm, on_stop_signal, SIGTERM);
    ev_signal_init(&sigint, on_stop_signal, SIGINT);
    ev_signal_init(&sighup, on_reload_signal, SIGHUP);
    ev_signal_init(&sigusr1, on_renew_signal, SIGUSR1);
    sigterm.data = sigint.data = sighup.data = sigusr1.data = &stopping;
    ev_signal_start(loop, &sigterm);
    ev_signal_start(loop, &sigint);
    ev_signal_start(loop, &sighup);
    ev_signal_start(loop, &sigusr1);

    int rc = server_run(&server) < 0 ? 1 : 0;

    ev_timer_stop(loop, &stopping.timer);
    ev_signal_stop(loop, &sigterm);
    ev_signal_stop(loop, &sigint);
    ev_signal_stop(loop, &sighup);
    ev_signal_stop(loop, &sigusr1);
    server_stop(&server);
    notify_close();
    log_info("sallyport stopped");
    log_stop(); /* the last lines, unless the reader is stuck: then we go without them */
    return rc;
}
