/* notify — telling the service manager what the daemon is doing, with the
 * sd_notify(3) protocol and without libsystemd: one datagram per state
 * change to the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or an
 * abstract name written "@name"). Without that variable every call does
 * nothing. systemd's Type=notify waits for READY=1 before it counts the
 * service as started, shows RELOADING=1 during a reload and STOPPING=1
 * during a graceful stop. Main thread only. */
#ifndef SALLYPORT_NOTIFY_H
#define SALLYPORT_NOTIFY_H

/* Reads $NOTIFY_SOCKET and opens the socket; call before dropping
 * privileges. Returns 0, or -1 (logged) when the variable is set but
 * unusable, which is then ignored. */
int notify_open(void);

/* "READY=1" plus a STATUS= line; after start-up and after each reload. */
void notify_ready(const char *status);

/* "RELOADING=1" with MONOTONIC_USEC=, as a reload begins. */
void notify_reloading(void);

/* "STOPPING=1", as a graceful stop begins. */
void notify_stopping(void);

void notify_close(void);

#endif
