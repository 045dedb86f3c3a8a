#include "smtp_data.h"

void smtp_data_init(struct smtp_data *d, size_t max_size)
{
    d->state = SMTP_DATA_LINE_START;
    d->max_size = max_size;
    d->size = 0;
    d->too_big = false;
    d->bare_eol = false;
}

enum smtp_data_result smtp_data_result(const struct smtp_data *d)
{
    if (d->state != SMTP_DATA_DONE)
        return SMTP_DATA_MORE;
    if (d->bare_eol)
        return SMTP_DATA_BARE_EOL;
    if (d->too_big)
        return SMTP_DATA_TOO_BIG;
    return SMTP_DATA_OK;
}

/* Counts `len` message bytes and passes them on while the message is still
 * acceptable. Once it is too big or bad, nothing more reaches the sink. */
static void emit(struct smtp_data *d, const uint8_t *bytes, size_t len, smtp_data_sink *sink,
                 void *arg)
{
    if (len == 0)
        return;
    d->size = len > SIZE_MAX - d->size ? SIZE_MAX : d->size + len;
    if (d->bare_eol || d->too_big)
        return;
    if (d->size > d->max_size) {
        d->too_big = true;
        return;
    }
    sink(arg, bytes, len);
}

/* The state after a bare CR or LF: the message is refused, but reading goes
 * on (as inside a line) until the real end-of-data. `c` is the byte that
 * followed; a CR may itself begin a CRLF. */
static enum smtp_data_state bare(struct smtp_data *d, uint8_t c)
{
    d->bare_eol = true;
    return c == '\r' ? SMTP_DATA_CR : SMTP_DATA_TEXT;
}

/* The loop keeps `run`, the start of the input bytes that are message bytes
 * not yet emitted. Bytes that are not message bytes (the stuffing dot, the
 * terminator) end a run; a CR is held back until its LF shows that it belongs
 * to a CRLF, which matters only when a chunk ends right after it. */
enum smtp_data_result smtp_data_feed(struct smtp_data *d, const uint8_t *in, size_t len,
                                     size_t *consumed, smtp_data_sink *sink, void *arg)
{
    size_t i = 0;
    size_t run = 0;

    while (i < len && d->state != SMTP_DATA_DONE) {
        if (d->state == SMTP_DATA_TEXT) {
            while (i < len && in[i] != '\r' && in[i] != '\n')
                i++;
            if (i == len)
                break;
        }
        uint8_t c = in[i];
        switch (d->state) {
        case SMTP_DATA_LINE_START:
            if (c == '.') {
                emit(d, in + run, i - run, sink, arg);
                run = i + 1;
                d->state = SMTP_DATA_DOT;
            } else if (c == '\r') {
                d->state = SMTP_DATA_CR;
            } else if (c == '\n') {
                d->state = bare(d, c);
            } else {
                d->state = SMTP_DATA_TEXT;
            }
            break;
        case SMTP_DATA_TEXT:
            d->state = c == '\r' ? SMTP_DATA_CR : bare(d, c);
            break;
        case SMTP_DATA_CR:
            if (c == '\n') {
                if (i == 0) /* the CR came in an earlier chunk and was held back */
                    emit(d, (const uint8_t *)"\r", 1, sink, arg);
                d->state = SMTP_DATA_LINE_START;
            } else {
                d->state = bare(d, c);
            }
            break;
        case SMTP_DATA_DOT:
            if (c == '\r') {
                run = i + 1; /* not a message byte if the LF follows; else the message is bad */
                d->state = SMTP_DATA_DOT_CR;
            } else if (c == '\n') {
                d->state = bare(d, c);
            } else {
                d->state = SMTP_DATA_TEXT; /* stuffed: the dot is dropped, `c` starts the run */
            }
            break;
        case SMTP_DATA_DOT_CR:
            d->state = c == '\n' ? SMTP_DATA_DONE : bare(d, c);
            break;
        case SMTP_DATA_DONE:
            break;
        }
        i++;
    }

    if (d->state != SMTP_DATA_DONE) {
        /* In state CR the last byte read is that CR (if this chunk had any
         * bytes): hold it back. */
        size_t end = d->state == SMTP_DATA_CR && i > 0 ? i - 1 : i;
        if (end > run)
            emit(d, in + run, end - run, sink, arg);
    }
    *consumed = i;
    return smtp_data_result(d);
}
