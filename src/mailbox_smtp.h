/* mailbox_smtp — the mailbox's SMTP dialogue (RFC 5321, 3207, 4954, 1870,
 * 2920): reads complete lines and DATA bytes from a session's `in`, queues
 * replies in its `out`, moves its state through mailbox_enter(). No socket
 * I/O here: mailbox.c moves the bytes. Private to the mailbox. */
#ifndef SALLYPORT_MAILBOX_SMTP_H
#define SALLYPORT_MAILBOX_SMTP_H

#include <stdbool.h>

#include "mailbox_session.h"

/* Queues the "220" greeting and enters GREETED. */
void mailbox_smtp_greet(struct mailbox_session *s);

/* TLS is up: every bit of SMTP state starts over (RFC 3207 4.2), the
 * client must EHLO again; greets if the client was not greeted yet
 * (implicit TLS). Enters GREETED. */
void mailbox_smtp_tls_ready(struct mailbox_session *s);

/* Works through the buffered input in order (pipelining) while `out` has
 * MAILBOX_REPLY_MAX free. Returns true if anything was consumed. */
bool mailbox_smtp_process(struct mailbox_session *s);

/* The idle timer fired: queues "421 4.4.2 ... Timeout" and ends the session
 * after it, or ends it at once when no reply can be queued. */
void mailbox_smtp_timeout(struct mailbox_session *s);

#endif
