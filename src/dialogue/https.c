/* HTTPS (port 443): no dialogue at all. An https listener only passes TLS
 * through to a web server (or answers a CA's tls-alpn-01 check), so these
 * are here for the tables: nothing is ever said in cleartext, and the
 * client speaks first, so a backend check is done once connected. */
#include <stdio.h>

#include "dialogue/dialogue.h"

static void https_nothing_to_say(struct dialogue_server *ds, struct buf *out)
{
    (void)ds;
    (void)out;
}

static enum dialogue_action https_on_line(struct dialogue_server *ds, const char *line, size_t len,
                                          struct buf *out)
{
    (void)ds;
    (void)line;
    (void)len;
    (void)out;
    return DIALOGUE_CLOSE; /* never called: https has no cleartext phase */
}

static enum dialogue_action https_on_long_line(struct dialogue_server *ds, struct buf *out)
{
    (void)ds;
    (void)out;
    return DIALOGUE_CLOSE;
}

static void https_no_reply(const char *hostname, struct buf *out)
{
    (void)hostname;
    (void)out;
}

static void https_backend_start(struct dialogue_backend *db)
{
    (void)db;
}

static enum backend_step https_on_backend_line(struct dialogue_backend *db, const char *line,
                                               size_t len, struct buf *out)
{
    (void)line;
    (void)len;
    (void)out;
    snprintf(db->reason, sizeof db->reason, "a web server does not greet");
    return BACKEND_FAILED;
}

const struct dialogue dialogue_https = {
    .proto = PROTO_HTTPS,
    .name = "https",
    .alpn = "http/1.1",
    .client_first = true,
    .greet = https_nothing_to_say,
    .on_line = https_on_line,
    .on_long_line = https_on_long_line,
    .timeout_reply = https_nothing_to_say,
    .unavailable_reply = https_no_reply,
    .busy_reply = https_no_reply,
    .fresh_greeting = https_no_reply,
    .backend_start = https_backend_start,
    .on_backend_line = https_on_backend_line,
};
