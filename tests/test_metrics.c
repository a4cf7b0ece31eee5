/* Unit tests of daemon/metrics.c: the scrape text in both encodings, the
 * build/process series, the limit names, the per-client series and their
 * cardinality bound; and of promcheck's OpenMetrics rules. */
#define _GNU_SOURCE
#include <CUnit/CUnit.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"
#include "daemon_fixture.h"
#include "heapd_version.h"
#include "metrics.h"
#include "promcheck.h"
#include "unit.h"

#define TEST_SIZE (64ull << 20)

static daemon_t *D;
static unsigned nbase;
static uint8_t outbuf[HD_MAX_MSG];
static rpc_out_t OUT = {.buf = outbuf, .cap = sizeof(outbuf)};

static void setup(void) { D = fx_daemon_new(TEST_SIZE, 0x3e0000000000ull + (uint64_t)(nbase++) * (4ull << 30)); }

static void teardown(void)
{
    fx_daemon_free(D);
    D = NULL;
}

static unsigned count_prefix(const char *text, const char *prefix)
{
    unsigned n = 0;
    size_t l = strlen(prefix);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        n += !strncmp(p, prefix, l);
    return n;
}

static void test_both_encodings_parse(void)
{
    D->start_time_s = 1700000000.5;
    size_t len, omlen;
    char *text = metrics_text(D, false, &len), *om = metrics_text(D, true, &omlen);
    char err[256];
    CU_ASSERT_FATAL(text && om);
    CU_ASSERT_EQUAL(strlen(text), len);
    bool ok = prom_check(text, err, sizeof(err));
    if (!ok)
        fprintf(stderr, "0.0.4: %s\n", err);
    CU_ASSERT(ok);
    ok = om_check(om, err, sizeof(err));
    if (!ok)
        fprintf(stderr, "OpenMetrics: %s\n", err);
    CU_ASSERT(ok);
    /* the same samples: only HELP/TYPE lines and # EOF differ */
    CU_ASSERT_EQUAL(count_prefix(text, "heapd_"), count_prefix(om, "heapd_"));
    CU_ASSERT(strstr(om, "# TYPE heapd_gc_heap_allocs_objects counter\n") != NULL);
    CU_ASSERT(strstr(om, "\nheapd_gc_heap_allocs_objects_total ") != NULL);
    CU_ASSERT(strstr(om, "# TYPE heapd_build info\n") != NULL);
    CU_ASSERT(strcmp(om + omlen - 6, "# EOF\n") == 0);
    /* build info carries the one version string; the start time is the daemon's */
    char want[160];
    snprintf(want, sizeof(want), "heapd_build_info{version=\"%s\",protocol=\"%u\",layout=\"%u\"}", HEAPD_VERSION,
             (unsigned)HD_PROTO_VERSION, (unsigned)HD_LAYOUT_VERSION);
    CU_ASSERT_EQUAL(prom_value(text, want), 1);
    CU_ASSERT_DOUBLE_EQUAL(prom_value(text, "process_start_time_seconds"), 1700000000.5, 0.01);
    free(text);
    free(om);
}

static void test_limit_names(void)
{
    size_t len;
    char *text = metrics_text(D, false, &len);
    CU_ASSERT_FATAL(text != NULL);
    /* one naming scheme: heapd_memory_limit_{soft,hard}_bytes, 0 = off (the
     * fixture's daemon has no limits; the integration test sets them) */
    CU_ASSERT_EQUAL(prom_value(text, "heapd_memory_limit_soft_bytes"), 0);
    CU_ASSERT_EQUAL(prom_value(text, "heapd_memory_limit_hard_bytes"), 0);
    CU_ASSERT(strstr(text, "gomemlimit") == NULL);
    free(text);
}

static void test_clients_bounded(void)
{
    enum { N = METRICS_MAX_CLIENT_NAMES + 8 };
    client_t *c[N];
    int peer[N];
    uint32_t slot[N];
    for (int i = 0; i < N; i++) {
        c[i] = fx_client(D, &OUT, &peer[i], &slot[i]);
        CU_ASSERT_FATAL(c[i] != NULL);
        snprintf(c[i]->name, sizeof(c[i]->name), "app\"%02d", i);       /* a quote to escape */
        /* live bytes as the client would publish them: more for higher i */
        atomic_store(&mstats_slot_map(D, slot[i])->large_alloc_bytes, (uint64_t)(i + 1) * 8192);
    }
    /* two processes of one program are summed */
    snprintf(c[0]->name, sizeof(c[0]->name), "app\"%02d", N - 1);
    size_t len;
    char *text = metrics_text(D, false, &len);
    CU_ASSERT_FATAL(text != NULL);
    char err[256];
    CU_ASSERT(prom_check(text, err, sizeof(err)));
    /* at most METRICS_MAX_CLIENT_NAMES series per family, whatever connects */
    CU_ASSERT_EQUAL(count_prefix(text, "heapd_client_processes{"), METRICS_MAX_CLIENT_NAMES);
    char name[96];
    snprintf(name, sizeof(name), "heapd_client_processes{name=\"app\\\"%02d\"}", N - 1);
    CU_ASSERT_EQUAL(prom_value(text, name), 2);
    snprintf(name, sizeof(name), "heapd_client_live_bytes{name=\"app\\\"%02d\"}", N - 1);
    CU_ASSERT_EQUAL(prom_value(text, name), (double)(N + 1) * 8192);
    /* N - 1 names: the top 31 by live bytes get a series, the rest (the
     * smallest, i = 1..N-32) are summed under _other */
    double other = prom_value(text, "heapd_client_processes{name=\"_other\"}");
    CU_ASSERT_EQUAL(other, (double)(N - 1 - (METRICS_MAX_CLIENT_NAMES - 1)));
    CU_ASSERT(isnan(prom_value(text, "heapd_client_processes{name=\"app\\\"01\"}")));
    free(text);
    for (int i = 0; i < N; i++) {
        client_close(D, c[i], "test done");
        close(peer[i]);
    }
}

static void test_om_checker(void)
{
    char err[256];
    static const char *const bad[] = {
        "# TYPE x_total counter\nx_total 1\n# EOF\n",            /* family named with _total */
        "# TYPE x counter\nx 1\n# EOF\n",                        /* sample without _total */
        "# TYPE x gauge\nx 1\n",                                 /* no # EOF */
        "# TYPE x gauge\n\nx 1\n# EOF\n",                        /* blank line */
        "# TYPE x gauge\nx 1\n# EOF\nx 2\n",                     /* text after # EOF */
        "# TYPE x untyped\nx 1\n# EOF\n",                        /* untyped is 0.0.4 only */
        "# TYPE b info\nb_info 2\n# EOF\n",                      /* info is 1 */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        bool r = om_check(bad[i], err, sizeof(err));
        if (r)
            fprintf(stderr, "om_check accepted bad case %zu\n", i);
        CU_ASSERT_FALSE(r);
    }
    CU_ASSERT_TRUE(om_check("# HELP x a\n# TYPE x counter\nx_total 1\nx_created 1.7e9\n# TYPE b info\n"
                            "b_info{v=\"1\"} 1\n# EOF\n", err, sizeof(err)));
}

static void register_metrics_suite(void)
{
    CU_pSuite s = CU_add_suite_with_setup_and_teardown("metrics", NULL, NULL, setup, teardown);
    CU_add_test(s, "0.0.4 and OpenMetrics both parse", test_both_encodings_parse);
    CU_add_test(s, "soft and hard limits: one naming scheme", test_limit_names);
    CU_add_test(s, "per-client series: summed by name, bounded", test_clients_bounded);
    CU_add_test(s, "promcheck: OpenMetrics rules", test_om_checker);
}
UNIT_SUITE(register_metrics_suite)
