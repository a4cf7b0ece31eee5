/* heapd-unit: the CUnit runner for every unit suite.
 *
 * Each tests/test_*.c file registers its suite with UNIT_SUITE(fn), a constructor
 * that runs before main, so adding a suite touches no other file.
 * Exit status is non-zero when any assertion failed or a suite could not run,
 * so `make test` and CI fail loudly; CUnit's summary shows how much ran.
 * HEAPD_TEST_SEED overrides the seed of the randomized tests (printed on failure).
 * HEAPD_UNIT_SUITES=a,b runs only the suites named (make tsan: the threaded ones);
 * a suite named "timing" runs only when named (unit_select_suites). */
#include <CUnit/Basic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unit.h"

void (*unit_suites[UNIT_MAX_SUITES])(void);
unsigned unit_nsuites;

int main(int argc, char **argv)
{
    if (CU_initialize_registry() != CUE_SUCCESS) {
        fprintf(stderr, "heapd-unit: CUnit init failed: %s\n", CU_get_error_msg());
        return 2;
    }
    for (unsigned i = 0; i < unit_nsuites; i++)
        unit_suites[i]();
    unit_select_suites();

    CU_basic_set_mode(argc > 1 && strcmp(argv[1], "-v") == 0 ? CU_BRM_VERBOSE : CU_BRM_NORMAL);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_suites_failed();
    unsigned ran = CU_get_number_of_tests_run();
    CU_cleanup_registry();
    printf("\n%u tests ran, %u failures\n", ran, failed);
    return (failed || ran == 0) ? 1 : 0;
}
