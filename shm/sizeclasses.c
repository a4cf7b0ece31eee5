/* Size classes: the startup self-check of the generated tables.
 *
 * The tables themselves are generated at build time (shm/mksizeclasses.c);
 * this file owns hd_sizeclasses_check, which the daemon and clients run once
 * at startup so that a mismatched or corrupted table is refused before any
 * span is carved with it. It makes Go's mallocinit checks (tiny class is 16 B,
 * 512 is a class boundary, classes up to it use one-page spans) and the
 * invariants listed in sizeclasses.h, cheaply: division magic is checked at
 * object boundaries only, which is where an inexact magic first fails. */
#include "errf.h"
#include "sizeclasses.h"

#include <stdarg.h>
#include <stdio.h>

_Static_assert(HD_PAGE_SIZE == 8192, "pages are 8 KiB");
_Static_assert(HD_SIZE_TO_CLASS8_LEN == 129, "size_to_class8 has 129 entries");
_Static_assert(HD_SIZE_TO_CLASS128_LEN == 249, "size_to_class128 has 249 entries");

/* Go's minSizeForMallocHeader: must be a class boundary, and every class up
 * to it must use one-page spans (Go's heap-bits code relies on both; we keep
 * the check so our classes stay Go's). */
#define HD_ONE_PAGE_LIMIT 512u

#define fail(err, errlen, ...) (hd_errf(err, errlen, __VA_ARGS__), false)

/* The large classes (sizeclasses.h): four per doubling of pages, 5..128. */
const uint8_t hd_lclass_npages[HD_NUM_LARGE_CLASSES] = {
    5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128,
};
_Static_assert(HD_NUM_CLASSES <= 255, "a class fits the span's uint8_t sizeclass");

/* offset / size == hd_obj_index(magic, offset) for 0 <= offset <= span.
 * The magic rounds 2^32/size up, so its error grows with the offset and is
 * largest just below each multiple of size: checking k*size-1 and k*size for
 * every k (plus the span end) covers every offset where it could first fail. */
static bool divmagic_exact(uint32_t magic, uint32_t size, uint32_t span)
{
    for (uint64_t k = 0; k * size <= span; k++) {
        uint64_t off = k * size;
        if (hd_obj_index(magic, off) != k)
            return false;
        if (off > 0 && hd_obj_index(magic, off - 1) != k - 1)
            return false;
    }
    return hd_obj_index(magic, span) == span / size;
}

bool hd_sizeclasses_check(char *err, size_t errlen)
{
    if (hd_class_to_size[0] != 0 || hd_class_to_npages[0] != 0 || hd_class_to_nobjs[0] != 0)
        return fail(err, errlen, "size class 0 (large) must have size, pages and objects 0");
    if (hd_class_to_size[HD_TINY_SIZE_CLASS] != HD_TINY_SIZE)
        return fail(err, errlen, "size class %u is %u bytes, want the tiny size %u",
                    HD_TINY_SIZE_CLASS, (unsigned)hd_class_to_size[HD_TINY_SIZE_CLASS],
                    HD_TINY_SIZE);
    if (hd_class_to_size[HD_NUM_SIZE_CLASSES - 1] != HD_MAX_SMALL_SIZE)
        return fail(err, errlen, "largest size class is %u bytes, want %u",
                    (unsigned)hd_class_to_size[HD_NUM_SIZE_CLASSES - 1], HD_MAX_SMALL_SIZE);

    bool boundary_seen = false;
    for (unsigned c = 1; c < HD_NUM_SIZE_CLASSES; c++) {
        uint32_t size = hd_class_to_size[c];
        uint32_t npages = hd_class_to_npages[c];
        uint32_t span = npages << HD_PAGE_SHIFT;
        uint32_t nobjs = hd_class_to_nobjs[c];

        if (size == 0 || size % 8 != 0 || size <= hd_class_to_size[c - 1])
            return fail(err, errlen,
                        "size class %u: size %u is not an increasing multiple of 8", c,
                        (unsigned)size);
        if (!boundary_seen && npages != 1)
            return fail(err, errlen, "size class %u (%u B, <= %u B) uses %u pages, want 1", c,
                        (unsigned)size, HD_ONE_PAGE_LIMIT, (unsigned)npages);
        if (size == HD_ONE_PAGE_LIMIT)
            boundary_seen = true;
        if (npages < 1 || npages > HD_MAX_SIZE_CLASS_NPAGES)
            return fail(err, errlen, "size class %u: %u pages per span, want 1..%u", c,
                        (unsigned)npages, HD_MAX_SIZE_CLASS_NPAGES);
        if (nobjs == 0 || nobjs > HD_MAX_OBJS_PER_SPAN || nobjs != span / size)
            return fail(err, errlen, "size class %u: %u objects per span, want %u (<= %u)", c,
                        (unsigned)nobjs, (unsigned)(span / size), HD_MAX_OBJS_PER_SPAN);
        if (span - nobjs * size > span / 8)
            return fail(err, errlen, "size class %u: tail waste %u B exceeds 1/8 of %u B", c,
                        (unsigned)(span - nobjs * size), (unsigned)span);
        if (hd_class_to_divmagic[c] != UINT32_MAX / size + 1 ||
            !divmagic_exact(hd_class_to_divmagic[c], size, span))
            return fail(err, errlen, "size class %u: division magic %u is wrong or inexact", c,
                        (unsigned)hd_class_to_divmagic[c]);
    }
    if (!boundary_seen)
        return fail(err, errlen, "%u B is not a size-class boundary", HD_ONE_PAGE_LIMIT);
    /* Large classes: increasing, above the last small class, the last one
     * HD_MAX_CLASS_SIZE, at most 20% rounding (four per doubling). */
    for (unsigned k = 0; k < HD_NUM_LARGE_CLASSES; k++) {
        unsigned prev = k ? hd_lclass_npages[k - 1] : HD_MAX_SMALL_SIZE / HD_PAGE_SIZE, np = hd_lclass_npages[k];
        if (np <= prev || (np - prev) * 5 > np)
            return fail(err, errlen, "large class %u: %u pages after %u (want increasing, at most 20%% apart)",
                        HD_FIRST_LARGE_CLASS + k, np, prev);
    }
    if ((uint32_t)hd_lclass_npages[HD_NUM_LARGE_CLASSES - 1] << HD_PAGE_SHIFT != HD_MAX_CLASS_SIZE)
        return fail(err, errlen, "the last large class is not %u B", HD_MAX_CLASS_SIZE);

    /* The lookup tables must agree with the class list at every step. */
    for (unsigned i = 1; i < HD_SIZE_TO_CLASS8_LEN; i++) {
        unsigned c = hd_size_to_class8[i];
        uint32_t want = i * HD_SMALL_SIZE_DIV;
        if (c == 0 || c >= HD_NUM_SIZE_CLASSES || hd_class_to_size[c] < want ||
            (c > 1 && hd_class_to_size[c - 1] >= want))
            return fail(err, errlen, "size_to_class8[%u] = %u is not the first class >= %u B", i,
                        c, (unsigned)want);
    }
    for (unsigned i = 0; i < HD_SIZE_TO_CLASS128_LEN; i++) {
        unsigned c = hd_size_to_class128[i];
        uint32_t want = HD_SMALL_SIZE_MAX + i * HD_LARGE_SIZE_DIV;
        if (c == 0 || c >= HD_NUM_SIZE_CLASSES || hd_class_to_size[c] < want ||
            hd_class_to_size[c - 1] >= want)
            return fail(err, errlen, "size_to_class128[%u] = %u is not the first class >= %u B",
                        i, c, (unsigned)want);
    }
    return true;
}
