/* A chained hash table of strings that lives entirely in the shared heap.
 * Every pointer in it is a plain pointer: heapd maps the heap at the same
 * address in every process, so another process can walk it as is. */
#ifndef HEAPD_EXAMPLE_TABLE_H
#define HEAPD_EXAMPLE_TABLE_H
#include <stdint.h>
#include <string.h>

#define TABLE_MAGIC 0x7461626c65763031ull   /* "tablev01" */

struct entry {
    struct entry *next;
    char *key;
    char *value;
};

struct table {
    uint64_t magic;
    uint64_t nbuckets, count;
    struct entry *buckets[];
};

static inline uint64_t table_hash(const char *s)   /* FNV-1a */
{
    uint64_t h = 0xcbf29ce484222325ull;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 0x100000001b3ull;
    return h;
}

static inline const char *table_get(const struct table *t, const char *key)
{
    for (const struct entry *e = t->buckets[table_hash(key) % t->nbuckets]; e; e = e->next)
        if (strcmp(e->key, key) == 0)
            return e->value;
    return NULL;
}
#endif
