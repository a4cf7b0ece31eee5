/* Unit tests for the size-class tables (shm/sizeclasses.h).
 *
 * The generated tables are compared against Go's published table (copied
 * from the spec, section 2) rather than against the generator's own logic,
 * so a generator bug cannot hide behind itself. The request-size lookup and
 * the division magic are checked exhaustively: every request size 1..32768
 * and every byte offset of every span. */
#include <CUnit/CUnit.h>
#include <stdint.h>
#include <stdio.h>

#include "sizeclasses.h"
#include "unit.h"

/* Go's table (go-allocator-spec.md section 2): class, bytes/obj,
 * bytes/span, objects. Class 0 (large) is not listed there. */
static const struct {
    unsigned cls;
    uint32_t size;
    uint32_t span;
    uint32_t nobjs;
} go_table[] = {
    { 1, 8, 8192, 1024 },      { 2, 16, 8192, 512 },      { 3, 24, 8192, 341 },
    { 4, 32, 8192, 256 },      { 5, 48, 8192, 170 },      { 6, 64, 8192, 128 },
    { 7, 80, 8192, 102 },      { 8, 96, 8192, 85 },       { 9, 112, 8192, 73 },
    { 10, 128, 8192, 64 },     { 11, 144, 8192, 56 },     { 12, 160, 8192, 51 },
    { 13, 176, 8192, 46 },     { 14, 192, 8192, 42 },     { 15, 208, 8192, 39 },
    { 16, 224, 8192, 36 },     { 17, 240, 8192, 34 },     { 18, 256, 8192, 32 },
    { 19, 288, 8192, 28 },     { 20, 320, 8192, 25 },     { 21, 352, 8192, 23 },
    { 22, 384, 8192, 21 },     { 23, 416, 8192, 19 },     { 24, 448, 8192, 18 },
    { 25, 480, 8192, 17 },     { 26, 512, 8192, 16 },     { 27, 576, 8192, 14 },
    { 28, 640, 8192, 12 },     { 29, 704, 8192, 11 },     { 30, 768, 8192, 10 },
    { 31, 896, 8192, 9 },      { 32, 1024, 8192, 8 },     { 33, 1152, 8192, 7 },
    { 34, 1280, 8192, 6 },     { 35, 1408, 16384, 11 },   { 36, 1536, 8192, 5 },
    { 37, 1792, 16384, 9 },    { 38, 2048, 8192, 4 },     { 39, 2304, 16384, 7 },
    { 40, 2688, 8192, 3 },     { 41, 3072, 24576, 8 },    { 42, 3200, 16384, 5 },
    { 43, 3456, 24576, 7 },    { 44, 4096, 8192, 2 },     { 45, 4864, 24576, 5 },
    { 46, 5376, 16384, 3 },    { 47, 6144, 24576, 4 },    { 48, 6528, 32768, 5 },
    { 49, 6784, 40960, 6 },    { 50, 6912, 49152, 7 },    { 51, 8192, 8192, 1 },
    { 52, 9472, 57344, 6 },    { 53, 9728, 49152, 5 },    { 54, 10240, 40960, 4 },
    { 55, 10880, 32768, 3 },   { 56, 12288, 24576, 2 },   { 57, 13568, 40960, 3 },
    { 58, 14336, 57344, 4 },   { 59, 16384, 16384, 1 },   { 60, 18432, 73728, 4 },
    { 61, 19072, 57344, 3 },   { 62, 20480, 40960, 2 },   { 63, 21760, 65536, 3 },
    { 64, 24576, 24576, 1 },   { 65, 27264, 81920, 3 },   { 66, 28672, 57344, 2 },
    { 67, 32768, 32768, 1 },
};
#define GO_TABLE_LEN (sizeof go_table / sizeof go_table[0])

static void test_matches_go_table(void)
{
    CU_ASSERT_EQUAL_FATAL(GO_TABLE_LEN, HD_NUM_SIZE_CLASSES - 1);
    CU_ASSERT_EQUAL(hd_class_to_size[0], 0);
    CU_ASSERT_EQUAL(hd_class_to_npages[0], 0);
    CU_ASSERT_EQUAL(hd_class_to_nobjs[0], 0);
    CU_ASSERT_EQUAL(hd_class_to_divmagic[0], 0);
    for (unsigned i = 0; i < GO_TABLE_LEN; i++) {
        unsigned c = go_table[i].cls;
        CU_ASSERT_EQUAL_FATAL(c, i + 1);
        CU_ASSERT_EQUAL(hd_class_to_size[c], go_table[i].size);
        CU_ASSERT_EQUAL(hd_class_to_npages[c], go_table[i].span / HD_PAGE_SIZE);
        CU_ASSERT_EQUAL(hd_class_to_nobjs[c], go_table[i].nobjs);
        CU_ASSERT_EQUAL(hd_span_bytes(c), go_table[i].span);
    }
}

/* Every request size maps to the smallest class that holds it. */
static void test_size_to_class_all_sizes(void)
{
    unsigned bad = 0, first_bad = 0;
    for (size_t size = 1; size <= HD_MAX_SMALL_SIZE; size++) {
        unsigned c = hd_size_to_class(size);
        bool ok = c >= 1 && c < HD_NUM_SIZE_CLASSES && hd_class_to_size[c] >= size &&
                  (c == 1 || hd_class_to_size[c - 1] < size);
        if (!ok && bad++ == 0)
            first_bad = (unsigned)size;
    }
    CU_ASSERT_EQUAL(bad, 0);
    if (bad)
        fprintf(stderr, "\n  size_to_class: %u wrong sizes, first %u\n", bad, first_bad);

    /* The seam between the two lookup tables (Go's 1016/1017 split). */
    CU_ASSERT_EQUAL(hd_size_to_class(1016), 32);
    CU_ASSERT_EQUAL(hd_size_to_class(1017), 32);
    CU_ASSERT_EQUAL(hd_size_to_class(1024), 32);
    CU_ASSERT_EQUAL(hd_size_to_class(1025), 33);
    CU_ASSERT_EQUAL(hd_size_to_class(1), 1);
    CU_ASSERT_EQUAL(hd_size_to_class(HD_TINY_SIZE), HD_TINY_SIZE_CLASS);
    CU_ASSERT_EQUAL(hd_size_to_class(HD_MAX_SMALL_SIZE), HD_NUM_SIZE_CLASSES - 1);
}

/* Exhaustive: every byte offset of every span, one assertion at the end
 * (per-offset CU_ASSERTs would dominate the runtime). */
static void test_obj_index_exact(void)
{
    uint64_t checked = 0, bad = 0;
    for (unsigned c = 1; c < HD_NUM_SIZE_CLASSES; c++) {
        uint32_t size = hd_class_to_size[c], magic = hd_class_to_divmagic[c];
        uint64_t span = hd_span_bytes(c);
        for (uint64_t off = 0; off < span; off++) {
            if (hd_obj_index(magic, off) != off / size)
                bad++;
            checked++;
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    /* The loops really covered every span: 168 pages, 1,376,256 offsets. */
    uint64_t want = 0;
    for (unsigned i = 0; i < GO_TABLE_LEN; i++)
        want += go_table[i].span;
    CU_ASSERT_EQUAL(want, 168u * HD_PAGE_SIZE);
    CU_ASSERT_EQUAL(checked, want);
}

static void test_divmagic_and_lookup_tables(void)
{
    for (unsigned c = 1; c < HD_NUM_SIZE_CLASSES; c++)
        CU_ASSERT_EQUAL(hd_class_to_divmagic[c], UINT32_MAX / hd_class_to_size[c] + 1);

    CU_ASSERT_EQUAL(sizeof hd_size_to_class8, 129);
    CU_ASSERT_EQUAL(sizeof hd_size_to_class128, 249);
    CU_ASSERT_EQUAL(HD_SIZE_TO_CLASS8_LEN, 129);
    CU_ASSERT_EQUAL(HD_SIZE_TO_CLASS128_LEN, 249);
    CU_ASSERT_EQUAL(hd_size_to_class8[0], 0);
    CU_ASSERT_EQUAL(hd_size_to_class8[1], 1);
    CU_ASSERT_EQUAL(hd_size_to_class8[2], HD_TINY_SIZE_CLASS);
    CU_ASSERT_EQUAL(hd_size_to_class8[128], 32);
    CU_ASSERT_EQUAL(hd_class_to_size[hd_size_to_class8[128]], 1024);
    CU_ASSERT_EQUAL(hd_size_to_class128[0], 32);
    CU_ASSERT_EQUAL(hd_size_to_class128[1], 33);
    CU_ASSERT_EQUAL(hd_size_to_class128[248], 67);
    CU_ASSERT_EQUAL(hd_class_to_size[hd_size_to_class128[248]], 32768);
}

/* Objects per span, and Go's 12.5% tail-waste bound. */
static void test_objects_per_span(void)
{
    for (unsigned c = 1; c < HD_NUM_SIZE_CLASSES; c++) {
        size_t span = hd_span_bytes(c);
        uint32_t size = hd_class_to_size[c], nobjs = hd_class_to_nobjs[c];
        CU_ASSERT_EQUAL(nobjs, span / size);
        CU_ASSERT(span - (size_t)nobjs * size <= span / 8);
        CU_ASSERT(nobjs >= 1 && nobjs <= HD_MAX_OBJS_PER_SPAN);
        CU_ASSERT(hd_class_to_npages[c] >= 1 && hd_class_to_npages[c] <= HD_MAX_SIZE_CLASS_NPAGES);
        CU_ASSERT_EQUAL(size % 8, 0);
    }
}

static void test_startup_check(void)
{
    char err[256] = "";
    bool ok = hd_sizeclasses_check(err, sizeof err);
    CU_ASSERT(ok);
    if (!ok)
        fprintf(stderr, "\n  hd_sizeclasses_check: %s\n", err);
    CU_ASSERT(hd_sizeclasses_check(NULL, 0)); /* no buffer is allowed */
}

static void register_sizeclasses_suite(void)
{
    CU_pSuite s = CU_add_suite("sizeclasses", NULL, NULL);
    if (!s)
        return;
    CU_add_test(s, "table equals Go's size classes", test_matches_go_table);
    CU_add_test(s, "every size 1..32768 maps to the smallest class", test_size_to_class_all_sizes);
    CU_add_test(s, "obj index exact at every span offset", test_obj_index_exact);
    CU_add_test(s, "divmagic and lookup tables", test_divmagic_and_lookup_tables);
    CU_add_test(s, "objects per span and 1/8 tail rule", test_objects_per_span);
    CU_add_test(s, "hd_sizeclasses_check passes", test_startup_check);
}
UNIT_SUITE(register_sizeclasses_suite)
