/* size.c: byte sizes exactly as GOMEMLIMIT takes them. See size.h. */
#include "size.h"

#include <string.h>

int hd_parse_size(const char *s, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    uint64_t v = 0;
    while (*s >= '0' && *s <= '9') {
        unsigned d = (unsigned)(*s++ - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    static const struct { const char *suffix; unsigned shift; } units[] = {
        {"", 0}, {"B", 0}, {"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"TiB", 40},
    };
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(s, units[i].suffix) != 0)
            continue;
        if (units[i].shift && v > (UINT64_MAX >> units[i].shift))
            return -1;
        *out = v << units[i].shift;
        return 0;
    }
    return -1;
}

int hd_parse_limit(const char *s, uint64_t *out)
{
    if (s && !strcmp(s, "off")) {
        *out = 0;
        return 0;
    }
    return hd_parse_size(s, out);
}
