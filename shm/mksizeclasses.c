/* mksizeclasses: build-time generator of the size-class tables.
 *
 * Usage: mksizeclasses OUTFILE
 *
 * Computes the size classes with Go's algorithm (src/runtime/_mkmalloc/
 * mksizeclasses.go, restated here) and writes OUTFILE, a C file that defines
 * the const tables declared in shm/sizeclasses.h. Generating rather than
 * hand-copying keeps the derived tables (object counts, division magic,
 * request-size lookups) consistent with the class list by construction; the
 * unit tests then compare the result against Go's published table.
 *
 * The program refuses (exit 1, OUTFILE left untouched) when the result breaks
 * an invariant the allocator relies on: 68 entries, spans of at most 10 pages
 * and 1024 objects, tail waste <= 1/8, and exact division magic. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "sizeclasses.h"

/* Room for more classes than expected, so a wrong count is reported, not overrun. */
#define MAX_CLASSES 256

static uint32_t cls_size[MAX_CLASSES];
static uint32_t cls_npages[MAX_CLASSES];
static uint32_t cls_nobjs[MAX_CLASSES];
static uint32_t cls_divmagic[MAX_CLASSES];
static unsigned nclasses;

static uint8_t size_to_class8[HD_SIZE_TO_CLASS8_LEN];
static uint8_t size_to_class128[HD_SIZE_TO_CLASS128_LEN];

static const char *progname = "mksizeclasses";

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...)
{
    int saved = errno; /* for %m: the prefix write must not clobber it */
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", progname);
    errno = saved;
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static bool is_pow2(uint32_t x) { return x != 0 && (x & (x - 1)) == 0; }

/* Go's class list: step through sizes, pick the fewest pages that keep the
 * tail <= 1/8 of the span, merge neighbours that would hold the same number
 * of objects in the same span, then grow each size as far as the object count
 * allows (keeping 128-byte alignment so the 128-step lookup stays exact). */
static void make_classes(void)
{
    nclasses = 1; /* class 0: large objects, size 0 */
    uint32_t align = 8;
    for (uint32_t size = align; size <= HD_MAX_SMALL_SIZE; size += align) {
        if (is_pow2(size)) {
            /* Coarser steps for bigger sizes bound the class count; 16-byte
             * alignment from 32 bytes matches Go's alignment guarantees. */
            if (size >= 2048)
                align = 256;
            else if (size >= 128)
                align = size / 8;
            else if (size >= 32)
                align = 16;
        }
        if (!is_pow2(align))
            die("alignment %" PRIu32 " at size %" PRIu32 " is not a power of two", align, size);

        uint32_t allocsize = HD_PAGE_SIZE;
        while (allocsize % size > allocsize / 8)
            allocsize += HD_PAGE_SIZE;
        uint32_t npages = allocsize / HD_PAGE_SIZE;

        /* Same span length and same object count as the previous real class:
         * the bigger size wastes nothing extra, so keep only it. */
        if (nclasses > 1) {
            unsigned prev = nclasses - 1;
            if (npages == cls_npages[prev] && allocsize / size == allocsize / cls_size[prev]) {
                cls_size[prev] = size;
                continue;
            }
        }
        if (nclasses == MAX_CLASSES)
            die("more than %d size classes", MAX_CLASSES);
        cls_size[nclasses] = size;
        cls_npages[nclasses] = npages;
        nclasses++;
    }

    for (unsigned c = 1; c < nclasses; c++) {
        uint32_t psize = cls_npages[c] * HD_PAGE_SIZE;
        uint32_t grown = (psize / (psize / cls_size[c])) & ~(HD_LARGE_SIZE_DIV - 1);
        if (grown > cls_size[c])
            cls_size[c] = grown;
    }

    if (nclasses != HD_NUM_SIZE_CLASSES)
        die("generated %u size-class entries, expected %d (67 classes + class 0)", nclasses,
            HD_NUM_SIZE_CLASSES);
}

/* Object counts and division magic, each checked against the invariants. */
static void derive_per_class(void)
{
    cls_size[0] = cls_npages[0] = cls_nobjs[0] = cls_divmagic[0] = 0;
    for (unsigned c = 1; c < nclasses; c++) {
        uint32_t size = cls_size[c];
        uint32_t span = cls_npages[c] * HD_PAGE_SIZE;
        if (size % 8 != 0)
            die("class %u: size %" PRIu32 " is not a multiple of 8", c, size);
        if (c > 1 && size <= cls_size[c - 1])
            die("class %u: size %" PRIu32 " does not exceed the previous class", c, size);
        if (cls_npages[c] > HD_MAX_SIZE_CLASS_NPAGES)
            die("class %u: %" PRIu32 " pages exceeds %u", c, cls_npages[c], HD_MAX_SIZE_CLASS_NPAGES);
        cls_nobjs[c] = span / size;
        if (cls_nobjs[c] > HD_MAX_OBJS_PER_SPAN)
            die("class %u: %" PRIu32 " objects per span exceeds %u", c, cls_nobjs[c], HD_MAX_OBJS_PER_SPAN);
        if (span - cls_nobjs[c] * size > span / 8)
            die("class %u: tail waste over 1/8 of the span", c);

        cls_divmagic[c] = (uint32_t)(UINT32_MAX / size + 1);
        /* Exhaustive: a magic that is off for one offset would misplace an
         * object; this is cheap at build time (1.4M multiplies in all). */
        for (uint64_t off = 0; off <= span; off++)
            if (hd_obj_index(cls_divmagic[c], off) != off / size)
                die("class %u: division magic %" PRIu32 " inexact at offset %" PRIu64, c,
                    cls_divmagic[c], off);
    }
    if (cls_size[nclasses - 1] != HD_MAX_SMALL_SIZE)
        die("largest class is %" PRIu32 ", expected %u", cls_size[nclasses - 1], HD_MAX_SMALL_SIZE);
}

/* Entry i of each lookup table: the first class whose size covers the
 * table's i-th request size. */
static void make_lookups(void)
{
    unsigned c = 0;
    for (unsigned i = 0; i < HD_SIZE_TO_CLASS8_LEN; i++) {
        uint32_t want = i * HD_SMALL_SIZE_DIV;
        while (cls_size[c] < want)
            c++;
        size_to_class8[i] = (uint8_t)c;
    }
    c = 0;
    for (unsigned i = 0; i < HD_SIZE_TO_CLASS128_LEN; i++) {
        uint32_t want = HD_SMALL_SIZE_MAX + i * HD_LARGE_SIZE_DIV;
        while (cls_size[c] < want)
            c++; /* stops by 32768 == the largest class, checked above */
        size_to_class128[i] = (uint8_t)c;
    }
}

/* Writes `n` values as a const C array, `per_line` to a line, each line
 * commented with the index of its first entry. */
static void emit_array(FILE *f, const char *type, const char *name, const char *len_expr,
                       const char *comment, const uint32_t *v, unsigned n, unsigned per_line,
                       int width)
{
    fprintf(f, "\n/* %s */\nconst %s %s[%s] = {\n", comment, type, name, len_expr);
    for (unsigned i = 0; i < n; i++) {
        if (i % per_line == 0)
            fprintf(f, "    /* %3u */", i);
        fprintf(f, " %*" PRIu32 ",", width, v[i]);
        if (i % per_line == per_line - 1 || i == n - 1)
            fputc('\n', f);
    }
    fprintf(f, "};\n");
}

static void emit(FILE *f)
{
    uint32_t tmp[HD_SIZE_TO_CLASS128_LEN];

    fprintf(f,
            "/* Size-class tables for heapd.\n"
            " *\n"
            " * GENERATED by shm/mksizeclasses.c (Go's mksizeclasses algorithm) at build\n"
            " * time. DO NOT EDIT: change the generator instead. Declarations and the\n"
            " * invariants these tables obey are in shm/sizeclasses.h.\n"
            " *\n"
            " * class  bytes/obj  bytes/span  objects  tail waste\n");
    for (unsigned c = 1; c < nclasses; c++) {
        uint32_t span = cls_npages[c] * HD_PAGE_SIZE;
        fprintf(f, " * %5u  %9" PRIu32 "  %10" PRIu32 "  %7" PRIu32 "  %10" PRIu32 "\n", c,
                cls_size[c], span, cls_nobjs[c], span - cls_nobjs[c] * cls_size[c]);
    }
    fprintf(f, " */\n#include \"sizeclasses.h\"\n");

    emit_array(f, "uint32_t", "hd_class_to_size", "HD_NUM_SIZE_CLASSES",
               "Bytes per object of each class; class 0 (large) is 0.", cls_size, nclasses, 8, 5);
    emit_array(f, "uint8_t", "hd_class_to_npages", "HD_NUM_SIZE_CLASSES",
               "Pages (8 KiB) per span of each class.", cls_npages, nclasses, 16, 2);
    emit_array(f, "uint16_t", "hd_class_to_nobjs", "HD_NUM_SIZE_CLASSES",
               "Objects per span: span bytes / size.", cls_nobjs, nclasses, 16, 4);
    emit_array(f, "uint32_t", "hd_class_to_divmagic", "HD_NUM_SIZE_CLASSES",
               "UINT32_MAX / size + 1: offset / size == (offset * magic) >> 32.", cls_divmagic,
               nclasses, 6, 10);
    for (unsigned i = 0; i < HD_SIZE_TO_CLASS8_LEN; i++)
        tmp[i] = size_to_class8[i];
    emit_array(f, "uint8_t", "hd_size_to_class8", "HD_SIZE_TO_CLASS8_LEN",
               "Entry i: first class whose size >= i*8.", tmp, HD_SIZE_TO_CLASS8_LEN, 16, 2);
    for (unsigned i = 0; i < HD_SIZE_TO_CLASS128_LEN; i++)
        tmp[i] = size_to_class128[i];
    emit_array(f, "uint8_t", "hd_size_to_class128", "HD_SIZE_TO_CLASS128_LEN",
               "Entry i: first class whose size >= 1024 + i*128.", tmp, HD_SIZE_TO_CLASS128_LEN,
               16, 2);
}

int main(int argc, char **argv)
{
    if (argc > 0 && argv[0])
        progname = argv[0];
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUTFILE\n", progname);
        return 2;
    }
    make_classes();
    derive_per_class();
    make_lookups();

    /* Write a temporary file next to OUTFILE and rename it into place, so a
     * failed run never leaves a partial table that would satisfy the build,
     * and never deletes anything it did not create. */
    const char *out = argv[1];
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out, (long)getpid()) >= (int)sizeof tmp)
        die("output path too long: %s", out);
    FILE *f = fopen(tmp, "w");
    if (!f)
        die("cannot create %s: %m", tmp);
    emit(f);
    bool bad = ferror(f) != 0;
    if (fclose(f) != 0)
        bad = true;
    if (bad) {
        remove(tmp);
        die("error writing %s", tmp);
    }
    if (rename(tmp, out) != 0) {
        int e = errno;
        remove(tmp);
        errno = e;
        die("cannot rename %s to %s: %m", tmp, out);
    }
    return 0;
}
