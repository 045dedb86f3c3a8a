/* mailbox_smtp — the mailbox's SMTP dialogue; see mailbox_smtp.h. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"
#include "mailbox_smtp.h"

#define SMTP_LINE_MAX 1000 /* command line octets, CRLF included */
#define RCPT_MAX      100

/* ---- replies ------------------------------------------------------------- */

static void vreply(struct mailbox_session *s, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static void vreply(struct mailbox_session *s, const char *fmt, va_list ap)
{
    char line[MAILBOX_REPLY_MAX];
    int n = vsnprintf(line, sizeof line - 2, fmt, ap);
    if (n < 0 || (size_t)n >= sizeof line - 2)
        abort(); /* replies are short by construction */
    memcpy(line + n, "\r\n", 2);
    struct buf *out = mailbox_buf(s, &s->out);
    if (!out) {
        mailbox_end(s, "out of memory for a reply");
        return;
    }
    if (!buf_append(out, line, (size_t)n + 2)) {
        log_error("mailbox %s: reply does not fit the output buffer", s->mb->cfg->name);
        abort(); /* impossible: commands run only with MAILBOX_REPLY_MAX free */
    }
}

/* Queues one reply line (CRLF added). */
static void reply(struct mailbox_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void reply(struct mailbox_session *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreply(s, fmt, ap);
    va_end(ap);
}

/* Queues an error reply and counts it; max_errors of them end the session
 * with "421" (max_errors = 0: no limit). */
static void reply_error(struct mailbox_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void reply_error(struct mailbox_session *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreply(s, fmt, ap);
    va_end(ap);
    unsigned max = s->mb->global->max_errors;
    if (max > 0 && ++s->errors >= max && s->state != MAILBOX_CLOSING) {
        reply(s, "421 4.7.0 Too many errors");
        mailbox_end_after_reply(s, "too many errors");
    }
}

/* Forgets the mail transaction (RSET, EHLO, end of DATA, new TLS). */
static void reset_transaction(struct mailbox_session *s)
{
    s->sender[0] = '\0';
    s->rcpts = 0;
    maildir_abort(&s->delivery);
    if (s->state == MAILBOX_MAIL || s->state == MAILBOX_RCPT || s->state == MAILBOX_DATA)
        mailbox_enter(s, MAILBOX_READY);
}

/* Peer-supplied text made safe for a log line. Returns out. */
static char *escape_text(char *out, size_t outsz, const char *text)
{
    return log_escape(out, outsz, text, strlen(text));
}

/* ---- AUTH ---------------------------------------------------------------- */

/* Answers the last step of AUTH and returns to READY. */
static void auth_finish(struct mailbox_session *s, const char *name, const char *password)
{
    char safe[USERDB_NAME_MAX * 4];
    mailbox_enter(s, MAILBOX_READY);
    if (strlen(name) < sizeof s->user && userdb_check(s->mb->users, name, password)) {
        memmove(s->user, name, strlen(name) + 1); /* name may be s->user */
        s->authenticated = true;
        reply(s, "235 2.7.0 Authentication successful");
        return;
    }
    log_warn("mailbox %s: client=%s: authentication failed for '%s'", s->mb->cfg->name, s->client,
             escape_text(safe, sizeof safe, name));
    s->user[0] = '\0';
    reply_error(s, "535 5.7.8 Authentication credentials invalid");
}

/* AUTH PLAIN response: base64 of "authzid NUL authcid NUL password". */
static void auth_plain(struct mailbox_session *s, const char *response)
{
    unsigned char raw[SMTP_LINE_MAX];
    const char *authzid, *authcid, *password;
    long n = smtp_base64_decode(response, raw, sizeof raw - 1);
    if (n < 0 || !smtp_sasl_plain(raw, (size_t)n, &authzid, &authcid, &password)) {
        mailbox_enter(s, MAILBOX_READY);
        reply_error(s, "501 5.5.2 Cannot decode AUTH PLAIN response");
    } else if (authzid[0] && strcmp(authzid, authcid) != 0) {
        auth_finish(s, "", ""); /* acting for another user is not supported */
    } else {
        auth_finish(s, authcid, password);
    }
    explicit_bzero(raw, sizeof raw);
}

/* A line after a "334": the AUTH exchange, never a command. */
static void auth_continue(struct mailbox_session *s, const char *line)
{
    if (strcmp(line, "*") == 0) {
        mailbox_enter(s, MAILBOX_READY);
        reply_error(s, "501 5.7.0 Authentication cancelled");
        return;
    }
    if (s->state == MAILBOX_AUTH_PLAIN) {
        auth_plain(s, line);
        return;
    }
    /* A user name too long for s->user fails to decode: never truncated. */
    unsigned char raw[SMTP_LINE_MAX];
    bool is_user = s->state == MAILBOX_AUTH_USER;
    long n = smtp_base64_decode(line, raw, is_user ? sizeof s->user - 1 : sizeof raw - 1);
    if (n < 0 || memchr(raw, '\0', (size_t)n)) {
        s->user[0] = '\0';
        mailbox_enter(s, MAILBOX_READY);
        reply_error(s, "501 5.5.2 Cannot decode AUTH LOGIN response");
    } else if (is_user) {
        memcpy(s->user, raw, (size_t)n);
        s->user[n] = '\0';
        mailbox_enter(s, MAILBOX_AUTH_PASS);
        reply(s, "334 UGFzc3dvcmQ6"); /* "Password:" */
    } else {
        raw[n] = '\0';
        auth_finish(s, s->user, (const char *)raw);
    }
    explicit_bzero(raw, sizeof raw);
}

/* ---- commands: checks (each sends its own refusal) ---------------------- */

static bool check_any(struct mailbox_session *s)
{
    (void)s;
    return true;
}

static bool check_greeted(struct mailbox_session *s)
{
    if (s->state != MAILBOX_GREETED)
        return true;
    reply_error(s, "503 5.5.1 Error: send HELO/EHLO first");
    return false;
}

static bool check_tls_done(struct mailbox_session *s)
{
    if (s->mb->cfg->tls != TLS_STARTTLS || mailbox_in_tls(s))
        return true;
    reply_error(s, "530 5.7.0 Must issue a STARTTLS command first");
    return false;
}

static bool check_no_transaction(struct mailbox_session *s)
{
    if (s->state != MAILBOX_MAIL && s->state != MAILBOX_RCPT)
        return true;
    reply_error(s, "503 5.5.1 Error: MAIL transaction in progress");
    return false;
}

static bool check_starttls(struct mailbox_session *s)
{
    if (s->mb->cfg->tls != TLS_STARTTLS) {
        reply_error(s, "502 5.5.1 Error: command not implemented");
        return false;
    }
    if (mailbox_in_tls(s)) {
        reply_error(s, "503 5.5.1 Error: TLS already active");
        return false;
    }
    return check_no_transaction(s);
}

static bool check_auth(struct mailbox_session *s)
{
    if (!s->mb->users) {
        reply_error(s, "503 5.5.1 Error: authentication not enabled");
        return false;
    }
    if (!check_tls_done(s) || !check_greeted(s) || !check_no_transaction(s))
        return false;
    if (s->authenticated) {
        reply_error(s, "503 5.5.1 Error: already authenticated");
        return false;
    }
    return true;
}

static bool check_mail(struct mailbox_session *s)
{
    if (!check_tls_done(s) || !check_greeted(s))
        return false;
    if (s->mb->users && !s->authenticated) {
        reply_error(s, "530 5.7.0 Authentication required");
        return false;
    }
    if (s->state != MAILBOX_READY) {
        reply_error(s, "503 5.5.1 Error: nested MAIL command");
        return false;
    }
    return true;
}

static bool check_rcpt(struct mailbox_session *s)
{
    if (s->state == MAILBOX_MAIL || s->state == MAILBOX_RCPT)
        return true;
    reply_error(s, "503 5.5.1 Error: need MAIL command");
    return false;
}

static bool check_data(struct mailbox_session *s)
{
    if (s->state == MAILBOX_RCPT)
        return true;
    reply_error(s, "503 5.5.1 Error: need %s command", s->state == MAILBOX_MAIL ? "RCPT" : "MAIL");
    return false;
}

/* ---- commands: actions -------------------------------------------------- */

/* EHLO and HELO: a valid name resets the transaction. Returns false (reply
 * sent) if the name is not valid. */
static bool greet_name(struct mailbox_session *s, const char *args, bool esmtp)
{
    if (!smtp_valid_helo(args)) {
        reply_error(s, "501 5.5.4 Syntax: %s hostname", esmtp ? "EHLO" : "HELO");
        return false;
    }
    reset_transaction(s);
    snprintf(s->helo, sizeof s->helo, "%s", args);
    s->esmtp = esmtp;
    if (s->state == MAILBOX_GREETED)
        mailbox_enter(s, MAILBOX_READY);
    return true;
}

static void do_ehlo(struct mailbox_session *s, char *args)
{
    if (!greet_name(s, args, true))
        return;
    const struct cfg_mailbox *cfg = s->mb->cfg;
    reply(s, "250-%s", s->mb->hostname);
    reply(s, "250-SIZE %zu", cfg->max_message_size);
    reply(s, "250-8BITMIME");
    reply(s, "250-ENHANCEDSTATUSCODES");
    if (cfg->tls == TLS_STARTTLS && !mailbox_in_tls(s))
        reply(s, "250-STARTTLS");
    if (s->mb->users && (cfg->tls != TLS_STARTTLS || mailbox_in_tls(s)))
        reply(s, "250-AUTH PLAIN LOGIN");
    reply(s, "250 PIPELINING");
}

static void do_helo(struct mailbox_session *s, char *args)
{
    if (greet_name(s, args, false))
        reply(s, "250 %s", s->mb->hostname);
}

static void do_starttls(struct mailbox_session *s, char *args)
{
    (void)args;
    if (buf_slot_len(s->in) > 0) {
        /* Bytes sent before the handshake would pass as protected ones
         * (CVE-2011-0411): never answer them. */
        log_warn("mailbox %s: client=%s: %zu bytes pipelined after STARTTLS (command "
                 "injection): closing",
                 s->mb->cfg->name, s->client, s->in->len);
        mailbox_end(s, "STARTTLS command injection");
        return;
    }
    reply(s, "220 2.0.0 Ready to start TLS");
    mailbox_enter(s, MAILBOX_STARTTLS);
}

static void do_auth(struct mailbox_session *s, char *args)
{
    char *initial = strchr(args, ' ');
    if (initial) {
        *initial++ = '\0';
        initial += strspn(initial, " ");
    }
    if (strcasecmp(args, "PLAIN") == 0 && initial && *initial) {
        auth_plain(s, initial);
    } else if (strcasecmp(args, "PLAIN") == 0) {
        mailbox_enter(s, MAILBOX_AUTH_PLAIN);
        reply(s, "334 ");
    } else if (strcasecmp(args, "LOGIN") == 0) {
        mailbox_enter(s, MAILBOX_AUTH_USER);
        if (initial && *initial)
            auth_continue(s, initial);
        else
            reply(s, "334 VXNlcm5hbWU6"); /* "Username:" */
    } else {
        reply_error(s, "504 5.5.4 Unrecognized authentication type");
    }
}

static void do_mail(struct mailbox_session *s, char *args)
{
    struct smtp_mail_from from;
    enum smtp_arg_result r = smtp_parse_mail_from(args, s->mb->users != NULL, &from);
    if (r == SMTP_ARG_UNKNOWN_PARAM) {
        reply_error(s, "555 5.5.4 Unsupported MAIL FROM parameter");
    } else if (r != SMTP_ARG_OK) {
        reply_error(s, "501 5.5.4 Syntax: MAIL FROM:<address>");
    } else if (from.has_size && from.size > s->mb->cfg->max_message_size) {
        reply_error(s, "552 5.3.4 Message size exceeds fixed maximum message size");
    } else {
        memcpy(s->sender, from.path, sizeof s->sender);
        s->rcpts = 0;
        mailbox_enter(s, MAILBOX_MAIL);
        reply(s, "250 2.1.0 Ok");
    }
}

static void do_rcpt(struct mailbox_session *s, char *args)
{
    char path[SMTP_PATH_MAX + 1];
    enum smtp_arg_result r = smtp_parse_rcpt_to(args, path);
    if (r == SMTP_ARG_UNKNOWN_PARAM) {
        reply_error(s, "555 5.5.4 Unsupported RCPT TO parameter");
    } else if (r != SMTP_ARG_OK) {
        reply_error(s, "501 5.1.3 Syntax: RCPT TO:<address>");
    } else if (s->rcpts >= RCPT_MAX) {
        reply(s, "452 4.5.3 Too many recipients");
    } else {
        s->rcpts++; /* catch-all: every recipient lands in the one Maildir */
        mailbox_enter(s, MAILBOX_RCPT);
        reply(s, "250 2.1.5 Ok");
    }
}

/* Opens the delivery and writes the trace header (RFC 5321 4.4), then
 * hands the stream to smtp_data. */
static void do_data(struct mailbox_session *s, char *args)
{
    (void)args;
    const struct mailbox *mb = s->mb;
    char err[256], date[64], trace[1024];
    int rc = maildir_open(&s->delivery, mb->cfg->maildir, mb->hostname, err, sizeof err);
    if (rc < 0 && (errno == EMFILE || errno == ENFILE) && mb->make_room &&
        mb->make_room(mb->make_room_arg) > 0) /* out of descriptors: the worker frees one */
        rc = maildir_open(&s->delivery, mb->cfg->maildir, mb->hostname, err, sizeof err);
    if (rc < 0) {
        log_error("mailbox %s: %s", mb->cfg->name, err);
        reply(s, "451 4.3.0 Error: cannot store the message now");
        return;
    }
    smtp_date(date, sizeof date, time(NULL));
    int n = snprintf(trace, sizeof trace,
                     "Return-Path: <%s>\r\nReceived: from %s (%s) by %s (sallyport mailbox) "
                     "with %s%s%s; %s\r\n",
                     s->sender, s->helo, s->client_ip, mb->hostname, s->esmtp ? "ESMTP" : "SMTP",
                     s->esmtp && mailbox_in_tls(s) ? "S" : "",
                     s->esmtp && s->authenticated ? "A" : "", date);
    if (n < 0 || (size_t)n >= sizeof trace)
        abort(); /* bounded: path 256, helo 255, host 255 */
    maildir_write(&s->delivery, trace, (size_t)n);
    smtp_data_init(&s->data, mb->cfg->max_message_size);
    mailbox_enter(s, MAILBOX_DATA);
    reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

static void do_rset(struct mailbox_session *s, char *args)
{
    (void)args;
    reset_transaction(s);
    reply(s, "250 2.0.0 Ok");
}

static void do_noop(struct mailbox_session *s, char *args)
{
    (void)args;
    reply(s, "250 2.0.0 Ok");
}

static void do_vrfy(struct mailbox_session *s, char *args)
{
    (void)args;
    reply(s, "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery");
}

static void do_help(struct mailbox_session *s, char *args)
{
    (void)args;
    reply(s, "214 2.0.0 Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP VRFY HELP QUIT");
}

static void do_quit(struct mailbox_session *s, char *args)
{
    (void)args;
    reply(s, "221 2.0.0 %s Bye", s->mb->hostname);
    mailbox_end_after_reply(s, "quit");
}

enum command_args { ARGS_NONE, ARGS_OPTIONAL, ARGS_REQUIRED };

struct command {
    const char *verb;
    enum command_args args;
    bool (*check)(struct mailbox_session *s); /* false: refused, reply sent */
    void (*proceed)(struct mailbox_session *s, char *args);
};

static const struct command commands[] = {
    {"EHLO", ARGS_REQUIRED, check_any, do_ehlo},
    {"HELO", ARGS_REQUIRED, check_any, do_helo},
    {"STARTTLS", ARGS_NONE, check_starttls, do_starttls},
    {"AUTH", ARGS_REQUIRED, check_auth, do_auth},
    {"MAIL", ARGS_REQUIRED, check_mail, do_mail},
    {"RCPT", ARGS_REQUIRED, check_rcpt, do_rcpt},
    {"DATA", ARGS_NONE, check_data, do_data},
    {"RSET", ARGS_NONE, check_any, do_rset},
    {"NOOP", ARGS_OPTIONAL, check_any, do_noop},
    {"VRFY", ARGS_OPTIONAL, check_any, do_vrfy},
    {"HELP", ARGS_OPTIONAL, check_any, do_help},
    {"QUIT", ARGS_NONE, check_any, do_quit},
};

/* Handles one complete line (terminator removed, NUL-terminated at len). */
static void session_line(struct mailbox_session *s, char *line, size_t len)
{
    if (memchr(line, '\0', len) || memchr(line, '\r', len)) {
        reply_error(s, "500 5.5.2 Error: invalid characters in command");
        return;
    }
    if (s->state == MAILBOX_AUTH_PLAIN || s->state == MAILBOX_AUTH_USER ||
        s->state == MAILBOX_AUTH_PASS) {
        auth_continue(s, line);
        return;
    }
    char *args = strchr(line, ' ');
    if (args) {
        *args++ = '\0';
        args += strspn(args, " ");
        size_t alen = strlen(args);
        while (alen > 0 && args[alen - 1] == ' ')
            args[--alen] = '\0';
    } else {
        args = line + len;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        const struct command *c = &commands[i];
        if (strcasecmp(line, c->verb) != 0)
            continue;
        if ((c->args == ARGS_NONE && *args) || (c->args == ARGS_REQUIRED && !*args))
            reply_error(s, "501 5.5.4 Syntax error in parameters");
        else if (c->check(s))
            c->proceed(s, args);
        return;
    }
    reply_error(s, "500 5.5.2 Error: command not recognized");
}

/* ---- DATA and input ------------------------------------------------------ */

static void data_sink(void *arg, const uint8_t *bytes, size_t len)
{
    struct mailbox_session *s = arg;
    maildir_write(&s->delivery, bytes, len);
}

/* Answers the end of DATA: "250" only once the message is durable. */
static void data_finish(struct mailbox_session *s, enum smtp_data_result result)
{
    const char *name = s->mb->cfg->name;
    char err[256], path[4096], from[SMTP_PATH_MAX * 4 + 1];
    escape_text(from, sizeof from, s->sender);
    if (result == SMTP_DATA_OK &&
        maildir_commit(&s->delivery, path, sizeof path, err, sizeof err) == 0) {
        s->messages++;
        log_info("mailbox %s: client=%s stored %s from=<%s> rcpts=%u size=%zu", name, s->client,
                 s->delivery.name, from, s->rcpts, s->data.size);
        reply(s, "250 2.0.0 Ok: queued as %s", s->delivery.name);
    } else if (result == SMTP_DATA_OK) {
        log_error("mailbox %s: client=%s cannot store message: %s", name, s->client, err);
        reply(s, "451 4.3.0 Error: local error in processing");
    } else if (result == SMTP_DATA_TOO_BIG) {
        log_info("mailbox %s: client=%s refused message from=<%s>: %zu bytes, over the limit", name,
                 s->client, from, s->data.size);
        reply(s, "552 5.3.4 Error: message exceeds fixed maximum message size");
    } else {
        log_warn("mailbox %s: client=%s refused message from=<%s>: bare CR or LF", name, s->client,
                 from);
        reply_error(s, "550 5.6.0 Error: message contains bare CR or LF");
    }
    reset_transaction(s); /* removes the tmp/ file unless committed */
}

bool mailbox_smtp_process(struct mailbox_session *s)
{
    bool progress = false;
    while (buf_slot_len(s->in) > 0 && mailbox_reads_input(s->state) &&
           buf_slot_space(s->out) >= MAILBOX_REPLY_MAX) {
        struct buf *in = s->in;
        progress = true;
        if (s->state == MAILBOX_DATA) {
            size_t used = 0;
            enum smtp_data_result r =
                smtp_data_feed(&s->data, in->data, in->len, &used, data_sink, s);
            buf_consume(in, used);
            if (r != SMTP_DATA_MORE)
                data_finish(s, r);
            continue;
        }
        size_t n = buf_line_length(in);
        if (s->discarding) { /* the rest of a too-long line */
            buf_consume(in, n ? n : in->len);
            s->discarding = n == 0;
            continue;
        }
        if (n == 0 && in->len <= SMTP_LINE_MAX)
            return progress; /* a partial line: wait for the rest */
        if (n == 0 || n > SMTP_LINE_MAX) {
            buf_consume(in, n ? n : in->len);
            s->discarding = n == 0;
            if (s->state == MAILBOX_AUTH_PLAIN || s->state == MAILBOX_AUTH_USER ||
                s->state == MAILBOX_AUTH_PASS)
                mailbox_enter(s, MAILBOX_READY);
            reply_error(s, "500 5.5.6 Line too long");
            continue;
        }
        char line[SMTP_LINE_MAX + 1];
        memcpy(line, in->data, n);
        buf_consume(in, n);
        size_t len = n - 1; /* drop the LF, and a CR before it */
        if (len > 0 && line[len - 1] == '\r')
            len--;
        line[len] = '\0';
        session_line(s, line, len);
        explicit_bzero(line, sizeof line); /* may have held a password */
    }
    return progress;
}

void mailbox_smtp_greet(struct mailbox_session *s)
{
    mailbox_enter(s, MAILBOX_GREETED);
    reply(s, "220 %s ESMTP sallyport mailbox", s->mb->hostname);
    s->greeting_sent = true;
}

void mailbox_smtp_tls_ready(struct mailbox_session *s)
{
    s->helo[0] = '\0';
    s->esmtp = false;
    s->authenticated = false;
    s->user[0] = '\0';
    reset_transaction(s);
    if (s->greeting_sent)
        mailbox_enter(s, MAILBOX_GREETED);
    else
        mailbox_smtp_greet(s);
}

void mailbox_smtp_timeout(struct mailbox_session *s)
{
    if (!mailbox_reads_input(s->state) || buf_slot_space(s->out) < MAILBOX_REPLY_MAX) {
        mailbox_end(s, "timeout while sending");
        return;
    }
    reply(s, "421 4.4.2 %s Timeout", s->mb->hostname);
    mailbox_end_after_reply(s, "idle timeout");
}
