/* table-build: builds a hash table of N strings in the shared heap and prints
 * its offset; table-read (another process) finds it by that offset.
 * Usage: table-build [N] [SOCKET]   (socket default: $HEAPD_SOCKET, etc.) */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "heapd.h"
#include "table.h"

static char *hstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = heapd_malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000;
    if (n <= 0) {
        fprintf(stderr, "table-build: N must be a positive number\n");
        return 2;
    }
    if (heapd_attach(argc > 2 ? argv[2] : NULL) != 0) {
        fprintf(stderr, "table-build: cannot attach to heapd: %s (is it running? try `make run`)\n",
                strerror(errno));
        return 1;
    }
    uint64_t nb = (uint64_t)n / 2 + 1;
    struct table *t = heapd_calloc(1, sizeof(*t) + nb * sizeof(struct entry *));
    if (!t) {
        perror("table-build: heapd_calloc");
        return 1;
    }
    t->magic = TABLE_MAGIC;
    t->nbuckets = nb;
    char key[64], val[128];
    for (long i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "key-%ld", i);
        snprintf(val, sizeof(val), "value %ld from pid %d", i, (int)getpid());
        struct entry *e = heapd_malloc(sizeof(*e));
        if (!e || !(e->key = hstrdup(key)) || !(e->value = hstrdup(val))) {
            perror("table-build: heapd_malloc");
            return 1;
        }
        uint64_t b = table_hash(key) % nb;
        e->next = t->buckets[b];
        t->buckets[b] = e;
        t->count++;
    }
    uint64_t off = heapd_ptr_to_offset(t);
    if (heapd_root_set("example-table", t) != 0)     /* heapctl roots lists it */
        fprintf(stderr, "table-build: heapd_root_set: %s\n", strerror(errno));
    printf("built a table of %ld strings at %p (offset 0x%llx)\n", n, (void *)t, (unsigned long long)off);
    printf("read and free it from another process:  ./build/table-read 0x%llx\n", (unsigned long long)off);
    heapd_detach();     /* the table stays: objects outlive the process that made them */
    return 0;
}
