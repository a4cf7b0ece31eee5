/* table-read: finds the table table-build made, by its offset, checks and
 * prints a few entries, then frees every object of it (cross-process free).
 * It checks what it reads: an offset is only a number, and the table may be
 * gone (freed by an earlier table-read, its memory reused). Every object it
 * follows must be live (heapd_usable_size, 0 for a freed object) and big
 * enough, and the table is unmarked before it is freed.
 * Usage: table-read OFFSET [SOCKET] */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "heapd.h"
#include "table.h"

/* A live heap object of at least n bytes? */
static int live(const void *p, size_t n) { return p && heapd_usable_size(p) >= n; }

/* A live string: NUL-terminated inside its object. */
static int live_str(const char *s)
{
    size_t n = heapd_usable_size(s);
    return s && n && memchr(s, 0, n) != NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: table-read OFFSET [SOCKET]\n");
        return 2;
    }
    char *end;
    errno = 0;
    uint64_t off = strtoull(argv[1], &end, 0);
    if (errno || *end) {
        fprintf(stderr, "table-read: bad offset '%s'\n", argv[1]);
        return 2;
    }
    if (heapd_attach(argc > 2 ? argv[2] : NULL) != 0) {
        fprintf(stderr, "table-read: cannot attach to heapd: %s\n", strerror(errno));
        return 1;
    }
    struct table *t = heapd_offset_to_ptr(off);
    if (!live(t, sizeof(*t)) || t->magic != TABLE_MAGIC ||
        heapd_usable_size(t) < sizeof(*t) + t->nbuckets * sizeof(struct entry *)) {
        fprintf(stderr, "table-read: no table at offset %#llx\n", (unsigned long long)off);
        return 1;
    }
    printf("table at %p: %llu strings in %llu buckets\n", (void *)t, (unsigned long long)t->count,
           (unsigned long long)t->nbuckets);
    /* walk it once, checking every object, before trusting anything in it */
    uint64_t seen = 0;
    for (uint64_t b = 0; b < t->nbuckets; b++)
        for (const struct entry *e = t->buckets[b]; e; e = e->next) {
            if (!live(e, sizeof(*e)) || !live_str(e->key) || !live_str(e->value) || ++seen > t->count) {
                fprintf(stderr, "table-read: the table at offset %#llx is damaged (bucket %llu)\n",
                        (unsigned long long)off, (unsigned long long)b);
                return 1;
            }
        }
    const char *probe[] = {"key-0", "key-1", "key-42", "key-999", "no-such-key"};
    for (size_t i = 0; i < sizeof(probe) / sizeof(probe[0]); i++) {
        const char *v = table_get(t, probe[i]);
        printf("  %-12s -> %s\n", probe[i], v ? v : "(absent)");
    }
    uint64_t freed = 0;
    for (uint64_t b = 0; b < t->nbuckets; b++) {
        for (struct entry *e = t->buckets[b], *next; e; e = next) {
            next = e->next;
            heapd_free(e->key);
            heapd_free(e->value);
            heapd_free(e);
            freed++;
        }
    }
    t->magic = 0;                       /* no longer a table, whoever reads it next */
    (void)heapd_root_cas("example-table", t, NULL);  /* unname it, if table-build's root names it */
    heapd_free(t);
    printf("freed %llu entries and the table (%llu bad frees)\n", (unsigned long long)freed,
           (unsigned long long)heapd_bad_frees());
    heapd_detach();
    return heapd_bad_frees() ? 1 : 0;
}
