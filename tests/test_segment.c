/* Unit tests of the shared segment helpers: size parsing and layout. */
#include <CUnit/CUnit.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "segment.h"
#include "size.h"
#include "unit.h"

static void test_parse_size(void)
{
    uint64_t v;
    CU_ASSERT(hd_parse_size("4096", &v) == 0 && v == 4096);
    CU_ASSERT(hd_parse_size("0", &v) == 0 && v == 0);
    CU_ASSERT(hd_parse_size("512MiB", &v) == 0 && v == 512ull << 20);
    CU_ASSERT(hd_parse_size("64GiB", &v) == 0 && v == 64ull << 30);
    CU_ASSERT(hd_parse_size("1TiB", &v) == 0 && v == 1ull << 40);
    CU_ASSERT(hd_parse_size("7B", &v) == 0 && v == 7);
    CU_ASSERT(hd_parse_size("3KiB", &v) == 0 && v == 3072);
    /* exactly GOMEMLIMIT's forms: no K/M/G, KB/MB/GB, lower case or "off" for a size */
    static const char *const rejected[] = {"2g", "2G", "2GB", "1K", "1KB", "1kib", "1mib", "1Gi", "off", "+1", "1B ", NULL};
    for (int i = 0; rejected[i]; i++)
        CU_ASSERT(hd_parse_size(rejected[i], &v) != 0);
    v = 7;
    CU_ASSERT(hd_parse_limit("off", &v) == 0 && v == 0);           /* a limit may be off */
    CU_ASSERT(hd_parse_limit("64MiB", &v) == 0 && v == 64ull << 20);
    CU_ASSERT(hd_parse_limit("none", &v) != 0);
    CU_ASSERT(hd_parse_limit("OFF", &v) != 0);
    CU_ASSERT(hd_parse_size("", &v) != 0);
    CU_ASSERT(hd_parse_size(NULL, &v) != 0);
    CU_ASSERT(hd_parse_size("-1", &v) != 0);
    CU_ASSERT(hd_parse_size("12 MiB", &v) != 0);
    CU_ASSERT(hd_parse_size("MiB", &v) != 0);
    CU_ASSERT(hd_parse_size("1.5GiB", &v) != 0);
    CU_ASSERT(hd_parse_size("10XiB", &v) != 0);
    CU_ASSERT(hd_parse_size("99999999999999999999", &v) != 0);     /* overflow */
    CU_ASSERT(hd_parse_size("17179869184TiB", &v) != 0);           /* 2^34 TiB overflows */
}

static void test_layout(void)
{
    hd_header_t h = {0};
    uint64_t npages = (64ull << 30) / HD_PAGE_SIZE;
    hd_layout(&h, HD_DEFAULT_BASE, npages);
    CU_ASSERT_EQUAL(h.magic, HD_MAGIC);
    CU_ASSERT(h.pagemap_off >= h.span_off + npages * sizeof(hd_span_t));
    CU_ASSERT(h.meta_size >= h.pagemap_off + npages * 4);
    CU_ASSERT_EQUAL(h.meta_size % HD_SEG_ALIGN, 0);
    CU_ASSERT_EQUAL(h.pages_off % HD_SEG_ALIGN, 0);
    CU_ASSERT(h.pages_off >= npages * sizeof(hd_slot_t));
    CU_ASSERT_EQUAL(h.heap_size, h.pages_off + npages * HD_PAGE_SIZE);
    /* a view over a real mapping: pagemap entries route pointers to span ids */
    hd_header_t tmp = {0};
    hd_layout(&tmp, 0, 8);
    size_t len = tmp.meta_size + tmp.heap_size;
    char *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CU_ASSERT_FATAL(map != MAP_FAILED);
    hd_header_t *m = (hd_header_t *)map;
    hd_layout(m, (uint64_t)(uintptr_t)map, 8);
    hd_seg_t s;
    hd_seg_view(&s, m);
    CU_ASSERT_EQUAL((char *)s.spans, map + HD_HEADER_BYTES);
    CU_ASSERT_EQUAL(s.pages, (uintptr_t)map + m->meta_size + m->pages_off);
    CU_ASSERT_EQUAL(hd_span_of(&s, (void *)(s.pages - 1)), HD_NO_SPAN);
    CU_ASSERT_EQUAL(hd_span_of(&s, (void *)(s.pages + 8 * HD_PAGE_SIZE)), HD_NO_SPAN);
    CU_ASSERT_EQUAL(hd_span_of(&s, (void *)(s.pages + 3 * HD_PAGE_SIZE)), HD_NO_SPAN);
    s.pagemap[3] = 2 + 1;                  /* page 3 belongs to the span starting at page 2 */
    CU_ASSERT_EQUAL(hd_span_of(&s, (void *)(s.pages + 3 * HD_PAGE_SIZE + 100)), 2);
    munmap(map, len);
}

static void register_segment_suite(void)
{
    CU_pSuite s = CU_add_suite("segment", NULL, NULL);
    CU_add_test(s, "parse sizes like GOMEMLIMIT", test_parse_size);
    CU_add_test(s, "segment layout", test_layout);
}
UNIT_SUITE(register_segment_suite)
