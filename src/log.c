/* log — see log.h. The threads that log append to the queue under `lock`;
 * the writer takes messages out one at a time under it, and renders and
 * writes them without it, so a writer stuck on its reader holds nobody up. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "log_line.h"
#include "log_queue.h"
#include "log_sink.h"

/* Seconds log_stop() gives the writer to write what is queued. */
#define LOG_STOP_GRACE 1

/* Bytes the writer gathers for one write to stderr. */
#define LOG_BATCH_BYTES 65536

/* Queued lines the writer takes in one turn, before it looks at the drop
 * count and the settings again. */
#define LOG_TURN_LINES 512

/* Set by the main thread (start-up, a reload), read by every worker. */
static _Atomic int current_level = LOG_LEVEL_INFO;

static const char *const level_names[] = {
    [LOG_LEVEL_DEBUG] = "debug",
    [LOG_LEVEL_INFO] = "info",
    [LOG_LEVEL_WARN] = "warn",
    [LOG_LEVEL_ERROR] = "error",
};

static const char *const destination_names[] = {
    [LOG_TO_STDERR] = "stderr",
    [LOG_TO_SYSLOG] = "syslog",
};

static const char *const format_names[] = {
    [LOG_FORMAT_TEXT] = "text",
    [LOG_FORMAT_JSON] = "json",
};

struct settings {
    enum log_destination to;
    enum log_format format;
    char syslog_socket[LOG_SYSLOG_SOCKET_MAX + 1];
};

/* Everything below `lock` guards, except where marked. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake;     /* the writer waits on it for work */
static pthread_cond_t finished; /* log_stop() waits on it (CLOCK_MONOTONIC) */
static struct log_queue queue;
static unsigned char ring[LOG_QUEUE_BYTES];
static struct settings settings = {LOG_TO_STDERR, LOG_FORMAT_TEXT, LOG_SYSLOG_SOCKET_DEFAULT};
static bool accepting;      /* the writer runs: log_msg() queues */
static bool stopping;       /* log_stop() asked the writer to finish */
static bool writer_done;    /* the writer wrote everything and left */
static pthread_t writer;    /* main thread only */
static bool detached;       /* main thread only: log_stop() left the writer behind */
static _Atomic bool queued; /* a cheap first look at `accepting`, without the lock */
/* stderr is a regular file (set by log_start()): no reader can stall it, so
 * log_msg() writes there itself, at once and in order, while nothing is
 * queued. A pipe, a socket (the journal) or a terminal gets the queue. */
static bool stderr_is_file;
static long writer_pid;
static char direct_line[LOG_LINE_MAX]; /* under `lock` */

/* ---- names ------------------------------------------------------------- */

static int parse_name(const char *text, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(text, names[i]) == 0)
            return (int)i;
    return -1;
}

#define PARSE_NAME(text, names) parse_name(text, names, sizeof names / sizeof names[0])

int log_level_parse(const char *text, enum log_level *out)
{
    int i = PARSE_NAME(text, level_names);
    if (i >= 0)
        *out = (enum log_level)i;
    return i >= 0 ? 0 : -1;
}

int log_destination_parse(const char *text, enum log_destination *out)
{
    int i = PARSE_NAME(text, destination_names);
    if (i >= 0)
        *out = (enum log_destination)i;
    return i >= 0 ? 0 : -1;
}

int log_format_parse(const char *text, enum log_format *out)
{
    int i = PARSE_NAME(text, format_names);
    if (i >= 0)
        *out = (enum log_format)i;
    return i >= 0 ? 0 : -1;
}

const char *log_level_name(enum log_level level)
{
    return (unsigned)level < sizeof level_names / sizeof level_names[0] ? level_names[level] : "?";
}

void log_set_level(enum log_level level)
{
    atomic_store_explicit(&current_level, (int)level, memory_order_relaxed);
}

enum log_level log_get_level(void)
{
    return (enum log_level)atomic_load_explicit(&current_level, memory_order_relaxed);
}

void log_configure(enum log_destination to, enum log_format format, const char *syslog_socket)
{
    pthread_mutex_lock(&lock);
    settings.to = to;
    settings.format = format;
    snprintf(settings.syslog_socket, sizeof settings.syslog_socket, "%s",
             syslog_socket ? syslog_socket : LOG_SYSLOG_SOCKET_DEFAULT);
    pthread_mutex_unlock(&lock);
}

uint64_t log_dropped_total(void)
{
    return log_queue_dropped(&queue);
}

/* ---- the writer ---------------------------------------------------------- */

/* What the writer gathers for one write to stderr. */
struct batch {
    char buf[LOG_BATCH_BYTES];
    size_t len;
    uint64_t lines; /* queued lines in buf (a drop report is not one) */
};

/* The writer's own buffers: one writer, and a stack is no place for them. */
static struct batch batch;
static char line[LOG_LINE_MAX];

/* Renders `r` into `out` (LOG_LINE_MAX bytes) as `s` asks. Returns its length. */
static size_t render_into(char *out, const struct settings *s, const struct log_record *r, long pid)
{
    size_t n = 0;
    if (s->to == LOG_TO_SYSLOG)
        n = log_line_syslog_header(out, (size_t)LOG_LINE_MAX, r, pid);
    bool newline = s->to == LOG_TO_STDERR;
    if (s->format == LOG_FORMAT_JSON)
        return n + log_line_json(out + n, (size_t)LOG_LINE_MAX - n, r, newline);
    if (s->to == LOG_TO_STDERR)
        return log_line_text(out, (size_t)LOG_LINE_MAX, r);
    size_t len = r->len < (size_t)LOG_LINE_MAX - n - 1 ? r->len : (size_t)LOG_LINE_MAX - n - 1;
    memcpy(out + n, r->text, len); /* syslog's header has the time and the level */
    out[n + len] = '\0';
    return n + len;
}

static size_t render(const struct settings *s, const struct log_record *r, long pid)
{
    return render_into(line, s, r, pid);
}

/* Writes the batch to stderr; lines that could not be written count as dropped. */
static void flush(void)
{
    if (batch.len > 0 && !log_sink_stderr(batch.buf, batch.len))
        log_queue_count_dropped(&queue, batch.lines);
    batch.len = 0;
    batch.lines = 0;
}

/* Writes one line (a queued one when `queued_line`: one that counts as
 * dropped if it cannot be written). With stderr, lines are gathered and
 * written when the batch is full, or by flush(). */
static void emit(const struct settings *s, struct log_sink *sink, const struct log_record *r,
                 bool queued_line, long pid)
{
    size_t n = render(s, r, pid);
    if (s->to == LOG_TO_SYSLOG) {
        if (!log_sink_syslog(sink, s->syslog_socket, line, n) && queued_line)
            log_queue_count_dropped(&queue, 1);
        return;
    }
    if (batch.len + n > sizeof batch.buf)
        flush(); /* empties the batch, written or counted as dropped */
    memcpy(batch.buf + batch.len, line, n);
    batch.len += n;
    batch.lines += queued_line;
}

/* Says how many lines were dropped since the last report. */
static void report_drops(const struct settings *s, struct log_sink *sink, uint64_t dropped,
                         uint64_t *reported, long pid)
{
    struct log_record r = {.level = LOG_LEVEL_WARN};
    clock_gettime(CLOCK_REALTIME, &r.time);
    int n = snprintf(r.text, sizeof r.text, "log: %llu lines dropped (the log reader was too slow)",
                     (unsigned long long)(dropped - *reported));
    r.len = n > 0 ? (size_t)n : 0;
    /* Reported even when this line fails too: those drops stay counted in
     * log_dropped_total(), and retrying would spin on a dead reader. */
    *reported = dropped;
    emit(s, sink, &r, false, pid);
}

static void *writer_main(void *arg)
{
    (void)arg;
    struct log_sink sink;
    log_sink_init(&sink);
    long pid = (long)getpid();
    uint64_t reported = 0;
    static struct log_record r;
    pthread_mutex_lock(&lock);
    for (;;) {
        while (!stopping && queue.lines == 0 && log_queue_dropped(&queue) == reported)
            pthread_cond_wait(&wake, &lock);
        if (queue.lines == 0 && log_queue_dropped(&queue) == reported)
            break; /* stopping, and everything is written */
        struct settings s = settings;
        pthread_mutex_unlock(&lock);
        uint64_t dropped = log_queue_dropped(&queue);
        if (dropped != reported)
            report_drops(&s, &sink, dropped, &reported, pid);
        /* Drops while these are written are reported next turn. */
        for (unsigned taken = 0; taken < LOG_TURN_LINES; taken++) {
            pthread_mutex_lock(&lock);
            bool got = log_queue_pop(&queue, &r);
            pthread_mutex_unlock(&lock);
            if (!got)
                break;
            emit(&s, &sink, &r, true, pid);
        }
        flush();
        pthread_mutex_lock(&lock);
    }
    accepting = false;
    writer_done = true;
    pthread_cond_broadcast(&finished);
    pthread_mutex_unlock(&lock);
    log_sink_close(&sink);
    return NULL;
}

int log_start(void)
{
    if (atomic_load(&queued))
        return 0;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&finished, &attr);
    pthread_condattr_destroy(&attr);
    pthread_cond_init(&wake, NULL);
    struct stat st;
    pthread_mutex_lock(&lock);
    stderr_is_file = fstat(STDERR_FILENO, &st) == 0 && S_ISREG(st.st_mode);
    writer_pid = (long)getpid();
    log_queue_init(&queue, ring, sizeof ring);
    accepting = true;
    stopping = writer_done = false;
    pthread_mutex_unlock(&lock);
    /* Signals are the main thread's: block them in the writer. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&writer, NULL, writer_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        pthread_mutex_lock(&lock);
        accepting = false;
        pthread_mutex_unlock(&lock);
        log_error("cannot start the log writer: %s; logging to stderr directly", strerror(rc));
        return -1;
    }
    atomic_store(&queued, true);
    return 0;
}

bool log_stop(void)
{
    if (!atomic_load(&queued))
        return true;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += LOG_STOP_GRACE;
    pthread_mutex_lock(&lock);
    stopping = true;
    pthread_cond_signal(&wake);
    int rc = 0;
    while (!writer_done && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&finished, &lock, &deadline);
    bool done = writer_done;
    pthread_mutex_unlock(&lock);
    if (done) {
        if (!detached)
            pthread_join(writer, NULL);
        atomic_store(&queued, false);
    } else if (!detached) {
        pthread_detach(writer); /* stuck on its reader: the process exits without it */
        detached = true;
    }
    return done;
}

/* ---- logging --------------------------------------------------------------- */

/* Before log_start() and after log_stop(): stderr, now, as text. */
static void write_now(const struct log_record *r)
{
    char text[LOG_MESSAGE_MAX + 128];
    size_t n = log_line_text(text, sizeof text, r);
    fwrite(text, 1, n, stderr);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if ((int)level < atomic_load_explicit(&current_level, memory_order_relaxed))
        return;
    struct log_record r = {.level = level};
    clock_gettime(CLOCK_REALTIME, &r.time);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r.text, sizeof r.text, fmt, ap);
    va_end(ap);
    r.len = n < 0 ? 0 : (size_t)n < sizeof r.text ? (size_t)n : sizeof r.text - 1;
    if (atomic_load(&queued)) {
        pthread_mutex_lock(&lock);
        bool handed = accepting;
        if (handed && stderr_is_file && settings.to == LOG_TO_STDERR && queue.lines == 0) {
            size_t len = render_into(direct_line, &settings, &r, writer_pid);
            log_sink_stderr(direct_line, len);
            pthread_mutex_unlock(&lock);
            return;
        }
        if (handed) {
            log_queue_push(&queue, &r.time, level, r.text, r.len);
            pthread_cond_signal(&wake);
        }
        pthread_mutex_unlock(&lock);
        if (handed)
            return;
    }
    write_now(&r);
}

char *log_escape(char *out, size_t outsz, const char *in, size_t len)
{
    size_t o = 0;
    if (outsz == 0)
        return out;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            if (o + 1 >= outsz)
                break;
            out[o++] = (char)c;
        } else {
            if (o + 4 >= outsz)
                break;
            snprintf(out + o, outsz - o, "\\x%02x", c);
            o += 4;
        }
    }
    out[o] = '\0';
    return out;
}
