/* session — one client connection from accept to close: its state machine,
 * timers and the backend connection it leads to. See docs/ARCHITECTURE.md
 * for the path a session takes. */
#ifndef SALLYPORT_SESSION_H
#define SALLYPORT_SESSION_H

#include <stddef.h>
#include <sys/socket.h>

struct listener;
struct session;
struct worker;

/* Takes ownership of the accepted, non-blocking `fd` and of the slot the
 * listener reserved under max_connections (server_reserve_session()), and
 * starts a session on the listener's worker, or turns the client away. */
void session_start(struct listener *listener, int fd, const struct sockaddr *peer);

/* Closes a session at once (server shutdown), logging `reason`. */
void session_abort(struct session *s, const char *reason);

/* Graceful stop: a session still open after shutdown_timeout ends. Where
 * sallyport speaks the protocol to the client itself (the cleartext
 * dialogue, or before the relay of a TLS session it terminated), the client
 * gets the protocol's "try later" (421, * BYE, -ERR, BYE) first; a relayed
 * session is closed, as sallyport cannot know where the stream is. */
void session_goodbye(struct session *s);

/* Overload (overload.h): closes up to `max` of the worker's sessions that
 * have sent nothing for OVERLOAD_IDLE_MIN seconds and not begun TLS,
 * oldest first; a cleartext one first gets the protocol's "try later".
 * Never one that sent a byte, so never one in TLS or relaying. Returns how
 * many it closed (their descriptors and slots are free on return). */
size_t session_evict_idle(struct worker *w, size_t max);

/* The next session of the worker's list (safe to take before a goodbye). */
struct session *session_next(const struct session *s);

/* The ALPN check handed to the TLS store: a client that offers ALPN must
 * offer the listener's protocol (tls_alpn_check). */
int session_check_alpn(void *session, const unsigned char *list, unsigned len);

/* The SNI check handed to the TLS store: routes the session by SNI. */
_Bool session_route_by_sni(void *session, const char *sni);

#endif
