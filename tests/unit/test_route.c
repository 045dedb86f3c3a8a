/* Unit tests for route (src/route.c): SNI name to route, an exact name first,
 * then a single-label wildcard, then the default route ("*"), whatever the
 * order of the routes; and for tls_name_matches (src/tls.c), which it uses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdbool.h>
#include <string.h>

#include "route.h"
#include "tls.h"

static const struct cfg_backend exact_backend = {.name = "exact"};
static const struct cfg_backend wild_backend = {.name = "wild"};
static const struct cfg_backend default_backend = {.name = "default"};
static const struct cfg_backend other_backend = {.name = "other"};

/* A route named after its backend, listing the given names (as the config
 * stores them: lower-cased). */
#define ROUTE(backend_, ...)                                                                       \
    {                                                                                              \
        .name = (char *)#backend_, .line = __LINE__, .sni = {__VA_ARGS__},                         \
        .nsni = sizeof((char *[]){__VA_ARGS__}) / sizeof(char *), .backends = {&backend_},         \
    }

#define N(routes) (sizeof(routes) / sizeof((routes)[0]))

/* Asserts that `sni` routes to the route whose backend is `backend` (NULL:
 * no route at all). */
static void assert_routes_to(const struct cfg_route *routes, size_t n, const char *sni,
                             const struct cfg_backend *backend)
{
    const struct cfg_route *r = route_lookup(routes, n, sni);
    if (!backend) {
        if (r)
            fail_msg("'%s' routed to [route %s], expected no route", sni ? sni : "(none)", r->name);
        return;
    }
    if (!r)
        fail_msg("'%s' not routed, expected [route %s]", sni ? sni : "(none)", backend->name);
    assert_true(r >= routes && r < routes + n);
    if (r->backends[0] != backend)
        fail_msg("'%s' routed to [route %s], expected [route %s]", sni ? sni : "(none)", r->name,
                 backend->name);
}

/* ---- route_lookup ---- */

static void test_precedence_any_order(void **state)
{
    (void)state;
    const struct cfg_route all[3] = {
        ROUTE(exact_backend, "mail.example.com"),
        ROUTE(wild_backend, "*.example.com"),
        ROUTE(default_backend, "*"),
    };
    static const int orders[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2},
                                     {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
    for (size_t o = 0; o < 6; o++) {
        struct cfg_route routes[3];
        for (size_t i = 0; i < 3; i++)
            routes[i] = all[orders[o][i]];
        assert_routes_to(routes, 3, "mail.example.com", &exact_backend);
        assert_routes_to(routes, 3, "imap.example.com", &wild_backend);
        assert_routes_to(routes, 3, "example.com", &default_backend);
        assert_routes_to(routes, 3, "mail.example.org", &default_backend);
        assert_routes_to(routes, 3, "a.mail.example.com", &default_backend);
        assert_routes_to(routes, 3, NULL, &default_backend);
    }
}

static void test_case_insensitive(void **state)
{
    (void)state;
    const struct cfg_route routes[] = {
        ROUTE(default_backend, "*"),
        ROUTE(wild_backend, "*.example.com"),
        ROUTE(exact_backend, "mail.example.com"),
    };
    assert_routes_to(routes, N(routes), "MAIL.Example.COM", &exact_backend);
    assert_routes_to(routes, N(routes), "mail.EXAMPLE.com", &exact_backend);
    assert_routes_to(routes, N(routes), "IMAP.EXAMPLE.COM", &wild_backend);
    assert_routes_to(routes, N(routes), "Smtp.Example.Com", &wild_backend);
}

static void test_wildcard_one_label(void **state)
{
    (void)state;
    const struct cfg_route routes[] = {
        ROUTE(wild_backend, "*.example.com"),
    };
    assert_routes_to(routes, N(routes), "a.example.com", &wild_backend);
    assert_routes_to(routes, N(routes), "mail-1.example.com", &wild_backend);
    assert_routes_to(routes, N(routes), "example.com", NULL);
    assert_routes_to(routes, N(routes), "a.b.example.com", NULL);
    assert_routes_to(routes, N(routes), "aexample.com", NULL);
    assert_routes_to(routes, N(routes), ".example.com", NULL);
    assert_routes_to(routes, N(routes), "a.example.com.evil.org", NULL);
    assert_routes_to(routes, N(routes), "a.example.co", NULL);
    assert_routes_to(routes, N(routes), "", NULL);
    assert_routes_to(routes, N(routes), NULL, NULL);
}

static void test_nested_wildcards(void **state)
{
    (void)state;
    /* Each wildcard covers one label: the deeper one answers deeper names. */
    const struct cfg_route routes[] = {
        ROUTE(wild_backend, "*.example.com"),
        ROUTE(other_backend, "*.eu.example.com"),
    };
    assert_routes_to(routes, N(routes), "mx.eu.example.com", &other_backend);
    assert_routes_to(routes, N(routes), "eu.example.com", &wild_backend);
    assert_routes_to(routes, N(routes), "a.mx.eu.example.com", NULL);
}

static void test_no_sni(void **state)
{
    (void)state;
    const struct cfg_route with_default[] = {
        ROUTE(exact_backend, "mail.example.com"),
        ROUTE(wild_backend, "*.example.com"),
        ROUTE(default_backend, "*"),
    };
    assert_routes_to(with_default, N(with_default), NULL, &default_backend);

    const struct cfg_route without_default[] = {
        ROUTE(exact_backend, "mail.example.com"),
        ROUTE(wild_backend, "*.example.com"),
    };
    assert_routes_to(without_default, N(without_default), NULL, NULL);
}

static void test_no_match_no_default(void **state)
{
    (void)state;
    const struct cfg_route routes[] = {
        ROUTE(exact_backend, "mail.example.com"),
        ROUTE(wild_backend, "*.example.org"),
    };
    assert_routes_to(routes, N(routes), "mail.example.net", NULL);
    assert_routes_to(routes, N(routes), "example.org", NULL);
    assert_routes_to(routes, N(routes), "mail.example.com.", NULL);
    assert_routes_to(routes, N(routes), "*", NULL);
    /* And the matches still work. */
    assert_routes_to(routes, N(routes), "mail.example.com", &exact_backend);
    assert_routes_to(routes, N(routes), "x.example.org", &wild_backend);
}

static void test_empty_table(void **state)
{
    (void)state;
    assert_null(route_lookup(NULL, 0, "mail.example.com"));
    assert_null(route_lookup(NULL, 0, NULL));
}

static void test_several_names_per_route(void **state)
{
    (void)state;
    const struct cfg_route routes[] = {
        ROUTE(exact_backend, "a.example.com", "b.example.org", "*.c.example.net"),
        ROUTE(other_backend, "x.example.com", "*.example.com"),
    };
    assert_routes_to(routes, N(routes), "a.example.com", &exact_backend);
    assert_routes_to(routes, N(routes), "b.example.org", &exact_backend);
    assert_routes_to(routes, N(routes), "mx.c.example.net", &exact_backend);
    assert_routes_to(routes, N(routes), "x.example.com", &other_backend);
    assert_routes_to(routes, N(routes), "y.example.com", &other_backend);
    assert_routes_to(routes, N(routes), "c.example.net", NULL);
    assert_routes_to(routes, N(routes), "example.org", NULL);
}

static void test_exact_in_later_name_beats_earlier_wildcard(void **state)
{
    (void)state;
    /* The first route's wildcard is listed before the second route's exact
     * name; the exact name still wins. */
    const struct cfg_route routes[] = {
        ROUTE(wild_backend, "*.example.com", "mail.example.org"),
        ROUTE(exact_backend, "www.example.org", "mail.example.com"),
    };
    assert_routes_to(routes, N(routes), "mail.example.com", &exact_backend);
    assert_routes_to(routes, N(routes), "web.example.com", &wild_backend);
}

static void test_default_route_with_names(void **state)
{
    (void)state;
    /* The default route may also list names; they are exact matches. */
    const struct cfg_route routes[] = {
        ROUTE(default_backend, "*", "mail.example.com"),
        ROUTE(wild_backend, "*.example.com"),
    };
    assert_routes_to(routes, N(routes), "mail.example.com", &default_backend);
    assert_routes_to(routes, N(routes), "imap.example.com", &wild_backend);
    assert_routes_to(routes, N(routes), "example.net", &default_backend);
    assert_routes_to(routes, N(routes), NULL, &default_backend);
}

static void test_wildcard_route_and_default_route(void **state)
{
    (void)state;
    const struct cfg_route routes[] = {
        ROUTE(default_backend, "*"),
        ROUTE(wild_backend, "*.example.com"),
    };
    assert_routes_to(routes, N(routes), "a.example.com", &wild_backend);
    assert_routes_to(routes, N(routes), "A.Example.Com", &wild_backend);
    assert_routes_to(routes, N(routes), "example.com", &default_backend);
    assert_routes_to(routes, N(routes), "a.b.example.com", &default_backend);
    assert_routes_to(routes, N(routes), "aexample.com", &default_backend);
    assert_routes_to(routes, N(routes), "", &default_backend);
    assert_routes_to(routes, N(routes), NULL, &default_backend);
}

static void test_returns_route_in_table(void **state)
{
    (void)state;
    /* Two routes to the same backend: the pointer identifies which. */
    const struct cfg_route routes[] = {
        ROUTE(exact_backend, "a.example.com"),
        ROUTE(exact_backend, "b.example.com"),
        ROUTE(exact_backend, "*"),
    };
    assert_ptr_equal(route_lookup(routes, N(routes), "a.example.com"), &routes[0]);
    assert_ptr_equal(route_lookup(routes, N(routes), "b.example.com"), &routes[1]);
    assert_ptr_equal(route_lookup(routes, N(routes), "c.example.com"), &routes[2]);
    assert_ptr_equal(route_lookup(routes, N(routes), NULL), &routes[2]);
    /* Only the first n routes count. */
    assert_null(route_lookup(routes, 1, "b.example.com"));
    assert_null(route_lookup(routes, 2, NULL));
}

/* ---- tls_name_matches ---- */

static void test_name_exact(void **state)
{
    (void)state;
    assert_true(tls_name_matches("mail.example.com", "mail.example.com"));
    assert_true(tls_name_matches("mail.example.com", "MAIL.Example.COM"));
    assert_true(tls_name_matches("MAIL.EXAMPLE.COM", "mail.example.com"));
    assert_false(tls_name_matches("mail.example.com", "mail.example.co"));
    assert_false(tls_name_matches("mail.example.com", "mail.example.com."));
    assert_false(tls_name_matches("mail.example.com", "xmail.example.com"));
    assert_false(tls_name_matches("mail.example.com", ""));
    assert_false(tls_name_matches("", "mail.example.com"));
}

static void test_name_wildcard(void **state)
{
    (void)state;
    assert_true(tls_name_matches("*.example.com", "a.example.com"));
    assert_true(tls_name_matches("*.example.com", "A.EXAMPLE.COM"));
    assert_true(tls_name_matches("*.EXAMPLE.com", "imap.example.COM"));
    assert_false(tls_name_matches("*.example.com", "example.com"));
    assert_false(tls_name_matches("*.example.com", "a.b.example.com"));
    assert_false(tls_name_matches("*.example.com", "aexample.com"));
    assert_false(tls_name_matches("*.example.com", ".example.com"));
    assert_false(tls_name_matches("*.example.com", "a.example.org"));
    assert_false(tls_name_matches("*.example.com", "a..example.com"));
    assert_false(tls_name_matches("*.example.com", ""));
    assert_false(tls_name_matches("*.example.com", "."));
    /* Only a whole leftmost "*." label is a wildcard. */
    assert_false(tls_name_matches("*example.com", "aexample.com"));
    assert_false(tls_name_matches("*example.com", "a.example.com"));
    assert_false(tls_name_matches("a*.example.com", "ab.example.com"));
    assert_false(tls_name_matches("mail.*.com", "mail.example.com"));
    /* A name is not a pattern. */
    assert_false(tls_name_matches("a.example.com", "*.example.com"));
}

static void test_name_degenerate_patterns(void **state)
{
    (void)state;
    assert_false(tls_name_matches("*.", "example.com"));
    assert_false(tls_name_matches("*.", "a.example.com"));
    assert_false(tls_name_matches("*.", "."));
    assert_false(tls_name_matches("*.", ""));
    assert_false(tls_name_matches("*.", "a"));
    assert_false(tls_name_matches("*", "example.com"));
    assert_false(tls_name_matches("*", ""));
    assert_false(tls_name_matches("*", "a.b"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_precedence_any_order),
        cmocka_unit_test(test_case_insensitive),
        cmocka_unit_test(test_wildcard_one_label),
        cmocka_unit_test(test_nested_wildcards),
        cmocka_unit_test(test_no_sni),
        cmocka_unit_test(test_no_match_no_default),
        cmocka_unit_test(test_empty_table),
        cmocka_unit_test(test_several_names_per_route),
        cmocka_unit_test(test_exact_in_later_name_beats_earlier_wildcard),
        cmocka_unit_test(test_default_route_with_names),
        cmocka_unit_test(test_wildcard_route_and_default_route),
        cmocka_unit_test(test_returns_route_in_table),
        cmocka_unit_test(test_name_exact),
        cmocka_unit_test(test_name_wildcard),
        cmocka_unit_test(test_name_degenerate_patterns),
    };
    return cmocka_run_group_tests_name("route (SNI to route) and tls_name_matches", tests, NULL,
                                       NULL);
}
