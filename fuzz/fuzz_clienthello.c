/* libFuzzer target for clienthello_parse().
 *
 *   clang -fsanitize=fuzzer,address,undefined -Isrc src/clienthello.c fuzz/fuzz_clienthello.c \
 *       -o fuzz_clienthello
 *   ./fuzz_clienthello -max_total_time=60 fuzz/corpus/clienthello
 *
 * Besides memory errors (ASan/UBSan), it aborts when a result breaks the
 * parser's contract: an OK result must describe a sane ClientHello that parses
 * the same from its own record bytes, and a caller that has buffered
 * CLIENTHELLO_MAX_BYTES must never be told NEED_MORE. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "clienthello.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok)
{
    if (!ok)
        abort();
}

/* strnlen without needing POSIX feature macros under -std=c11. */
static size_t bounded_len(const char *s, size_t max)
{
    size_t n = 0;
    while (n < max && s[n] != '\0')
        n++;
    return n;
}

static int is_sni_byte(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_';
}

/* The fields of an OK result are within their documented shapes. */
static void check_ok_result(const struct clienthello *ch, size_t size)
{
    check(ch->record_bytes >= 5 + 4 + 2 + 32 && ch->record_bytes <= size);
    check(ch->record_bytes <= CLIENTHELLO_MAX_BYTES);
    if (ch->has_sni) {
        size_t n = bounded_len(ch->sni, sizeof ch->sni);
        check(n >= 1 && n < sizeof ch->sni && ch->sni[0] != '.');
        for (size_t i = 0; i < n; i++)
            check(is_sni_byte(ch->sni[i]));
    } else {
        check(ch->sni[0] == '\0');
    }
    check(ch->alpn_count <= CLIENTHELLO_MAX_ALPN);
    for (size_t i = 0; i < ch->alpn_count; i++) {
        size_t n = bounded_len(ch->alpn[i], sizeof ch->alpn[i]);
        check(n >= 1 && n < sizeof ch->alpn[i]);
        for (size_t j = 0; j < n; j++)
            check(ch->alpn[i][j] > ' ' && ch->alpn[i][j] < 0x7f);
    }
}

static void check_same(const struct clienthello *a, const struct clienthello *b)
{
    check(a->has_sni == b->has_sni && strcmp(a->sni, b->sni) == 0);
    check(a->alpn_count == b->alpn_count);
    for (size_t i = 0; i < a->alpn_count; i++)
        check(strcmp(a->alpn[i], b->alpn[i]) == 0);
    check(a->max_version == b->max_version && a->record_bytes == b->record_bytes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct clienthello ch, again;
    enum clienthello_result r = clienthello_parse(data, size, &ch);

    check(r == CLIENTHELLO_OK || r == CLIENTHELLO_NEED_MORE || r == CLIENTHELLO_NOT_TLS ||
          r == CLIENTHELLO_MALFORMED || r == CLIENTHELLO_TOO_LARGE);
    check(strcmp(clienthello_result_name(r), "?") != 0);
    if (size >= CLIENTHELLO_MAX_BYTES)
        check(r != CLIENTHELLO_NEED_MORE);
    if (size > 0)
        check((r == CLIENTHELLO_NOT_TLS) == (data[0] != 22));

    if (r == CLIENTHELLO_OK) {
        check_ok_result(&ch, size);
        /* Bytes after the hello's records do not matter; one byte less is a prefix. */
        check(clienthello_parse(data, ch.record_bytes, &again) == CLIENTHELLO_OK);
        check_same(&ch, &again);
        check(clienthello_parse(data, ch.record_bytes - 1, &again) == CLIENTHELLO_NEED_MORE);
    }
    return 0;
}
