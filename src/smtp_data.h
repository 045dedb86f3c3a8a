/* smtp_data — a pure, incremental reader of the SMTP DATA stream (RFC 5321
 * 4.1.1.4, 4.5.2). No I/O: it is fed the client's bytes after the "354" in
 * chunks of any size and
 *   - undoes dot-stuffing (a leading "." on a line is deleted),
 *   - finds the end-of-data "<CRLF>.<CRLF>" (the first CRLF may be the one
 *     that ended the DATA command: ".\r\n" at once is an empty message),
 *     wherever the chunk boundaries fall,
 *   - hands the message bytes (CRLF kept) to a sink as they are decoded,
 *   - enforces a maximum size, and
 *   - rejects any bare CR or bare LF in the message (SMTP smuggling).
 *
 * Only "\r\n.\r\n" ends the data. A bare LF or CR never starts a line, so
 * "\n.\n", "\n.\r\n", "\r.\r" and "\r\n.\n" are message content; the message
 * they are in is then refused once the real end-of-data arrives, and whatever
 * follows them is never read as commands. */
#ifndef SALLYPORT_SMTP_DATA_H
#define SALLYPORT_SMTP_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum smtp_data_result {
    SMTP_DATA_MORE,     /* end-of-data not seen yet: feed more bytes */
    SMTP_DATA_OK,       /* end-of-data seen: the message is complete and valid */
    SMTP_DATA_TOO_BIG,  /* end-of-data seen: the message exceeded max_size */
    SMTP_DATA_BARE_EOL, /* end-of-data seen: the message held a bare CR or LF */
};

/* Where the reader is in the stream; private to smtp_data.c. */
enum smtp_data_state {
    SMTP_DATA_LINE_START, /* at the start of a line (after CRLF, or at the start) */
    SMTP_DATA_TEXT,       /* inside a line */
    SMTP_DATA_CR,         /* just read a CR: it ends the line only if LF follows */
    SMTP_DATA_DOT,        /* read "." at the start of a line */
    SMTP_DATA_DOT_CR,     /* read ".\r" at the start of a line */
    SMTP_DATA_DONE,       /* read the end-of-data; nothing more is consumed */
};

/* Receives decoded message bytes, in order. `arg` is the caller's. */
typedef void smtp_data_sink(void *arg, const uint8_t *bytes, size_t len);

struct smtp_data {
    enum smtp_data_state state;
    size_t max_size; /* message bytes allowed (after unstuffing) */
    size_t size;     /* message bytes seen so far, also past max_size */
    bool too_big;    /* size exceeded max_size: nothing more goes to the sink */
    bool bare_eol;   /* a bare CR or LF was seen: nothing more goes to the sink */
};

/* Starts reading one message of at most `max_size` bytes. */
void smtp_data_init(struct smtp_data *d, size_t max_size);

/* Feeds `len` bytes of the client stream. Decoded message bytes go to
 * sink(arg, ...) until the message turns out too big or bad; the bytes handed
 * over for a message that ends TOO_BIG or BARE_EOL must be discarded by the
 * caller. Sets *consumed to the bytes used: all of them while the result is
 * SMTP_DATA_MORE, and up to and including the end-of-data otherwise, so that
 * pipelined commands after the dot stay with the caller. Once the end-of-data
 * has been seen, further calls consume nothing and return the same result. */
enum smtp_data_result smtp_data_feed(struct smtp_data *d, const uint8_t *in, size_t len,
                                     size_t *consumed, smtp_data_sink *sink, void *arg);

/* The result for a reader whose end-of-data has been seen. */
enum smtp_data_result smtp_data_result(const struct smtp_data *d);

#endif
