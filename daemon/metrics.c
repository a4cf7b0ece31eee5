/* metrics.c: the scrape text (mstats + build, process, per-client series) and
 * its OpenMetrics encoding. See metrics.h. */
#define _GNU_SOURCE
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "heapd_version.h"
#include "mstats.h"

typedef struct by_name {
    const char *name;
    uint64_t processes, live, cached;
} by_name_t;

static int cmp_live(const void *a, const void *b)
{
    const by_name_t *x = a, *y = b;
    if (x->live != y->live)
        return x->live < y->live ? 1 : -1;
    return strcmp(x->name, y->name);
}

static void label_value(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            fprintf(f, "\\%c", *s);
        else if (*s == '\n')
            fputs("\\n", f);
        else
            fputc(*s, f);
    }
}

static void client_family(FILE *f, const char *name, const char *help, const by_name_t *rows, size_t n,
                          size_t off)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name);
    for (size_t i = 0; i < n; i++) {
        fprintf(f, "%s{name=\"", name);
        label_value(f, rows[i].name);
        fprintf(f, "\"} %llu\n", (unsigned long long)*(const uint64_t *)((const char *)&rows[i] + off));
    }
}

/* Per-client gauges summed by name, the top METRICS_MAX_CLIENT_NAMES by live
 * bytes, the rest under "_other". */
static void clients_text(daemon_t *d, FILE *f)
{
    size_t n = 0, cap = 16;
    by_name_t *rows = malloc(cap * sizeof(*rows));
    if (!rows)
        return;
    for (client_t *c = d->clients; c; c = c->next) {
        if (!c->hello_done)
            continue;
        mstats_client_t mc;
        mstats_client(d, c, &mc);
        const char *nm = c->name[0] ? c->name : "_unnamed";
        size_t i = 0;
        while (i < n && strcmp(rows[i].name, nm))
            i++;
        if (i == n) {
            if (n == cap) {
                by_name_t *r2 = realloc(rows, 2 * cap * sizeof(*rows));
                if (!r2)
                    break;
                rows = r2;
                cap *= 2;
            }
            rows[n++] = (by_name_t){.name = nm};
        }
        rows[i].processes++;
        rows[i].live += mc.live_bytes > 0 ? (uint64_t)mc.live_bytes : 0;
        rows[i].cached += mc.cached_bytes;
    }
    qsort(rows, n, sizeof(*rows), cmp_live);
    if (n > METRICS_MAX_CLIENT_NAMES) {
        by_name_t other = {.name = "_other"};
        for (size_t i = METRICS_MAX_CLIENT_NAMES - 1; i < n; i++) {
            other.processes += rows[i].processes;
            other.live += rows[i].live;
            other.cached += rows[i].cached;
        }
        rows[METRICS_MAX_CLIENT_NAMES - 1] = other;
        n = METRICS_MAX_CLIENT_NAMES;
    }
    client_family(f, "heapd_client_processes", "Connected client processes, by client name.", rows, n,
                  offsetof(by_name_t, processes));
    client_family(f, "heapd_client_live_bytes", "Bytes allocated and not yet freed by clients, by client name.",
                  rows, n, offsetof(by_name_t, live));
    client_family(f, "heapd_client_cached_bytes", "Bytes in spans cached by clients, by client name.", rows, n,
                  offsetof(by_name_t, cached));
    free(rows);
}

/* OpenMetrics from the 0.0.4 text: counter families lose _total in HELP and
 * TYPE, gauge families named *_info become info families, "# EOF" ends it. */
static char *to_openmetrics(const char *text, size_t *len)
{
    char *out = NULL;
    size_t olen = 0;
    FILE *f = open_memstream(&out, &olen);
    if (!f)
        return NULL;
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        bool help = !strncmp(p, "# HELP ", 7), type = !strncmp(p, "# TYPE ", 7);
        if (help || type) {
            const char *name = p + 7, *sp = memchr(name, ' ', n - 7);
            size_t nlen = sp ? (size_t)(sp - name) : n - 7;
            /* the family's TYPE line: the HELP line comes just before it */
            const char *tl = type ? p : nl ? nl + 1 : "";
            bool counter = false, info = false;
            if (!strncmp(tl, "# TYPE ", 7) && !strncmp(tl + 7, name, nlen) && tl[7 + nlen] == ' ') {
                counter = !strncmp(tl + 8 + nlen, "counter", 7);
                info = !strncmp(tl + 8 + nlen, "gauge", 5);
            }
            if (counter && nlen > 6 && !memcmp(name + nlen - 6, "_total", 6)) {
                fprintf(f, "%.*s%.*s%.*s\n", 7, p, (int)(nlen - 6), name, (int)(n - 7 - nlen), name + nlen);
            } else if (info && nlen > 5 && !memcmp(name + nlen - 5, "_info", 5)) {
                if (type)
                    fprintf(f, "# TYPE %.*s info\n", (int)(nlen - 5), name);
                else
                    fprintf(f, "%.*s%.*s%.*s\n", 7, p, (int)(nlen - 5), name, (int)(n - 7 - nlen), name + nlen);
            } else {
                fprintf(f, "%.*s\n", (int)n, p);
            }
        } else if (n) {
            fprintf(f, "%.*s\n", (int)n, p);
        }
        p += n + (nl ? 1 : 0);
    }
    fputs("# EOF\n", f);
    if (fclose(f) != 0) {
        free(out);
        return NULL;
    }
    *len = olen;
    return out;
}

char *metrics_text(daemon_t *d, bool openmetrics, size_t *len)
{
    mstats_t *m = malloc(sizeof(*m));
    if (!m)
        return NULL;
    mstats_read(d, m);
    size_t mlen;
    char *base = mstats_prometheus(m, &mlen);
    free(m);
    if (!base)
        return NULL;
    char *text = NULL;
    size_t tlen = 0;
    FILE *f = open_memstream(&text, &tlen);
    if (!f) {
        free(base);
        return NULL;
    }
    fwrite(base, 1, mlen, f);
    free(base);
    fprintf(f, "# HELP heapd_build_info heapd's version, client protocol and segment layout versions.\n"
               "# TYPE heapd_build_info gauge\n"
               "heapd_build_info{version=\"%s\",protocol=\"%u\",layout=\"%u\"} 1\n",
            HEAPD_VERSION, (unsigned)HD_PROTO_VERSION, (unsigned)HD_LAYOUT_VERSION);
    fprintf(f, "# HELP process_start_time_seconds Start time of the process since the Unix epoch in seconds.\n"
               "# TYPE process_start_time_seconds gauge\n"
               "process_start_time_seconds %.3f\n", d->start_time_s);
    clients_text(d, f);
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    if (!openmetrics) {
        *len = tlen;
        return text;
    }
    char *om = to_openmetrics(text, len);
    free(text);
    return om;
}
