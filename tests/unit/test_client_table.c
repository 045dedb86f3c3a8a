/* client_table: the per-address connection count and rate limits. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "client_table.h"

/* An address of either family, as accept() fills it in. */
static struct sockaddr_storage addr(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, text, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
    } else {
        assert_int_equal(inet_pton(AF_INET6, text, &in6->sin6_addr), 1);
        in6->sin6_family = AF_INET6;
    }
    return ss;
}

static enum client_verdict admit(struct client_table *t, const char *text, double now, int *slot)
{
    struct sockaddr_storage ss = addr(text);
    return client_table_admit(t, (struct sockaddr *)&ss, now, slot);
}

static unsigned count(struct client_table *t, const char *text)
{
    struct sockaddr_storage ss = addr(text);
    return client_table_count(t, (struct sockaddr *)&ss);
}

static void test_count_limit(void **state)
{
    (void)state;
    struct client_table *t = client_table_new(64, 3, 0, NULL, 0);
    int slots[3], slot;
    for (int i = 0; i < 3; i++)
        assert_int_equal(admit(t, "192.0.2.1", 0, &slots[i]), CLIENT_ADMITTED);
    assert_int_equal(admit(t, "192.0.2.1", 0, &slot), CLIENT_TOO_MANY);
    assert_int_equal(slot, -1);
    assert_int_equal(admit(t, "192.0.2.2", 0, &slot), CLIENT_ADMITTED); /* another address */
    assert_int_equal(count(t, "192.0.2.1"), 3);
    client_table_release(t, slots[1]);
    assert_int_equal(count(t, "192.0.2.1"), 2);
    assert_int_equal(admit(t, "192.0.2.1", 0, &slot), CLIENT_ADMITTED);
    client_table_release(t, -1); /* ignored */
    client_table_free(t);
}

/* A reload's new limits apply to the counts kept so far. */
static void test_new_limits_keep_counts(void **state)
{
    (void)state;
    struct client_prefix loopback;
    assert_int_equal(client_prefix_parse("127.0.0.0/8", &loopback), 0);
    struct client_table *t = client_table_new(64, 3, 0, NULL, 0);
    int slots[2], slot;
    for (int i = 0; i < 2; i++)
        assert_int_equal(admit(t, "127.0.0.1", 0, &slots[i]), CLIENT_ADMITTED);
    assert_int_equal(client_table_set_limits(t, 2, 0, NULL, 0), 0);
    assert_int_equal(admit(t, "127.0.0.1", 0, &slot), CLIENT_TOO_MANY);
    client_table_release(t, slots[0]);
    assert_int_equal(admit(t, "127.0.0.1", 0, &slots[0]), CLIENT_ADMITTED);
    /* Exceptions can change too; counted connections still release. */
    assert_int_equal(client_table_set_limits(t, 2, 0, &loopback, 1), 0);
    assert_int_equal(admit(t, "127.0.0.1", 0, &slot), CLIENT_ADMITTED);
    assert_int_equal(slot, -1);
    client_table_release(t, slots[0]);
    client_table_release(t, slots[1]);
    assert_int_equal(count(t, "127.0.0.1"), 0);
    client_table_free(t);
}

static void test_rate_limit(void **state)
{
    (void)state;
    struct client_table *t = client_table_new(64, 0, 2, NULL, 0);
    int slot;
    assert_int_equal(admit(t, "192.0.2.1", 100.0, &slot), CLIENT_ADMITTED);
    client_table_release(t, slot); /* closing does not give the token back */
    assert_int_equal(admit(t, "192.0.2.1", 100.0, &slot), CLIENT_ADMITTED);
    assert_int_equal(admit(t, "192.0.2.1", 100.1, &slot), CLIENT_TOO_FAST);
    assert_int_equal(admit(t, "192.0.2.9", 100.1, &slot), CLIENT_ADMITTED);
    /* Half a second refills one token at 2 a second. */
    assert_int_equal(admit(t, "192.0.2.1", 100.6, &slot), CLIENT_ADMITTED);
    assert_int_equal(admit(t, "192.0.2.1", 100.6, &slot), CLIENT_TOO_FAST);
    /* A long pause refills up to the burst (the rate), no more. */
    assert_int_equal(admit(t, "192.0.2.1", 200.0, &slot), CLIENT_ADMITTED);
    assert_int_equal(admit(t, "192.0.2.1", 200.0, &slot), CLIENT_ADMITTED);
    assert_int_equal(admit(t, "192.0.2.1", 200.0, &slot), CLIENT_TOO_FAST);
    /* A clock that steps back refills nothing and breaks nothing. */
    assert_int_equal(admit(t, "192.0.2.1", 150.0, &slot), CLIENT_TOO_FAST);
    client_table_free(t);
}

static void test_ipv6_counted_by_64(void **state)
{
    (void)state;
    struct client_table *t = client_table_new(64, 2, 0, NULL, 0);
    int slot;
    assert_int_equal(admit(t, "2001:db8:1:2::1", 0, &slot), CLIENT_ADMITTED);
    assert_int_equal(admit(t, "2001:db8:1:2:ffff::77", 0, &slot), CLIENT_ADMITTED);
    assert_int_equal(admit(t, "2001:db8:1:2:1234:5678:9abc:def0", 0, &slot), CLIENT_TOO_MANY);
    assert_int_equal(admit(t, "2001:db8:1:3::1", 0, &slot), CLIENT_ADMITTED); /* next /64 */
    assert_int_equal(count(t, "2001:db8:1:2::99"), 2);
    client_table_free(t);
}

static void test_ipv4_mapped_is_ipv4(void **state)
{
    (void)state;
    struct client_table *t = client_table_new(64, 2, 0, NULL, 0);
    int slot;
    assert_int_equal(admit(t, "198.51.100.7", 0, &slot), CLIENT_ADMITTED);
    assert_int_equal(admit(t, "::ffff:198.51.100.7", 0, &slot), CLIENT_ADMITTED);
    assert_int_equal(admit(t, "198.51.100.7", 0, &slot), CLIENT_TOO_MANY);
    /* IPv4 addresses are not grouped like a /64: the neighbour is separate. */
    assert_int_equal(admit(t, "::ffff:198.51.100.8", 0, &slot), CLIENT_ADMITTED);
    client_table_free(t);
}

/* Behind a NAT64/SIIT translator every IPv4 client is 64:ff9b::a.b.c.d:
 * counted by its /64 they would all share one budget. */
static void test_nat64_counted_whole(void **state)
{
    (void)state;
    struct client_table *t = client_table_new(64, 1, 0, NULL, 0);
    int slot;
    assert_int_equal(admit(t, "64:ff9b::192.0.2.1", 0, &slot), CLIENT_ADMITTED);
    assert_int_equal(admit(t, "64:ff9b::192.0.2.2", 0, &slot), CLIENT_ADMITTED);
    assert_int_equal(admit(t, "64:ff9b::192.0.2.1", 0, &slot), CLIENT_TOO_MANY);
    client_table_free(t);
}

static void test_exceptions(void **state)
{
    (void)state;
    struct client_prefix ex[3];
    assert_int_equal(client_prefix_parse("127.0.0.0/8", &ex[0]), 0);
    assert_int_equal(client_prefix_parse("::1", &ex[1]), 0);
    assert_int_equal(client_prefix_parse("2001:db8:aa00::/40", &ex[2]), 0);
    struct client_table *t = client_table_new(64, 1, 1, ex, 3);
    int slot;
    for (int i = 0; i < 10; i++) {
        assert_int_equal(admit(t, "127.0.0.1", 0, &slot), CLIENT_ADMITTED);
        assert_int_equal(slot, -1);
        assert_int_equal(admit(t, "127.9.8.7", 0, &slot), CLIENT_ADMITTED);
        assert_int_equal(admit(t, "::ffff:127.0.0.1", 0, &slot), CLIENT_ADMITTED);
        assert_int_equal(admit(t, "::1", 0, &slot), CLIENT_ADMITTED);
        assert_int_equal(admit(t, "2001:db8:aaff::5", 0, &slot), CLIENT_ADMITTED);
    }
    assert_int_equal(admit(t, "128.0.0.1", 0, &slot), CLIENT_ADMITTED);
    assert_int_equal(admit(t, "128.0.0.1", 0, &slot), CLIENT_TOO_MANY);
    assert_int_equal(admit(t, "::2", 0, &slot), CLIENT_ADMITTED);
    assert_int_equal(admit(t, "::2", 0, &slot), CLIENT_TOO_MANY);
    assert_int_equal(admit(t, "2001:db8:ab00::5", 0, &slot), CLIENT_ADMITTED);
    assert_int_equal(admit(t, "2001:db8:ab00::5", 0, &slot), CLIENT_TOO_MANY);
    client_table_free(t);
}

static void test_no_limits_track_nothing(void **state)
{
    (void)state;
    struct client_table *t = client_table_new(4, 0, 0, NULL, 0);
    int slot;
    for (int i = 0; i < 100; i++) {
        assert_int_equal(admit(t, "192.0.2.1", 0, &slot), CLIENT_ADMITTED);
        assert_int_equal(slot, -1);
    }
    client_table_free(t);
}

/* A full table forgets the longest-idle address without connections; when
 * every entry has connections open, it admits uncounted rather than refuse. */
static void test_capacity(void **state)
{
    (void)state;
    struct client_table *t = client_table_new(2, 1, 0, NULL, 0);
    int a, b, slot;
    assert_int_equal(admit(t, "192.0.2.1", 1, &a), CLIENT_ADMITTED);
    assert_int_equal(admit(t, "192.0.2.2", 2, &b), CLIENT_ADMITTED);
    assert_int_equal(admit(t, "192.0.2.3", 3, &slot), CLIENT_ADMITTED);
    assert_int_equal(slot, -1); /* uncounted */
    client_table_release(t, a);
    assert_int_equal(admit(t, "192.0.2.3", 4, &slot), CLIENT_ADMITTED);
    assert_true(slot >= 0); /* took 192.0.2.1's place */
    assert_int_equal(count(t, "192.0.2.1"), 0);
    assert_int_equal(admit(t, "192.0.2.3", 5, &slot), CLIENT_TOO_MANY);
    assert_int_equal(admit(t, "192.0.2.2", 5, &slot), CLIENT_TOO_MANY);
    client_table_release(t, b);
    assert_int_equal(admit(t, "192.0.2.2", 6, &slot), CLIENT_ADMITTED);
    client_table_free(t);
}

/* Many addresses through a small table: chains stay consistent. */
static void test_churn(void **state)
{
    (void)state;
    struct client_table *t = client_table_new(16, 1, 0, NULL, 0);
    int slots[16];
    char text[32];
    for (int round = 0; round < 50; round++) {
        for (int i = 0; i < 16; i++) {
            snprintf(text, sizeof text, "10.%d.%d.1", round, i);
            assert_int_equal(admit(t, text, round * 16 + i, &slots[i]), CLIENT_ADMITTED);
            assert_true(slots[i] >= 0);
            assert_int_equal(admit(t, text, round * 16 + i, &(int){0}), CLIENT_TOO_MANY);
        }
        for (int i = 0; i < 16; i++)
            client_table_release(t, slots[i]);
    }
    client_table_free(t);
}

static void test_prefix_parse(void **state)
{
    (void)state;
    struct client_prefix p;
    assert_int_equal(client_prefix_parse("192.0.2.0/24", &p), 0);
    assert_int_equal(p.bits, 96 + 24);
    assert_int_equal(client_prefix_parse("10.0.0.1", &p), 0);
    assert_int_equal(p.bits, 128);
    assert_int_equal(client_prefix_parse("2001:db8::/32", &p), 0);
    assert_int_equal(p.bits, 32);
    assert_int_equal(client_prefix_parse("0.0.0.0/0", &p), 0);
    assert_int_equal(p.bits, 96);
    static const char *const bad[] = {"",
                                      "/24",
                                      "192.0.2.0/33",
                                      "2001:db8::/129",
                                      "192.0.2.0/",
                                      "192.0.2.0/-1",
                                      "192.0.2.0/2x",
                                      "example.com",
                                      "192.0.2.300",
                                      "192.0.2.0/24/1",
                                      "2001:db8::/+3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(client_prefix_parse(bad[i], &p), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_count_limit),
        cmocka_unit_test(test_new_limits_keep_counts),
        cmocka_unit_test(test_rate_limit),
        cmocka_unit_test(test_ipv6_counted_by_64),
        cmocka_unit_test(test_ipv4_mapped_is_ipv4),
        cmocka_unit_test(test_nat64_counted_whole),
        cmocka_unit_test(test_exceptions),
        cmocka_unit_test(test_no_limits_track_nothing),
        cmocka_unit_test(test_capacity),
        cmocka_unit_test(test_churn),
        cmocka_unit_test(test_prefix_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
