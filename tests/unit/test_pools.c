/* buf_pool and pipe_pool: what a session takes is usable and empty, what it
 * gives back is reused, and the pools keep no more spares than their bound
 * (extra buffers are freed, extra pipes closed). */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "buf_pool.h"
#include "pipe_pool.h"

static void test_buffer_taken_is_empty_and_whole(void **state)
{
    (void)state;
    struct buf_pool p;
    buf_pool_init(&p, 4);
    struct buf *b = buf_pool_take(&p);
    assert_non_null(b);
    assert_int_equal(b->len, 0);
    assert_int_equal(buf_space(b), BUF_CAPACITY);
    memset(b->data, 'x', BUF_CAPACITY); /* the whole capacity is usable */
    b->len = BUF_CAPACITY;
    assert_int_equal(p.in_use, 1);
    buf_pool_give(&p, b);
    assert_int_equal(p.in_use, 0);
    assert_int_equal(p.nfree, 1);
    struct buf *again = buf_pool_take(&p);
    assert_ptr_equal(again, b); /* reused, not a new malloc */
    assert_int_equal(again->len, 0);
    buf_pool_give(&p, again);
    buf_pool_drain(&p);
    assert_int_equal(p.nfree, 0);
}

static void test_buffer_spares_are_bounded(void **state)
{
    (void)state;
    struct buf_pool p;
    buf_pool_init(&p, 2);
    struct buf *b[5];
    for (int i = 0; i < 5; i++)
        assert_non_null(b[i] = buf_pool_take(&p));
    assert_int_equal(p.in_use, 5);
    for (int i = 0; i < 5; i++)
        buf_pool_give(&p, b[i]); /* three are freed (ASan would see a leak otherwise) */
    assert_int_equal(p.nfree, 2);
    assert_int_equal(p.in_use, 0);
    buf_pool_drain(&p);
}

static void test_give_if_empty_keeps_bytes(void **state)
{
    (void)state;
    struct buf_pool p;
    buf_pool_init(&p, 4);
    struct buf *slot = NULL;
    buf_pool_give_if_empty(&p, &slot); /* an empty slot is fine */
    assert_null(slot);
    slot = buf_pool_take(&p);
    assert_true(buf_append_str(slot, "in flight"));
    buf_pool_give_if_empty(&p, &slot);
    assert_non_null(slot); /* bytes in flight are never given away */
    assert_memory_equal(slot->data, "in flight", 9);
    buf_consume(slot, slot->len);
    buf_pool_give_if_empty(&p, &slot);
    assert_null(slot);
    assert_int_equal(p.in_use, 0);
    assert_int_equal(buf_slot_len(slot), 0);
    assert_int_equal(buf_slot_space(slot), BUF_CAPACITY);
    buf_pool_drain(&p);
}

static bool fd_open(int fd)
{
    return fcntl(fd, F_GETFD) >= 0 || errno != EBADF;
}

static void test_pipe_moves_bytes_and_is_reused(void **state)
{
    (void)state;
    struct pipe_pool p;
    assert_int_equal(pipe_pool_init(&p, 2), 0);
    int fds[2];
    long size = pipe_pool_take(&p, fds);
    assert_true(size >= 4096);
    assert_int_equal(fcntl(fds[1], F_GETPIPE_SZ), size); /* what it says it holds */
    assert_int_equal(write(fds[1], "abc", 3), 3);
    char got[4] = {0};
    assert_int_equal(read(fds[0], got, sizeof got), 3);
    assert_string_equal(got, "abc");
    assert_int_equal(read(fds[0], got, sizeof got), -1); /* non-blocking */
    assert_int_equal(errno, EAGAIN);
    int first[2] = {fds[0], fds[1]};
    pipe_pool_give(&p, fds, (size_t)size);
    assert_int_equal(fds[0], -1);
    assert_true(fd_open(first[0]));
    assert_int_equal(pipe_pool_take(&p, fds), size);
    assert_int_equal(fds[0], first[0]);
    pipe_pool_give(&p, fds, (size_t)size);
    pipe_pool_free(&p);
    assert_false(fd_open(first[0]));
    assert_false(fd_open(first[1]));
}

static void test_pipe_spares_bounded_and_discard_closes(void **state)
{
    (void)state;
    struct pipe_pool p;
    assert_int_equal(pipe_pool_init(&p, 1), 0);
    int a[2], b[2], c[2];
    assert_true(pipe_pool_take(&p, a) > 0);
    assert_true(pipe_pool_take(&p, b) > 0);
    assert_true(pipe_pool_take(&p, c) > 0);
    assert_int_equal(p.in_use, 3);
    int b0 = b[0], c0 = c[0];
    pipe_pool_give(&p, a, 4096);
    pipe_pool_give(&p, b, 4096); /* beyond the bound: closed */
    assert_false(fd_open(b0));
    assert_int_equal(write(c[1], "x", 1), 1);
    pipe_pool_discard(&p, c); /* may hold bytes: closed, never reused */
    assert_false(fd_open(c0));
    assert_int_equal(c[0], -1);
    assert_int_equal(p.in_use, 0);
    assert_int_equal(p.nfree, 1);
    int none[2] = {-1, -1};
    pipe_pool_give(&p, none, 0); /* no pipe held: nothing to do */
    assert_int_equal(p.nfree, 1);
    pipe_pool_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buffer_taken_is_empty_and_whole),
        cmocka_unit_test(test_buffer_spares_are_bounded),
        cmocka_unit_test(test_give_if_empty_keeps_bytes),
        cmocka_unit_test(test_pipe_moves_bytes_and_is_reused),
        cmocka_unit_test(test_pipe_spares_bounded_and_discard_closes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
