/* clienthello — see clienthello.h.
 *
 * Two stages. assemble() walks the TLS record layer from the first byte,
 * validating each record header as soon as its bytes arrive, and gathers the
 * handshake message's fragments into a bounded local array. parse_hello() then
 * reads the complete ClientHello through a bounded reader: every vector is
 * taken as a sub-reader of its container, so no length can point outside it.
 *
 * References: RFC 8446 §4.1.2 (ClientHello) and §5.1 (record layer),
 * RFC 6066 §3 (server_name), RFC 7301 §3.1 (ALPN), RFC 8701 (GREASE). */
#include <string.h>

#include "clienthello.h"

enum {
    RECORD_HEADER_LEN = 5,
    RECORD_MAX_FRAGMENT = 16384, /* 2^14, RFC 8446 §5.1 */
    CONTENT_TYPE_HANDSHAKE = 22,
    HANDSHAKE_HEADER_LEN = 4,
    HANDSHAKE_CLIENT_HELLO = 1,
    HELLO_RANDOM_LEN = 32,
    SESSION_ID_MAX = 32,
    EXT_SERVER_NAME = 0,
    EXT_ALPN = 16,
    EXT_SUPPORTED_VERSIONS = 43,
    SERVER_NAME_HOST_NAME = 0,
    HOST_NAME_MAX = 255,
    ALPN_NAME_MAX = 63, /* longest name kept: struct clienthello alpn[][64] less the NUL */
};

_Static_assert(sizeof(((struct clienthello *)0)->sni) > HOST_NAME_MAX, "sni must hold a host_name");
_Static_assert(sizeof(((struct clienthello *)0)->alpn[0]) > ALPN_NAME_MAX,
               "alpn[] must hold a kept name");

/* ---- bounded reader ---- */

/* A view of `len` bytes at `p`. Every read either succeeds entirely and
 * advances the view, or fails (returns false) and leaves it unchanged. */
struct reader {
    const uint8_t *p;
    size_t len;
};

static bool read_u8(struct reader *r, uint8_t *v)
{
    if (r->len < 1)
        return false;
    *v = r->p[0];
    r->p += 1;
    r->len -= 1;
    return true;
}

static bool read_u16(struct reader *r, uint16_t *v)
{
    if (r->len < 2)
        return false;
    *v = (uint16_t)(r->p[0] << 8 | r->p[1]);
    r->p += 2;
    r->len -= 2;
    return true;
}

static bool read_u24(struct reader *r, uint32_t *v)
{
    if (r->len < 3)
        return false;
    *v = (uint32_t)r->p[0] << 16 | (uint32_t)r->p[1] << 8 | r->p[2];
    r->p += 3;
    r->len -= 3;
    return true;
}

/* Takes the next `n` bytes as the sub-view `*sub`. */
static bool read_bytes(struct reader *r, size_t n, struct reader *sub)
{
    if (r->len < n)
        return false;
    sub->p = r->p;
    sub->len = n;
    r->p += n;
    r->len -= n;
    return true;
}

/* Takes a vector with a one-byte length prefix as `*sub`. */
static bool read_vector8(struct reader *r, struct reader *sub)
{
    struct reader saved = *r;
    uint8_t n;
    if (read_u8(r, &n) && read_bytes(r, n, sub))
        return true;
    *r = saved;
    return false;
}

/* Takes a vector with a two-byte length prefix as `*sub`. */
static bool read_vector16(struct reader *r, struct reader *sub)
{
    struct reader saved = *r;
    uint16_t n;
    if (read_u16(r, &n) && read_bytes(r, n, sub))
        return true;
    *r = saved;
    return false;
}

/* ---- record layer ---- */

/* Checks the `have` (0..5) bytes of a record header that have arrived, so a bad
 * prefix is refused as early as possible. Returns OK with *fragment_len set
 * when the header is complete and valid, NEED_MORE when it is a valid prefix,
 * NOT_TLS when the stream's very first byte is not a handshake record, and
 * MALFORMED otherwise (including a non-handshake record after the first). */
static enum clienthello_result check_record_header(const uint8_t *h, size_t have, bool first,
                                                   size_t *fragment_len)
{
    if (have >= 1 && h[0] != CONTENT_TYPE_HANDSHAKE)
        return first ? CLIENTHELLO_NOT_TLS : CLIENTHELLO_MALFORMED;
    if (have >= 2 && h[1] != 3)
        return CLIENTHELLO_MALFORMED;
    if (have >= 3 && (h[2] < 1 || h[2] > 4)) /* 0x0301 .. 0x0304 */
        return CLIENTHELLO_MALFORMED;
    if (have < RECORD_HEADER_LEN)
        return CLIENTHELLO_NEED_MORE;
    size_t n = (size_t)h[3] << 8 | h[4];
    if (n == 0 || n > RECORD_MAX_FRAGMENT)
        return CLIENTHELLO_MALFORMED;
    *fragment_len = n;
    return CLIENTHELLO_OK;
}

/* Reads the handshake header from the first `have` gathered message bytes.
 * Returns MALFORMED if the message is not a ClientHello, NEED_MORE until the
 * header is complete, else OK with *msg_len = header + body length. */
static enum clienthello_result check_handshake_header(const uint8_t *msg, size_t have,
                                                      size_t *msg_len)
{
    struct reader r = {msg, have};
    uint8_t type;
    uint32_t body_len;
    if (!read_u8(&r, &type))
        return CLIENTHELLO_NEED_MORE;
    if (type != HANDSHAKE_CLIENT_HELLO)
        return CLIENTHELLO_MALFORMED;
    if (!read_u24(&r, &body_len))
        return CLIENTHELLO_NEED_MORE;
    *msg_len = HANDSHAKE_HEADER_LEN + (size_t)body_len;
    return CLIENTHELLO_OK;
}

static size_t min_size(size_t a, size_t b)
{
    return a < b ? a : b;
}

/* Walks the records at the start of data[0..len) and gathers the handshake
 * message they carry into msg[0..CLIENTHELLO_MAX_BYTES). On OK, *msg_len is the
 * message's length (header included) and *record_bytes the length of the
 * records that carried it; the last of them must end exactly with the message.
 *
 * TOO_LARGE is returned as soon as the records needed (by their headers and the
 * message length) are known to exceed CLIENTHELLO_MAX_BYTES, so a caller that
 * has buffered CLIENTHELLO_MAX_BYTES bytes never gets NEED_MORE. */
static enum clienthello_result assemble(const uint8_t *data, size_t len, uint8_t *msg,
                                        size_t *msg_len, size_t *record_bytes)
{
    size_t off = 0;  /* start of the current record in data */
    size_t have = 0; /* message bytes gathered into msg */
    size_t need = 0; /* the message's total length; 0 until its header is gathered */

    for (;;) {
        size_t fragment_len = 0;
        enum clienthello_result r = check_record_header(
            data + off, min_size(len - off, RECORD_HEADER_LEN), off == 0, &fragment_len);
        if (r != CLIENTHELLO_OK)
            return r;
        size_t record_end = off + RECORD_HEADER_LEN + fragment_len;
        if (record_end > CLIENTHELLO_MAX_BYTES)
            return CLIENTHELLO_TOO_LARGE;

        /* have <= off and record_end <= CLIENTHELLO_MAX_BYTES, so it fits. */
        size_t have_after_record = have + fragment_len;
        size_t got = min_size(fragment_len, len - off - RECORD_HEADER_LEN);
        memcpy(msg + have, data + off + RECORD_HEADER_LEN, got);
        have += got;

        if (need == 0) {
            r = check_handshake_header(msg, have, &need);
            if (r == CLIENTHELLO_MALFORMED)
                return r;
        }
        if (need != 0) {
            /* Handshake bytes after the ClientHello in its last record: no
             * client sends them, and they would make record_bytes ambiguous. */
            if (have_after_record > need)
                return CLIENTHELLO_MALFORMED;
            size_t missing = need - have_after_record;
            size_t needed_end = record_end + (missing ? RECORD_HEADER_LEN + missing : 0);
            if (needed_end > CLIENTHELLO_MAX_BYTES)
                return CLIENTHELLO_TOO_LARGE;
        }
        if (got < fragment_len)
            return CLIENTHELLO_NEED_MORE;

        off = record_end;
        if (need != 0 && have == need) {
            *msg_len = need;
            *record_bytes = off;
            return CLIENTHELLO_OK;
        }
    }
}

/* ---- extensions ---- */

/* Validates a host_name and stores it lower-cased and NUL-terminated in
 * out[0..HOST_NAME_MAX]. It must be 1..255 bytes of letters, digits, '-', '.'
 * and '_', and must not start with a dot or hold an empty label ("a..b"); a
 * single trailing dot is kept as sent. Anything else could reach logs and
 * backends, so it fails the whole ClientHello. */
static bool copy_host_name(const struct reader *name, char *out)
{
    if (name->len < 1 || name->len > HOST_NAME_MAX || name->p[0] == '.')
        return false;
    for (size_t i = 0; i < name->len; i++) {
        uint8_t c = name->p[i];
        if (c >= 'A' && c <= 'Z')
            c = (uint8_t)(c - 'A' + 'a');
        else if (c == '.' && name->p[i - 1] == '.') /* i > 0: p[0] is not '.' */
            return false;
        else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
                   c == '_'))
            return false;
        out[i] = (char)c;
    }
    out[name->len] = '\0';
    return true;
}

/* server_name (RFC 6066 §3): a non-empty list of {type, opaque name<1..2^16-1>}.
 * Takes the host_name entry; entries of other types are skipped. A second
 * host_name is refused (the RFC forbids it, and a backend might pick the
 * other one than sallyport routed on). */
static bool parse_server_name(struct reader ext, struct clienthello *out)
{
    struct reader list;
    if (!read_vector16(&ext, &list) || ext.len != 0 || list.len == 0)
        return false;
    while (list.len > 0) {
        uint8_t type;
        struct reader name;
        if (!read_u8(&list, &type) || !read_vector16(&list, &name) || name.len == 0)
            return false;
        if (type != SERVER_NAME_HOST_NAME)
            continue;
        if (out->has_sni || !copy_host_name(&name, out->sni))
            return false;
        out->has_sni = true;
    }
    return true;
}

/* True for a name worth keeping: short enough for struct clienthello and made
 * of visible ASCII only (0x21..0x7e), so it is safe to log. */
static bool alpn_name_keepable(const struct reader *name)
{
    if (name->len > ALPN_NAME_MAX)
        return false;
    for (size_t i = 0; i < name->len; i++) {
        if (name->p[i] < 0x21 || name->p[i] > 0x7e)
            return false;
    }
    return true;
}

/* ALPN (RFC 7301 §3.1): a non-empty list of names of 1..255 bytes. Keeps the
 * first CLIENTHELLO_MAX_ALPN keepable names in order; others are skipped. */
static bool parse_alpn(struct reader ext, struct clienthello *out)
{
    struct reader list;
    if (!read_vector16(&ext, &list) || ext.len != 0 || list.len == 0)
        return false;
    while (list.len > 0) {
        struct reader name;
        if (!read_vector8(&list, &name) || name.len == 0)
            return false;
        if (out->alpn_count < CLIENTHELLO_MAX_ALPN && alpn_name_keepable(&name)) {
            memcpy(out->alpn[out->alpn_count], name.p, name.len);
            out->alpn[out->alpn_count][name.len] = '\0';
            out->alpn_count++;
        }
    }
    return true;
}

/* GREASE versions (RFC 8701) are 0x0A0A, 0x1A1A, ... 0xFAFA. */
static bool is_grease(uint16_t v)
{
    return (v & 0x0f0f) == 0x0a0a && (v >> 8) == (v & 0xff);
}

/* supported_versions in a ClientHello (RFC 8446 §4.2.1): versions<2..254>.
 * Raises out->max_version to the highest non-GREASE version listed. */
static bool parse_supported_versions(struct reader ext, struct clienthello *out)
{
    struct reader list;
    if (!read_vector8(&ext, &list) || ext.len != 0 || list.len < 2 || list.len % 2 != 0)
        return false;
    uint16_t v, max = 0;
    while (read_u16(&list, &v)) { /* the length is even: this ends with the list */
        if (!is_grease(v) && v > max)
            max = v;
    }
    if (max != 0)
        out->max_version = max;
    return true;
}

/* Walks the extensions block, which must be a whole number of extensions with
 * no type repeated (RFC 8446 §4.2), and reads the three we use. */
static bool parse_extensions(struct reader block, struct clienthello *out)
{
    uint8_t seen[65536 / 8] = {0};
    while (block.len > 0) {
        uint16_t type;
        struct reader ext;
        if (!read_u16(&block, &type) || !read_vector16(&block, &ext))
            return false;
        uint8_t bit = (uint8_t)(1u << (type % 8));
        if (seen[type / 8] & bit)
            return false;
        seen[type / 8] |= bit;

        bool ok = true;
        switch (type) {
        case EXT_SERVER_NAME:
            ok = parse_server_name(ext, out);
            break;
        case EXT_ALPN:
            ok = parse_alpn(ext, out);
            break;
        case EXT_SUPPORTED_VERSIONS:
            ok = parse_supported_versions(ext, out);
            break;
        default:
            break;
        }
        if (!ok)
            return false;
    }
    return true;
}

/* ---- ClientHello ---- */

/* Parses a complete handshake message msg[0..msg_len) whose header has been
 * checked. Returns true and fills *out if it is a well-formed ClientHello that
 * its length covers exactly. */
static bool parse_hello(const uint8_t *msg, size_t msg_len, struct clienthello *out)
{
    struct reader r = {msg + HANDSHAKE_HEADER_LEN, msg_len - HANDSHAKE_HEADER_LEN};
    struct reader random, session_id, cipher_suites, compression_methods, extensions;
    uint16_t legacy_version;

    if (!read_u16(&r, &legacy_version) || (legacy_version >> 8) != 3)
        return false;
    if (!read_bytes(&r, HELLO_RANDOM_LEN, &random))
        return false;
    if (!read_vector8(&r, &session_id) || session_id.len > SESSION_ID_MAX)
        return false;
    if (!read_vector16(&r, &cipher_suites) || cipher_suites.len < 2 || cipher_suites.len % 2 != 0)
        return false;
    if (!read_vector8(&r, &compression_methods) || compression_methods.len < 1)
        return false;

    out->max_version = legacy_version;
    if (r.len == 0) /* no extensions at all */
        return true;
    if (!read_vector16(&r, &extensions) || r.len != 0)
        return false;
    return parse_extensions(extensions, out);
}

/* *out is zeroed first and filled only on OK, so after any other result it
 * holds no half-parsed name. The stack holds one CLIENTHELLO_MAX_BYTES copy of
 * the message (plus 8 KiB for duplicate-extension tracking); nothing is
 * allocated and nothing outside data[0..len) is read. */
enum clienthello_result clienthello_parse(const uint8_t *data, size_t len, struct clienthello *out)
{
    uint8_t msg[CLIENTHELLO_MAX_BYTES];
    size_t msg_len = 0, record_bytes = 0;

    memset(out, 0, sizeof *out);
    if (len == 0) /* data may be NULL */
        return CLIENTHELLO_NEED_MORE;
    enum clienthello_result r = assemble(data, len, msg, &msg_len, &record_bytes);
    if (r != CLIENTHELLO_OK)
        return r;
    if (!parse_hello(msg, msg_len, out)) {
        memset(out, 0, sizeof *out);
        return CLIENTHELLO_MALFORMED;
    }
    out->record_bytes = record_bytes;
    return CLIENTHELLO_OK;
}

const char *clienthello_result_name(enum clienthello_result result)
{
    switch (result) {
    case CLIENTHELLO_OK:
        return "ok";
    case CLIENTHELLO_NEED_MORE:
        return "need more";
    case CLIENTHELLO_NOT_TLS:
        return "not TLS";
    case CLIENTHELLO_MALFORMED:
        return "malformed";
    case CLIENTHELLO_TOO_LARGE:
        return "too large";
    }
    return "?";
}
