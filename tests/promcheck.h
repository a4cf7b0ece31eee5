/* promcheck: a checker for the Prometheus text exposition format (0.0.4),
 * since promtool is not in Debian. Used by the unit tests (mstats_prometheus)
 * and the integration tests (heapctl metrics).
 *
 * Checks: every line is a comment (# HELP name text, # TYPE name type, or
 * another #), or a sample `name{label="value",...} value [timestamp]`;
 * names and label names match the grammar; label values use only the \\, \"
 * and \n escapes; values are floats, +Inf, -Inf or NaN; a TYPE comes at most
 * once per family, before its samples; a family's lines are contiguous; no
 * sample repeats (name + labels); counters are >= 0; histogram samples are
 * name_bucket (with le), name_sum, name_count, with le increasing, bucket
 * counts cumulative, a le="+Inf" bucket equal to name_count; the text ends
 * with a newline. Returns true, or false with a message naming the line.
 *
 * om_check checks the OpenMetrics 1.0 text format the same way, with its
 * differences: the text ends with "# EOF" and has no blank line; a counter
 * family is named without _total and its samples are name_total (and
 * name_created); an info family's samples are name_info with value 1; types
 * are counter, gauge, histogram, summary, info, stateset, gaugehistogram or
 * unknown (no untyped).
 */
#ifndef HEAPD_TESTS_PROMCHECK_H
#define HEAPD_TESTS_PROMCHECK_H

#include <ctype.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PC_MAX_FAMILIES 512
#define PC_MAX_SAMPLES 8192

typedef struct pc_family {
    char name[128];
    char type[16];          /* "" until TYPE (untyped) */
    bool seen_samples, closed;
    /* histograms without extra labels: the running bucket state */
    double last_le, last_count, inf_count, count;
    bool have_inf, have_count;
} pc_family_t;

typedef struct pc_state {
    pc_family_t fam[PC_MAX_FAMILIES];
    unsigned nfam;
    int cur;                /* family of the previous line, -1 none */
    char (*seen)[256];      /* sample keys seen */
    unsigned nseen;
    bool om;                /* OpenMetrics rules (om_check) */
} pc_state_t;

static bool pc_name_ok(const char *s, size_t n, bool label)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = isalpha((unsigned char)c) || c == '_' || (!label && c == ':') || (i > 0 && isdigit((unsigned char)c));
        if (!ok)
            return false;
    }
    return true;
}

static bool pc_value_ok(const char *s, double *v)
{
    if (!strcmp(s, "+Inf")) {
        *v = INFINITY;
        return true;
    }
    if (!strcmp(s, "-Inf")) {
        *v = -INFINITY;
        return true;
    }
    if (!strcmp(s, "NaN")) {
        *v = NAN;
        return true;
    }
    if (!*s)
        return false;
    char *end;
    *v = strtod(s, &end);
    return *end == 0 && (isdigit((unsigned char)s[0]) || s[0] == '-' || s[0] == '+' || s[0] == '.');
}

static int pc_family_of(pc_state_t *st, const char *name, bool create)
{
    for (unsigned i = 0; i < st->nfam; i++)
        if (!strcmp(st->fam[i].name, name))
            return (int)i;
    if (!create || st->nfam == PC_MAX_FAMILIES)
        return -1;
    pc_family_t *f = &st->fam[st->nfam];
    memset(f, 0, sizeof(*f));
    size_t n = strnlen(name, sizeof(f->name) - 1);      /* a longer name is cut (compared cut, too) */
    memcpy(f->name, name, n);
    f->name[n] = '\0';
    f->last_le = -INFINITY;
    return (int)st->nfam++;
}

/* The family a sample belongs to: a histogram/summary's name without its suffix. */
static int pc_sample_family(pc_state_t *st, const char *name)
{
    static const char *sfx[] = {"_bucket", "_sum", "_count", "_total", "_created", "_info"};
    size_t n = strlen(name);
    for (unsigned k = 0; k < (st->om ? 6u : 3u); k++) {
        size_t m = strlen(sfx[k]);
        if (n > m && !strcmp(name + n - m, sfx[k])) {
            char base[128];
            snprintf(base, sizeof(base), "%.*s", (int)(n - m), name);
            int f = pc_family_of(st, base, false);
            if (f >= 0 && k < 3 && (!strcmp(st->fam[f].type, "histogram") || !strcmp(st->fam[f].type, "summary")))
                return f;
            if (f >= 0 && k >= 3 && k < 5 && !strcmp(st->fam[f].type, "counter"))
                return f;
            if (f >= 0 && k == 5 && !strcmp(st->fam[f].type, "info"))
                return f;
        }
    }
    return pc_family_of(st, name, true);
}

#define PC_FAIL(...) do { snprintf(err, errlen, "line %u: ", lineno); \
    size_t _l = strlen(err); snprintf(err + _l, errlen - _l, __VA_ARGS__); goto fail; } while (0)

static bool pc_check(const char *text, bool om, char *err, size_t errlen)
{
    pc_state_t *st = calloc(1, sizeof(*st));
    if (!st) {
        snprintf(err, errlen, "out of memory");
        return false;
    }
    st->om = om;
    st->seen = calloc(PC_MAX_SAMPLES, sizeof(*st->seen));
    st->cur = -1;
    unsigned lineno = 0;
    size_t tl = strlen(text);
    if (!st->seen) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (tl == 0 || text[tl - 1] != '\n') {
        snprintf(err, errlen, "the text must end with a newline");
        goto fail;
    }
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        size_t n = (size_t)(nl - p);
        char line[4096];
        lineno++;
        if (n >= sizeof(line))
            PC_FAIL("too long");
        memcpy(line, p, n);
        line[n] = 0;
        p = nl + 1;
        if (n == 0 && om)
            PC_FAIL("a blank line (OpenMetrics has none)");
        if (n == 0)
            continue;
        if (om && !strcmp(line, "# EOF")) {
            if (*p)
                PC_FAIL("text after # EOF");
            st->cur = -2;               /* seen */
            break;
        }
        if (line[0] == '#') {
            char kw[8], name[256];
            int off = 0;
            if (sscanf(line, "# %7s %255s %n", kw, name, &off) >= 2 && (!strcmp(kw, "HELP") || !strcmp(kw, "TYPE"))) {
                if (!pc_name_ok(name, strlen(name), false))
                    PC_FAIL("bad metric name '%s' in %s", name, kw);
                int f = pc_family_of(st, name, true);
                if (f < 0)
                    PC_FAIL("too many families");
                if (st->fam[f].closed || (st->cur >= 0 && st->cur != f && st->fam[f].seen_samples))
                    PC_FAIL("%s for %s after its samples", kw, name);
                if (!strcmp(kw, "TYPE")) {
                    const char *t = line + (off ? off : (int)n);
                    if (st->fam[f].type[0])
                        PC_FAIL("second TYPE for %s", name);
                    if (st->fam[f].seen_samples)
                        PC_FAIL("TYPE for %s after its samples", name);
                    if (strcmp(t, "counter") && strcmp(t, "gauge") && strcmp(t, "histogram") && strcmp(t, "summary") &&
                        (om || strcmp(t, "untyped")) &&
                        (!om || (strcmp(t, "info") && strcmp(t, "unknown") && strcmp(t, "stateset") &&
                                 strcmp(t, "gaugehistogram"))))
                        PC_FAIL("bad type '%s'", t);
                    size_t nl2 = strlen(name);
                    if (om && !strcmp(t, "counter") && nl2 > 6 && !strcmp(name + nl2 - 6, "_total"))
                        PC_FAIL("OpenMetrics counter family %s is named with _total", name);
                    snprintf(st->fam[f].type, sizeof(st->fam[f].type), "%s", t);
                } else {
                    for (const char *q = line + (off ? off : (int)n); *q; q++)
                        if (*q == '\\' && q[1] != '\\' && q[1] != 'n')
                            PC_FAIL("bad escape in HELP");
                        else if (*q == '\\')
                            q++;
                }
                if (st->cur >= 0 && st->cur != f)
                    st->fam[st->cur].closed = true;
                st->cur = f;
            }
            continue;
        }
        /* a sample */
        size_t i = 0;
        while (line[i] && (isalnum((unsigned char)line[i]) || line[i] == '_' || line[i] == ':'))
            i++;
        char name[256];
        if (i == 0 || i >= sizeof(name))
            PC_FAIL("no metric name");
        memcpy(name, line, i);
        name[i] = 0;
        if (!pc_name_ok(name, i, false))
            PC_FAIL("bad metric name '%s'", name);
        char key[256], labels[2048] = "", le[64] = "";
        size_t ll = 0;
        if (line[i] == '{') {
            i++;
            char lnames[16][64];
            unsigned nlab = 0;
            for (;;) {
                if (line[i] == '}') {
                    i++;
                    break;
                }
                size_t s0 = i;
                while (isalnum((unsigned char)line[i]) || line[i] == '_')
                    i++;
                if (!pc_name_ok(line + s0, i - s0, true) || i - s0 >= 64)
                    PC_FAIL("bad label name");
                if (nlab == 16)
                    PC_FAIL("too many labels");
                snprintf(lnames[nlab], 64, "%.*s", (int)(i - s0), line + s0);
                for (unsigned k = 0; k < nlab; k++)
                    if (!strcmp(lnames[k], lnames[nlab]))
                        PC_FAIL("label %.60s twice", lnames[nlab]);
                nlab++;
                if (line[i] != '=' || line[i + 1] != '"')
                    PC_FAIL("label %.60s: expected =\"", lnames[nlab - 1]);
                i += 2;
                char val[256];
                size_t vl = 0;
                for (;;) {
                    char c = line[i];
                    if (c == 0)
                        PC_FAIL("unterminated label value");
                    if (c == '"')
                        break;
                    if (c == '\\') {
                        char e = line[i + 1];
                        if (e != '\\' && e != '"' && e != 'n')
                            PC_FAIL("bad escape \\%c in a label value", e);
                        i++;
                    }
                    if (vl + 1 < sizeof(val))
                        val[vl++] = line[i];
                    i++;
                }
                val[vl] = 0;
                i++;
                if (!strcmp(lnames[nlab - 1], "le"))
                    snprintf(le, sizeof(le), "%.63s", val);
                else if (ll < sizeof(labels))
                    ll += (size_t)snprintf(labels + ll, sizeof(labels) - ll, "%s=%s,", lnames[nlab - 1], val);
                if (line[i] == ',')
                    i++;
                else if (line[i] != '}')
                    PC_FAIL("expected , or } after a label");
            }
        }
        if (line[i] != ' ')
            PC_FAIL("expected a space before the value");
        while (line[i] == ' ')
            i++;
        char vs[64] = "", ts[64] = "";
        if (sscanf(line + i, "%63s %63s", vs, ts) < 1)
            PC_FAIL("no value");
        double v;
        if (!pc_value_ok(vs, &v))
            PC_FAIL("bad value '%s'", vs);
        if (ts[0]) {
            char *end;
            strtoll(ts, &end, 10);
            if (*end)
                PC_FAIL("bad timestamp '%s'", ts);
        }
        int f = pc_sample_family(st, name);
        if (f < 0)
            PC_FAIL("too many families");
        pc_family_t *fm = &st->fam[f];
        if (fm->closed || (st->cur >= 0 && st->cur != f && fm->seen_samples))
            PC_FAIL("samples of %s are not contiguous", fm->name);
        if (st->cur >= 0 && st->cur != f)
            st->fam[st->cur].closed = true;
        st->cur = f;
        fm->seen_samples = true;
        int kn = snprintf(key, sizeof(key), "%s{%s%s%s}", name, labels, le[0] ? "le=" : "", le);
        (void)kn;                       /* a longer key is cut: fine for finding repeats */
        for (unsigned k = 0; k < st->nseen; k++)
            if (!strcmp(st->seen[k], key))
                PC_FAIL("sample %.120s twice", key);
        if (st->nseen < PC_MAX_SAMPLES)
            snprintf(st->seen[st->nseen++], sizeof(st->seen[0]), "%s", key);
        bool is_hist = !strcmp(fm->type, "histogram");
        if (!strcmp(fm->type, "counter") && !(v >= 0))
            PC_FAIL("counter %s is %g", name, v);
        if (om && !strcmp(fm->type, "counter")) {
            size_t bn = strlen(fm->name);
            if (strncmp(name, fm->name, bn) || (strcmp(name + bn, "_total") && strcmp(name + bn, "_created")))
                PC_FAIL("counter sample %s is not %s_total or %s_created", name, fm->name, fm->name);
        } else if (om && !strcmp(fm->type, "info")) {
            if (strncmp(name, fm->name, strlen(fm->name)) || strcmp(name + strlen(fm->name), "_info") || v != 1)
                PC_FAIL("info sample %s is not %s_info 1", name, fm->name);
        } else if (!strcmp(fm->type, "counter") || !strcmp(fm->type, "gauge")) {
            if (strcmp(name, fm->name))
                PC_FAIL("sample %s in family %s", name, fm->name);
        }
        if (is_hist) {
            size_t bn = strlen(fm->name);
            const char *suffix = name + bn;
            if (!strcmp(suffix, "_bucket")) {
                double lev;
                if (!le[0] || !pc_value_ok(le, &lev))
                    PC_FAIL("bucket without a valid le");
                if (labels[0])
                    PC_FAIL("this checker handles histograms without other labels only");
                if (!(lev > fm->last_le))
                    PC_FAIL("le %s does not increase", le);
                if (v < fm->last_count)
                    PC_FAIL("bucket le=%s count %g below the previous %g", le, v, fm->last_count);
                fm->last_le = lev;
                fm->last_count = v;
                if (isinf(lev)) {
                    fm->have_inf = true;
                    fm->inf_count = v;
                }
            } else if (!strcmp(suffix, "_count")) {
                fm->have_count = true;
                fm->count = v;
            } else if (strcmp(suffix, "_sum")) {
                PC_FAIL("sample %s in histogram %s", name, fm->name);
            } else if (le[0]) {
                PC_FAIL("le on %s", name);
            }
        }
    }
    if (om && st->cur != -2) {
        snprintf(err, errlen, "no # EOF at the end");
        goto fail;
    }
    for (unsigned f = 0; f < st->nfam; f++) {
        pc_family_t *fm = &st->fam[f];
        if (!strcmp(fm->type, "histogram") && fm->seen_samples) {
            if (!fm->have_inf || !fm->have_count)
                { snprintf(err, errlen, "histogram %s lacks le=\"+Inf\" or _count", fm->name); goto fail; }
            if (fm->inf_count != fm->count)
                { snprintf(err, errlen, "histogram %s: +Inf bucket %g != count %g", fm->name, fm->inf_count, fm->count); goto fail; }
        }
    }
    free(st->seen);
    free(st);
    return true;
fail:
    free(st->seen);
    free(st);
    return false;
}
#undef PC_FAIL

static bool __attribute__((unused)) prom_check(const char *text, char *err, size_t errlen)
{
    return pc_check(text, false, err, errlen);
}

static bool __attribute__((unused)) om_check(const char *text, char *err, size_t errlen)
{
    return pc_check(text, true, err, errlen);
}

/* The value of the sample `name` (exact text, labels included, e.g.
 * "heapd_spans{state=\"large\"}"), or NAN. */
static double __attribute__((unused)) prom_value(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, name, n) && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return NAN;
}

#endif
