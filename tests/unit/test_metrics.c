/* metrics: the registry keeps one entry per name (a reload finds it
 * again), counts add up, and the exposition is the Prometheus text with
 * every series, bounded by its buffer. */
#include <openssl/ssl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics.h"

static char *render(size_t cap, bool *full)
{
    struct metrics_text text = {.data = malloc(cap), .cap = cap};
    assert_non_null(text.data);
    struct metrics_server_view view = {.generation = 3, .workers = 2, .start_time = 1.5};
    metrics_render(&text, &view, NULL, NULL, 0.);
    *full = text.full;
    text.data[text.len < cap ? text.len : cap - 1] = '\0';
    return text.data;
}

static void test_one_entry_per_name(void **state)
{
    (void)state;
    struct metrics_listener *a = metrics_listener("smtps", SERVICE_SUBMISSIONS);
    assert_ptr_equal(metrics_listener("smtps", SERVICE_SUBMISSIONS), a);
    assert_ptr_not_equal(metrics_listener("smtps", SERVICE_IMAPS), a);
    assert_ptr_not_equal(metrics_listener("other", SERVICE_SUBMISSIONS), a);
    assert_ptr_equal(metrics_route("r"), metrics_route("r"));
    assert_ptr_equal(metrics_backend("b"), metrics_backend("b"));
    metrics_free_all();
}

static void test_counts_reach_the_exposition(void **state)
{
    (void)state;
    struct metrics_listener *l = metrics_listener("smtps", SERVICE_SUBMISSIONS);
    metrics_count(&l->connections[OUTCOME_RELAYED], 2);
    metrics_count(&l->tls_starts[TLS_START_IMPLICIT], 1);
    metrics_phase_move(l, PHASE_NONE, PHASE_HANDSHAKE);
    metrics_phase_move(l, PHASE_HANDSHAKE, PHASE_RELAY);
    metrics_count(&metrics_backend("box")->connect_failures, 4);
    metrics_reloaded(true);
    bool full;
    char *text = render(1 << 16, &full);
    assert_false(full);
    static const char *const lines[] = {
        "# TYPE sallyport_connections_total counter\n",
        "sallyport_connections_total{listener=\"smtps\",service=\"submissions\","
        "outcome=\"relayed\"} 2\n",
        "sallyport_connections_total{listener=\"smtps\",service=\"submissions\","
        "outcome=\"timeout\"} 0\n",
        "sallyport_sessions{listener=\"smtps\",service=\"submissions\",phase=\"relay\"} 1\n",
        "sallyport_sessions{listener=\"smtps\",service=\"submissions\",phase=\"handshake\"} 0\n",
        "sallyport_tls_connections_total{listener=\"smtps\",service=\"submissions\","
        "start=\"implicit\"} 1\n",
        "sallyport_backend_connect_failures_total{backend=\"box\"} 4\n",
        "sallyport_reloads_total{result=\"done\"} 1\n",
        "sallyport_generation 3\n",
        "sallyport_workers 2\n",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        if (!strstr(text, lines[i]))
            fail_msg("missing: %s", lines[i]);
    free(text);
    metrics_free_all();
}

static void test_exposition_is_bounded(void **state)
{
    (void)state;
    metrics_listener("smtps", SERVICE_SUBMISSIONS);
    bool full;
    char *text = render(200, &full);
    assert_true(full);
    free(text);
    metrics_free_all();
}

static void test_tls_failure_reasons(void **state)
{
    (void)state;
    assert_int_equal(metrics_tls_failure_of(SSL_R_NO_SHARED_CIPHER), TLSFAIL_NO_SHARED_CIPHER);
    assert_int_equal(metrics_tls_failure_of(SSL_R_UNSUPPORTED_PROTOCOL), TLSFAIL_PROTOCOL_VERSION);
    assert_int_equal(metrics_tls_failure_of(SSL_R_TLSV1_ALERT_UNKNOWN_CA),
                     TLSFAIL_CERTIFICATE_REJECTED);
    assert_int_equal(metrics_tls_failure_of(-1), TLSFAIL_CLIENT_CLOSED);
    assert_int_equal(metrics_tls_failure_of(0), TLSFAIL_OTHER);
    assert_int_equal(metrics_tls_version_of(TLS1_3_VERSION), TLSV_1_3);
    assert_int_equal(metrics_tls_version_of(TLS1_2_VERSION), TLSV_1_2);
    assert_int_equal(metrics_tls_version_of(TLS1_1_VERSION), TLSV_OTHER);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_entry_per_name),
        cmocka_unit_test(test_counts_reach_the_exposition),
        cmocka_unit_test(test_exposition_is_bounded),
        cmocka_unit_test(test_tls_failure_reasons),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
