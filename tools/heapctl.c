/* heapctl: talk to a running heapd over its control socket.
 *
 *   heapctl [--control PATH] [--json] [--hard SIZE|off] [--soft SIZE|off]
 *           [-n N | --once] [-d SECONDS] COMMAND [ARGS]    (options anywhere)
 *     stats [--json]          memstats of the whole shared heap (Go's MemStats names)
 *     clients [--json]        clients: pid, name, live bytes, cached spans, quota, state
 *     metrics                 Prometheus text exposition format
 *     limit [SOFT] [--hard SIZE]   show the limits, or set them (SIZE like GOMEMLIMIT; off = no limit)
 *     scavenge                return every free page to the OS now
 *     flush                   ask every client to give back its cached spans
 *     roots [--json]          the named roots (heapd_root_set): name, offset, object size
 *     top [-n N | --once] [-d SECONDS]   a live view, refreshed every second
 *   heapctl --help | --version
 *
 * The control socket is --control PATH, else $HEAPD_CONTROL, else the first
 * of the default client sockets + ".ctl" that exists (shm/paths.h:
 * $HEAPD_SOCKET, $XDG_RUNTIME_DIR/heapd.sock, /run/heapd/heapd.sock,
 * /tmp/heapd-UID/heapd.sock), which is what heapd uses by default.
 *
 * Exit codes: 0 done; 1 the daemon could not be reached or refused the
 * request (one line on stderr saying why; pointed at the client socket, it
 * says so and names the control socket); 2 bad usage (unknown command, bad
 * size, bad option: one line on stderr; --help prints the full text).
 *
 * Protocol (docs/protocol.md): SOCK_STREAM, each message a 4-byte
 * little-endian length and a protobuf-c ControlRequest / ControlReply.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "control.pb-c.h"
#include "heapd_version.h"
#include "paths.h"
#include "segment.h"
#include "size.h"
#include "sizeclasses.h"

#define REPLY_MAX   (16u << 20)
#define TIMEOUT_MS  10000

static const char *ctl_path;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: heapctl [--control PATH] COMMAND [ARGS]   (options may come anywhere)\n"
            "  stats [--json]             memstats of the whole shared heap (Go's MemStats names),\n"
            "                             with the limit and scavenger state\n"
            "  clients [--json]           clients: pid, name, live bytes, cached spans, quota, state\n"
            "  metrics                    Prometheus text exposition format\n"
            "  limit [SOFT] [--soft SIZE] [--hard SIZE]\n"
            "                             show the limits, or set them. SIZE is GOMEMLIMIT's syntax: bytes,\n"
            "                             or a number with B, KiB, MiB, GiB or TiB (512MiB); off = no limit\n"
            "  scavenge                   return every free page to the OS now\n"
            "  flush                      ask every client to give back its cached spans\n"
            "  roots [--json]             the named roots: name, heap offset, size of the live object\n"
            "  top [-n N | --once] [-d SECONDS]   live view, refreshed every second (N rounds)\n"
            "options:\n"
            "  -c, --control PATH         the daemon's control socket\n"
            "  -h, --help                 this text;  -V, --version  heapctl's version\n"
            "control socket: --control PATH, else $HEAPD_CONTROL, else the first of $HEAPD_SOCKET,\n"
            "$XDG_RUNTIME_DIR/heapd.sock, /run/heapd/heapd.sock, /tmp/heapd-UID/heapd.sock whose .ctl exists\n"
            "exit status: 0 done, 1 the daemon could not be reached or refused, 2 bad usage\n");
}

static void __attribute__((noreturn, format(printf, 2, 3))) die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("heapctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

/* ---- the exchange -------------------------------------------------------------------- */

static int ctl_fd = -1;
static uint64_t ctl_seq;

static void ctl_connect(void)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(ctl_path) >= sizeof(sa.sun_path))
        die(2, "control socket path too long (at most %zu bytes): %s", sizeof(sa.sun_path) - 1, ctl_path);
    strcpy(sa.sun_path, ctl_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die(1, "socket: %s", strerror(errno));
    int r;
    while ((r = connect(fd, (struct sockaddr *)&sa, sizeof(sa))) < 0 && errno == EINTR)
        ;
    if (r < 0) {
        int e = errno;
        if (e == ENOENT || e == ENOTDIR)
            die(1, "no daemon at %s (no such socket; is heapd running? see --control, $HEAPD_CONTROL)", ctl_path);
        if (e == ECONNREFUSED || e == EPROTOTYPE) {
            /* a SOCK_SEQPACKET listener is heapd's client socket */
            int probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
            bool client_sock = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0;
            if (probe >= 0)
                close(probe);
            if (client_sock)
                die(1, "%s is heapd's client socket, not its control socket (try --control %s.ctl)", ctl_path,
                    ctl_path);
            die(1, "no daemon at %s (connection refused: a stale socket)", ctl_path);
        }
        if (e == EACCES || e == EPERM)
            die(1, "permission denied: %s", ctl_path);
        die(1, "cannot connect to %s: %s", ctl_path, strerror(e));
    }
    ctl_fd = fd;
}

/* 0, or an errno: the daemon may have answered (a refusal) and closed
 * before reading the request, so the caller reads its answer first. */
static int write_all(const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = send(ctl_fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? errno : EPIPE;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int write_err;           /* a failed write, to name if no answer comes either */

static void read_all(uint8_t *p, size_t n)
{
    while (n) {
        struct pollfd pf = {.fd = ctl_fd, .events = POLLIN};
        int r = poll(&pf, 1, TIMEOUT_MS);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0)
            die(1, "the daemon at %s did not answer within %d s", ctl_path, TIMEOUT_MS / 1000);
        ssize_t got = recv(ctl_fd, p, n, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            die(1, "the daemon at %s closed the connection%s%s", ctl_path, got < 0 || write_err ? ": " : "",
                got < 0 ? strerror(errno) : write_err ? strerror(write_err) : "");
        p += got;
        n -= (size_t)got;
    }
}

/* Send req, return the reply (the caller frees it with heapdctl__control_reply__free_unpacked).
 * An Error reply ends the program with its message. */
static Heapdctl__ControlReply *call(Heapdctl__ControlRequest *req)
{
    if (ctl_fd < 0)
        ctl_connect();
    req->seq = ++ctl_seq;
    size_t n = heapdctl__control_request__get_packed_size(req);
    uint8_t *buf = malloc(4 + n);
    if (!buf)
        die(1, "out of memory");
    buf[0] = (uint8_t)n;
    buf[1] = (uint8_t)(n >> 8);
    buf[2] = (uint8_t)(n >> 16);
    buf[3] = (uint8_t)(n >> 24);
    heapdctl__control_request__pack(req, buf + 4);
    write_err = write_all(buf, 4 + n);
    free(buf);
    uint8_t hdr[4];
    read_all(hdr, 4);
    uint32_t len = (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 | (uint32_t)hdr[2] << 16 | (uint32_t)hdr[3] << 24;
    if (len > REPLY_MAX)
        die(1, "the daemon at %s sent a reply of %u bytes (at most %u)", ctl_path, len, REPLY_MAX);
    uint8_t *rb = malloc(len ? len : 1);
    if (!rb)
        die(1, "out of memory");
    read_all(rb, len);
    Heapdctl__ControlReply *r = heapdctl__control_reply__unpack(NULL, len, rb);
    free(rb);
    if (!r)
        die(1, "the daemon at %s sent a malformed reply", ctl_path);
    if (r->body_case == HEAPDCTL__CONTROL_REPLY__BODY_ERROR) {
        int e = r->error->err;
        const char *m = r->error->message && *r->error->message ? r->error->message : strerror(e);
        if (e == EACCES)
            die(1, "permission denied by the daemon at %s (it runs as another user)", ctl_path);
        die(1, "the daemon refused: %s", m);
    }
    if (r->seq != req->seq)
        die(1, "the daemon at %s answered another request (seq %llu, not %llu)", ctl_path,
            (unsigned long long)r->seq, (unsigned long long)req->seq);
    return r;
}

static Heapdctl__ControlReply *call_body(int body_case, Heapdctl__ControlReply__BodyCase want)
{
    Heapdctl__ControlRequest q = HEAPDCTL__CONTROL_REQUEST__INIT;
    Heapdctl__StatsRequest s = HEAPDCTL__STATS_REQUEST__INIT;
    Heapdctl__ClientsRequest c = HEAPDCTL__CLIENTS_REQUEST__INIT;
    Heapdctl__MetricsRequest m = HEAPDCTL__METRICS_REQUEST__INIT;
    Heapdctl__GetLimitRequest g = HEAPDCTL__GET_LIMIT_REQUEST__INIT;
    Heapdctl__ScavengeRequest sc = HEAPDCTL__SCAVENGE_REQUEST__INIT;
    Heapdctl__FlushRequest f = HEAPDCTL__FLUSH_REQUEST__INIT;
    Heapdctl__RootsRequest ro = HEAPDCTL__ROOTS_REQUEST__INIT;
    q.body_case = (Heapdctl__ControlRequest__BodyCase)body_case;
    switch (body_case) {
    case HEAPDCTL__CONTROL_REQUEST__BODY_STATS: q.stats = &s; break;
    case HEAPDCTL__CONTROL_REQUEST__BODY_CLIENTS: q.clients = &c; break;
    case HEAPDCTL__CONTROL_REQUEST__BODY_METRICS: q.metrics = &m; break;
    case HEAPDCTL__CONTROL_REQUEST__BODY_GET_LIMIT: q.get_limit = &g; break;
    case HEAPDCTL__CONTROL_REQUEST__BODY_SCAVENGE: q.scavenge = &sc; break;
    case HEAPDCTL__CONTROL_REQUEST__BODY_FLUSH: q.flush = &f; break;
    case HEAPDCTL__CONTROL_REQUEST__BODY_ROOTS: q.roots = &ro; break;
    default: break;
    }
    Heapdctl__ControlReply *r = call(&q);
    if (r->body_case != want)
        die(1, "the daemon at %s sent an unexpected reply (%d)", ctl_path, (int)r->body_case);
    return r;
}

/* ---- formatting ------------------------------------------------------------------------ */

static const char *human(uint64_t v, char *buf, size_t len)
{
    static const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double x = (double)v;
    unsigned i = 0;
    while (x >= 1024 && i < 5) {
        x /= 1024;
        i++;
    }
    if (i == 0)
        snprintf(buf, len, "%llu B", (unsigned long long)v);
    else
        snprintf(buf, len, "%.1f %s", x, u[i]);
    return buf;
}

enum kind { K_U64, K_U32, K_DBL, K_BOOL };
typedef struct field {
    const char *name;
    size_t off;
    enum kind kind;
    bool bytes;         /* show a human size next to it */
} field_t;

#define F(name, member, kind, bytes) {name, offsetof(Heapdctl__MemStats, member), kind, bytes}
/* Go's runtime.MemStats, in its order (BySize apart). */
static const field_t go_fields[] = {
    F("Alloc", alloc, K_U64, true),
    F("TotalAlloc", total_alloc, K_U64, true),
    F("Sys", sys, K_U64, true),
    F("Lookups", lookups, K_U64, false),
    F("Mallocs", mallocs, K_U64, false),
    F("Frees", frees, K_U64, false),
    F("HeapAlloc", heap_alloc, K_U64, true),
    F("HeapSys", heap_sys, K_U64, true),
    F("HeapIdle", heap_idle, K_U64, true),
    F("HeapInuse", heap_inuse, K_U64, true),
    F("HeapReleased", heap_released, K_U64, true),
    F("HeapObjects", heap_objects, K_U64, false),
    F("StackInuse", stack_inuse, K_U64, true),
    F("StackSys", stack_sys, K_U64, true),
    F("MSpanInuse", mspan_inuse, K_U64, true),
    F("MSpanSys", mspan_sys, K_U64, true),
    F("MCacheInuse", mcache_inuse, K_U64, true),
    F("MCacheSys", mcache_sys, K_U64, true),
    F("BuckHashSys", buck_hash_sys, K_U64, true),
    F("GCSys", gc_sys, K_U64, true),
    F("OtherSys", other_sys, K_U64, true),
    F("NextGC", next_gc, K_U64, true),
    F("LastGC", last_gc, K_U64, false),
    F("PauseTotalNs", pause_total_ns, K_U64, false),
    F("NumGC", num_gc, K_U32, false),
    F("NumForcedGC", num_forced_gc, K_U32, false),
    F("GCCPUFraction", gc_cpu_fraction, K_DBL, false),
    F("EnableGC", enable_gc, K_BOOL, false),
    F("DebugGC", debug_gc, K_BOOL, false),
};
/* heapd's own. */
static const field_t heapd_fields[] = {
    F("TinyAllocs", tiny_allocs, K_U64, false),
    F("LargeAllocs", large_allocs, K_U64, false),
    F("LargeAllocBytes", large_alloc_bytes, K_U64, true),
    F("LargeFrees", large_frees, K_U64, false),
    F("LargeFreeBytes", large_free_bytes, K_U64, true),
    F("HeapFree", heap_free, K_U64, true),
    F("HeapCapacity", heap_capacity, K_U64, true),
    F("SpansInuse", spans_inuse, K_U64, false),
    F("SpansCached", spans_cached, K_U64, false),
    F("SpansCentral", spans_central, K_U64, false),
    F("SpansLarge", spans_large, K_U64, false),
    F("ObjectsCentral", objects_central, K_U64, false),
    F("Clients", clients, K_U64, false),
    F("ClientsTotal", clients_total, K_U64, false),
    F("Refills", refills, K_U64, false),
    F("RefillWaits", refill_waits, K_U64, false),
    F("RefillWaitNs", refill_wait_ns, K_U64, false),
    F("BadFrees", bad_frees, K_U64, false),
    F("BadRequests", bad_requests, K_U64, false),
    F("UptimeNs", uptime_ns, K_U64, false),
    F("SlotRetries", slot_retries, K_U64, false),
    F("SlotStale", slot_stale, K_U64, false),
    F("ControlRequests", control_requests, K_U64, false),
    F("ControlThrottled", control_throttled, K_U64, false),
};
#undef F

#define L(name, member, bytes) {name, offsetof(Heapdctl__LimitState, member), K_U64, bytes}
static const field_t limit_fields[] = {
    L("SoftLimit", soft_limit, true),
    L("HardLimit", hard_limit, true),
    L("Committed", committed, true),
    L("Released", released, true),
    L("OvershootMax", overshoot_max, true),
    L("HardLimitRefusals", hard_limit_refusals, false),
    L("PressureSent", pressure_sent, false),
    L("FlushSent", flush_sent, false),
};
static const field_t scav_fields[] = {
    L("ScavengedTotal", scavenged_total, true),
    L("ScavengeRuns", scavenge_runs, false),
};
#undef L
#define NF(a) (sizeof(a) / sizeof((a)[0]))

static void print_field_text(const void *base, const field_t *f, const char *indent)
{
    const char *p = (const char *)base + f->off;
    char hb[32];
    switch (f->kind) {
    case K_U64: {
        uint64_t v;
        memcpy(&v, p, sizeof(v));
        if (f->bytes && v >= 1024)
            printf("%s%-18s %llu (%s)\n", indent, f->name, (unsigned long long)v, human(v, hb, sizeof(hb)));
        else
            printf("%s%-18s %llu\n", indent, f->name, (unsigned long long)v);
        break;
    }
    case K_U32: {
        uint32_t v;
        memcpy(&v, p, sizeof(v));
        printf("%s%-18s %u\n", indent, f->name, v);
        break;
    }
    case K_DBL: {
        double v;
        memcpy(&v, p, sizeof(v));
        printf("%s%-18s %g\n", indent, f->name, v);
        break;
    }
    case K_BOOL: {
        protobuf_c_boolean v;
        memcpy(&v, p, sizeof(v));
        printf("%s%-18s %s\n", indent, f->name, v ? "true" : "false");
        break;
    }
    }
}

static void print_field_json(const void *base, const field_t *f, bool *first)
{
    const char *p = (const char *)base + f->off;
    printf("%s\"%s\":", *first ? "" : ",", f->name);
    *first = false;
    switch (f->kind) {
    case K_U64: {
        uint64_t v;
        memcpy(&v, p, sizeof(v));
        printf("%llu", (unsigned long long)v);
        break;
    }
    case K_U32: {
        uint32_t v;
        memcpy(&v, p, sizeof(v));
        printf("%u", v);
        break;
    }
    case K_DBL: {
        double v;
        memcpy(&v, p, sizeof(v));
        printf("%.17g", isfinite(v) ? v : 0.0);
        break;
    }
    case K_BOOL: {
        protobuf_c_boolean v;
        memcpy(&v, p, sizeof(v));
        printf("%s", v ? "true" : "false");
        break;
    }
    }
}

static void json_string(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

/* ---- commands ---------------------------------------------------------------------------- */

static const Heapdctl__LimitState no_limits = HEAPDCTL__LIMIT_STATE__INIT;

/* One BySize row of `heapctl stats` (classes with nothing to show are left out). */
static void print_class_row(const Heapdctl__SizeClassStats *c)
{
    if (!c->mallocs && !c->frees && !c->spans_central)
        return;
    uint64_t live = c->mallocs > c->frees ? c->mallocs - c->frees : 0;
    printf("  %5u %6u %12llu %12llu %12llu %14llu %8llu\n", c->size_class, c->size,
           (unsigned long long)c->mallocs, (unsigned long long)c->frees, (unsigned long long)live,
           (unsigned long long)(live * c->size), (unsigned long long)c->spans_central);
}

static int cmd_stats(bool json)
{
    Heapdctl__ControlReply *r = call_body(HEAPDCTL__CONTROL_REQUEST__BODY_STATS, HEAPDCTL__CONTROL_REPLY__BODY_STATS);
    const Heapdctl__MemStats *s = r->stats;
    const Heapdctl__LimitState *l = s->limits ? s->limits : &no_limits;
    if (json) {
        bool first = true;
        putchar('{');
        for (size_t i = 0; i < NF(go_fields); i++)
            print_field_json(s, &go_fields[i], &first);
        printf(",\"BySize\":[");
        for (size_t i = 0; i < s->n_by_size; i++) {
            const Heapdctl__SizeClassStats *c = s->by_size[i];
            printf("%s{\"SizeClass\":%u,\"Size\":%u,\"Mallocs\":%llu,\"Frees\":%llu,\"SpansCentral\":%llu,"
                   "\"SpanBytes\":%u}", i ? "," : "", c->size_class, c->size, (unsigned long long)c->mallocs,
                   (unsigned long long)c->frees, (unsigned long long)c->spans_central, c->span_bytes);
        }
        printf("],\"LargeBySize\":[");
        for (size_t i = 0; i < s->n_large_by_size; i++) {
            const Heapdctl__SizeClassStats *c = s->large_by_size[i];
            printf("%s{\"SizeClass\":%u,\"Size\":%u,\"Mallocs\":%llu,\"Frees\":%llu,\"SpansCentral\":%llu,"
                   "\"SpanBytes\":%u}", i ? "," : "", c->size_class, c->size, (unsigned long long)c->mallocs,
                   (unsigned long long)c->frees, (unsigned long long)c->spans_central, c->span_bytes);
        }
        putchar(']');
        for (size_t i = 0; i < NF(heapd_fields); i++)
            print_field_json(s, &heapd_fields[i], &first);
        printf(",\"Limits\":{");
        first = true;
        for (size_t i = 0; i < NF(limit_fields); i++)
            print_field_json(l, &limit_fields[i], &first);
        printf("},\"Scavenger\":{");
        first = true;
        for (size_t i = 0; i < NF(scav_fields); i++)
            print_field_json(l, &scav_fields[i], &first);
        printf("},\"RPC\":[");
        for (size_t i = 0; i < s->n_rpc; i++) {
            const Heapdctl__RpcStats *p = s->rpc[i];
            printf("%s{\"Type\":", i ? "," : "");
            json_string(p->type);
            printf(",\"Count\":%llu,\"TotalNs\":%llu,\"MaxNs\":%llu}", (unsigned long long)p->count,
                   (unsigned long long)p->total_ns, (unsigned long long)p->max_ns);
        }
        printf("]}\n");
    } else {
        for (size_t i = 0; i < NF(go_fields); i++)
            print_field_text(s, &go_fields[i], "");
        printf("BySize:\n  %5s %6s %12s %12s %12s %14s %8s\n", "class", "size", "mallocs", "frees", "live",
               "live bytes", "central");
        for (size_t i = 0; i < s->n_by_size; i++)
            print_class_row(s->by_size[i]);
        for (size_t i = 0; i < s->n_large_by_size; i++)      /* the large classes, same columns */
            print_class_row(s->large_by_size[i]);
        printf("heapd:\n");
        for (size_t i = 0; i < NF(heapd_fields); i++)
            print_field_text(s, &heapd_fields[i], "  ");
        printf("Limits:\n");
        for (size_t i = 0; i < NF(limit_fields); i++)
            print_field_text(l, &limit_fields[i], "  ");
        printf("Scavenger:\n");
        for (size_t i = 0; i < NF(scav_fields); i++)
            print_field_text(l, &scav_fields[i], "  ");
        printf("RPC:\n  %-12s %12s %12s %12s\n", "type", "count", "mean us", "max us");
        for (size_t i = 0; i < s->n_rpc; i++) {
            const Heapdctl__RpcStats *p = s->rpc[i];
            printf("  %-12s %12llu %12.1f %12.1f\n", p->type, (unsigned long long)p->count,
                   p->count ? (double)p->total_ns / (double)p->count / 1e3 : 0.0, (double)p->max_ns / 1e3);
        }
    }
    heapdctl__control_reply__free_unpacked(r, NULL);
    return 0;
}

/* Clients: one row each; STATE is "quarantined" for a client whose
 * connection the daemon dropped while its process lives (its memory stays its
 * own until the process exits). */
static int cmd_clients(bool json)
{
    Heapdctl__ControlReply *r = call_body(HEAPDCTL__CONTROL_REQUEST__BODY_CLIENTS, HEAPDCTL__CONTROL_REPLY__BODY_CLIENTS);
    const Heapdctl__Clients *cl = r->clients;
    if (json) {
        printf("[");
        for (size_t i = 0; i < cl->n_clients; i++) {
            const Heapdctl__ClientInfo *c = cl->clients[i];
            printf("%s{\"ID\":%u,\"Pid\":%d,\"Uid\":%u,\"Name\":", i ? "," : "", c->id, c->pid, c->uid);
            json_string(c->name);
            printf(",\"Slot\":%u,\"LiveBytes\":%lld,\"AllocBytes\":%llu,\"FreeBytes\":%llu,\"Mallocs\":%llu,"
                   "\"Frees\":%llu,\"CachedSpans\":%u,\"CachedBytes\":%llu,\"Quota\":%llu,\"Charged\":%llu,"
                   "\"Requests\":%llu,\"MCacheBytes\":%llu,\"RefillWaits\":%llu,\"RefillWaitNs\":%llu,\"BadFrees\":%llu,"
                   "\"Family\":%u,\"State\":",
                   c->slot, (long long)c->live_bytes, (unsigned long long)c->alloc_bytes,
                   (unsigned long long)c->free_bytes, (unsigned long long)c->mallocs, (unsigned long long)c->frees,
                   c->cached_spans, (unsigned long long)c->cached_bytes, (unsigned long long)c->quota,
                   (unsigned long long)c->charged, (unsigned long long)c->requests,
                   (unsigned long long)c->mcache_bytes, (unsigned long long)c->refill_waits,
                   (unsigned long long)c->refill_wait_ns, (unsigned long long)c->bad_frees, c->family);
            json_string(c->state && *c->state ? c->state : "live");
            printf("}");
        }
        printf("]\n");
    } else {
        printf("%5s %8s %-16s %12s %12s %12s %6s %11s %11s %11s %6s %s\n", "ID", "PID", "NAME", "LIVE", "ALLOCATED",
               "FREED", "SPANS", "CACHED", "QUOTA", "CHARGED", "FAMILY", "STATE");
        for (size_t i = 0; i < cl->n_clients; i++) {
            const Heapdctl__ClientInfo *c = cl->clients[i];
            char a[32], b[32], f[32], q[32], ch[32], cb[32];
            const char *live = c->live_bytes < 0 ? (snprintf(b, sizeof(b), "-%s", human((uint64_t)-c->live_bytes, a, sizeof(a))), b)
                                                 : human((uint64_t)c->live_bytes, b, sizeof(b));
            char all[32];
            human(c->alloc_bytes, all, sizeof(all));
            char fam[16];
            snprintf(fam, sizeof fam, "%u", c->family);
            printf("%5u %8d %-16.16s %12s %12s %12s %6u %11s %11s %11s %6s %s\n", c->id, c->pid,
                   c->name && *c->name ? c->name : "-", live, all, human(c->free_bytes, f, sizeof(f)),
                   c->cached_spans, human(c->cached_bytes, cb, sizeof(cb)),
                   c->quota ? human(c->quota, q, sizeof(q)) : "none", human(c->charged, ch, sizeof(ch)),
                   c->family ? fam : "-", c->state && *c->state ? c->state : "live");
        }
        if (cl->n_clients == 0)
            printf("(no clients)\n");
    }
    heapdctl__control_reply__free_unpacked(r, NULL);
    return 0;
}

static int cmd_metrics(void)
{
    Heapdctl__ControlReply *r = call_body(HEAPDCTL__CONTROL_REQUEST__BODY_METRICS, HEAPDCTL__CONTROL_REPLY__BODY_METRICS);
    fputs(r->metrics->text ? r->metrics->text : "", stdout);
    heapdctl__control_reply__free_unpacked(r, NULL);
    return 0;
}

static void print_limits(const Heapdctl__LimitState *l)
{
    char a[32];
    if (l->soft_limit)
        printf("soft limit:   %s (%llu bytes)\n", human(l->soft_limit, a, sizeof(a)), (unsigned long long)l->soft_limit);
    else
        printf("soft limit:   off\n");
    if (l->hard_limit)
        printf("hard limit:   %s (%llu bytes)\n", human(l->hard_limit, a, sizeof(a)), (unsigned long long)l->hard_limit);
    else
        printf("hard limit:   off\n");
    printf("committed:    %s (%llu bytes)\n", human(l->committed, a, sizeof(a)), (unsigned long long)l->committed);
    printf("released:     %s\n", human(l->released, a, sizeof(a)));
    printf("overshoot max %s; refusals %llu; pressure sent %llu; flush sent %llu\n",
           human(l->overshoot_max, a, sizeof(a)), (unsigned long long)l->hard_limit_refusals,
           (unsigned long long)l->pressure_sent, (unsigned long long)l->flush_sent);
}

typedef struct opts {
    bool json, set_soft, set_hard, once;
    uint64_t soft, hard;
    long rounds;            /* top: 0 = until interrupted */
    double interval;        /* top: seconds */
    bool rounds_set, interval_set;
} opts_t;

static int cmd_limit(const opts_t *o)
{
    Heapdctl__ControlReply *r;
    if (o->set_soft || o->set_hard) {
        Heapdctl__SetLimitRequest sl = HEAPDCTL__SET_LIMIT_REQUEST__INIT;
        sl.set_soft = o->set_soft;
        sl.soft = o->soft;
        sl.set_hard = o->set_hard;
        sl.hard = o->hard;
        Heapdctl__ControlRequest q = HEAPDCTL__CONTROL_REQUEST__INIT;
        q.body_case = HEAPDCTL__CONTROL_REQUEST__BODY_SET_LIMIT;
        q.set_limit = &sl;
        r = call(&q);
        if (r->body_case != HEAPDCTL__CONTROL_REPLY__BODY_LIMITS)
            die(1, "the daemon at %s sent an unexpected reply", ctl_path);
    } else {
        r = call_body(HEAPDCTL__CONTROL_REQUEST__BODY_GET_LIMIT, HEAPDCTL__CONTROL_REPLY__BODY_LIMITS);
    }
    print_limits(r->limits);
    heapdctl__control_reply__free_unpacked(r, NULL);
    return 0;
}

static int cmd_scavenge(void)
{
    Heapdctl__ControlReply *r = call_body(HEAPDCTL__CONTROL_REQUEST__BODY_SCAVENGE, HEAPDCTL__CONTROL_REPLY__BODY_SCAVENGE);
    char a[32], b[32], c[32];
    const Heapdctl__LimitState *l = r->scavenge->limits ? r->scavenge->limits : &no_limits;
    printf("released %s (%llu bytes); %s released in all, %s committed\n",
           human(r->scavenge->released, a, sizeof(a)), (unsigned long long)r->scavenge->released,
           human(l->released, b, sizeof(b)), human(l->committed, c, sizeof(c)));
    heapdctl__control_reply__free_unpacked(r, NULL);
    return 0;
}

static int cmd_flush(void)
{
    Heapdctl__ControlReply *r = call_body(HEAPDCTL__CONTROL_REQUEST__BODY_FLUSH, HEAPDCTL__CONTROL_REPLY__BODY_FLUSH);
    printf("asked %u client%s to give back their cached spans\n", r->flush->clients, r->flush->clients == 1 ? "" : "s");
    heapdctl__control_reply__free_unpacked(r, NULL);
    return 0;
}

/* heapctl roots: names set by heapd_root_set, with their offsets and the
 * usable size of the object each names (0: freed since, the root dangles). */
static int cmd_roots(bool json)
{
    Heapdctl__ControlReply *r = call_body(HEAPDCTL__CONTROL_REQUEST__BODY_ROOTS, HEAPDCTL__CONTROL_REPLY__BODY_ROOTS);
    const Heapdctl__Roots *rr = r->roots;
    if (json) {
        printf("[");
        for (size_t i = 0; i < rr->n_roots; i++) {
            printf("%s{\"Name\":", i ? "," : "");
            json_string(rr->roots[i]->name);
            printf(",\"Offset\":%llu,\"Size\":%llu}", (unsigned long long)rr->roots[i]->offset,
                   (unsigned long long)rr->roots[i]->size);
        }
        printf("]\n");
    } else {
        printf("%-40s %18s %12s\n", "NAME", "OFFSET", "SIZE");
        for (size_t i = 0; i < rr->n_roots; i++) {
            char sz[32], off[24];
            const Heapdctl__Root *e = rr->roots[i];
            snprintf(off, sizeof(off), "0x%llx", (unsigned long long)e->offset);
            printf("%-40s %18s %12s\n", e->name, off,
                   e->size ? human(e->size, sz, sizeof(sz)) : "(freed)");
        }
        if (rr->n_roots == 0)
            printf("(no roots)\n");
    }
    heapdctl__control_reply__free_unpacked(r, NULL);
    return 0;
}

/* ---- top ------------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct top_row {
    unsigned cls, size;
    uint64_t live, live_bytes, mallocs;
    double rate;
} top_row_t;

static int cmp_rows(const void *a, const void *b)
{
    const top_row_t *x = a, *y = b;
    if (x->live_bytes != y->live_bytes)
        return x->live_bytes < y->live_bytes ? 1 : -1;
    return (int)x->cls - (int)y->cls;
}

static int cmd_top(const opts_t *o)
{
    long rounds = o->once ? 1 : o->rounds;
    double interval = o->interval;
    bool tty = isatty(1);
    int width = 100, height = 40;
    struct winsize ws;
    if (tty && ioctl(1, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 40) {
        width = ws.ws_col;
        height = ws.ws_row > 10 ? ws.ws_row : 10;
    }
    uint64_t prev_m[HD_NUM_SIZE_CLASSES] = {0}, prev_total = 0;
    double prev_t = 0;
    for (long round = 0; rounds == 0 || round < rounds; round++) {
        if (round)
            usleep((useconds_t)(interval * 1e6));
        Heapdctl__ControlReply *r = call_body(HEAPDCTL__CONTROL_REQUEST__BODY_STATS, HEAPDCTL__CONTROL_REPLY__BODY_STATS);
        const Heapdctl__MemStats *s = r->stats;
        const Heapdctl__LimitState *l = s->limits ? s->limits : &no_limits;
        double t = now_s(), dt = round ? t - prev_t : 0;
        top_row_t rows[HD_NUM_SIZE_CLASSES];
        size_t nrows = 0;
        uint64_t maxb = 1;
        for (size_t i = 0; i < s->n_by_size && i < HD_NUM_SIZE_CLASSES; i++) {
            const Heapdctl__SizeClassStats *c = s->by_size[i];
            uint64_t live = c->mallocs > c->frees ? c->mallocs - c->frees : 0;
            unsigned k = c->size_class < HD_NUM_SIZE_CLASSES ? c->size_class : 0;
            double rate = dt > 0 && c->mallocs >= prev_m[k] ? (double)(c->mallocs - prev_m[k]) / dt : 0;
            prev_m[k] = c->mallocs;
            if (!live && rate == 0)
                continue;
            rows[nrows] = (top_row_t){c->size_class, c->size, live, live * c->size, c->mallocs, rate};
            if (rows[nrows].live_bytes > maxb)
                maxb = rows[nrows].live_bytes;
            nrows++;
        }
        qsort(rows, nrows, sizeof(rows[0]), cmp_rows);
        double total_rate = dt > 0 && s->mallocs >= prev_total ? (double)(s->mallocs - prev_total) / dt : 0;
        prev_total = s->mallocs;
        prev_t = t;

        char a[32], b[32], c[32], d[32], e[32];
        if (tty)
            printf("\033[H\033[2J");
        printf("heapd top — %s   clients %llu   uptime %.0f s   (round %ld%s)\n", ctl_path,
               (unsigned long long)s->clients, (double)s->uptime_ns / 1e9, round + 1, tty ? ", q: ^C" : "");
        printf("HeapAlloc %s   HeapInuse %s   HeapIdle %s   HeapReleased %s   Sys %s\n",
               human(s->heap_alloc, a, sizeof(a)), human(s->heap_inuse, b, sizeof(b)),
               human(s->heap_idle, c, sizeof(c)), human(s->heap_released, d, sizeof(d)), human(s->sys, e, sizeof(e)));
        printf("objects %llu   mallocs %llu (%.0f/s)   frees %llu   large %llu live\n",
               (unsigned long long)s->heap_objects, (unsigned long long)s->mallocs, total_rate,
               (unsigned long long)s->frees,
               (unsigned long long)(s->large_allocs > s->large_frees ? s->large_allocs - s->large_frees : 0));
        printf("limits: soft %s  hard %s  committed %s   scavenged %s in %llu runs\n\n",
               l->soft_limit ? human(l->soft_limit, a, sizeof(a)) : "off",
               l->hard_limit ? human(l->hard_limit, b, sizeof(b)) : "off", human(l->committed, c, sizeof(c)),
               human(l->scavenged_total, d, sizeof(d)), (unsigned long long)l->scavenge_runs);
        int barw = width - 60;
        if (barw < 10)
            barw = 10;
        printf("%5s %6s %11s %11s %10s  %s\n", "class", "size", "objects", "live", "allocs/s", "live bytes");
        size_t maxrows = tty ? (size_t)(height > 9 ? height - 9 : 1) : nrows;
        for (size_t i = 0; i < nrows && i < maxrows; i++) {
            int n = (int)((double)rows[i].live_bytes / (double)maxb * barw + 0.5);
            if (rows[i].live_bytes && n == 0)
                n = 1;
            printf("%5u %6u %11llu %11s %10.0f  ", rows[i].cls, rows[i].size, (unsigned long long)rows[i].live,
                   human(rows[i].live_bytes, a, sizeof(a)), rows[i].rate);
            for (int k = 0; k < n; k++)
                fputs(tty ? "\u2588" : "#", stdout);
            putchar('\n');
        }
        if (nrows == 0)
            printf("(no live objects)\n");
        fflush(stdout);
        heapdctl__control_reply__free_unpacked(r, NULL);
    }
    return 0;
}

/* ---- main -------------------------------------------------------------------------------- */

static const char *default_path(char *buf, size_t len)
{
    const char *e = getenv("HEAPD_CONTROL");
    if (e && *e)
        return e;
    if (hd_find_socket(".ctl", buf, len) < 0)
        die(2, "the default control socket path is too long; give --control PATH");
    return buf;
}

static void __attribute__((noreturn)) bad_usage(const char *what, const char *arg)
{
    fprintf(stderr, "heapctl: %s%s%s (see heapctl --help)\n", what, arg ? " " : "", arg ? arg : "");
    exit(2);
}

static void size_opt(const char *opt, const char *v, uint64_t *out, bool *set)
{
    if (hd_parse_limit(v, out) < 0)
        die(2, "bad size '%s' for %s: %s", v, opt, HD_LIMIT_FORMS);
    *set = true;
}

int main(int argc, char **argv)
{
    enum { O_JSON = 256, O_HARD, O_SOFT, O_ONCE };
    static const struct option lopts[] = {
        {"control", required_argument, 0, 'c'}, {"help", no_argument, 0, 'h'},
        {"version", no_argument, 0, 'V'},       {"json", no_argument, 0, O_JSON},
        {"hard", required_argument, 0, O_HARD}, {"soft", required_argument, 0, O_SOFT},
        {"once", no_argument, 0, O_ONCE},       {0, 0, 0, 0},
    };
    opts_t o = {.interval = 1.0};
    char defpath[PATH_MAX + 8];
    char **argv0 = argv;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":c:hVn:d:", lopts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'c':
            if (!*optarg)
                bad_usage("--control needs a path", NULL);
            ctl_path = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("heapctl %s (protocol %u)\n", HEAPD_VERSION, (unsigned)HD_PROTO_VERSION);
            return 0;
        case O_JSON:
            o.json = true;
            break;
        case O_HARD:
            size_opt("--hard", optarg, &o.hard, &o.set_hard);
            break;
        case O_SOFT:
            size_opt("--soft", optarg, &o.soft, &o.set_soft);
            break;
        case O_ONCE:
            o.once = true;
            break;
        case 'n':
            errno = 0;
            o.rounds = strtol(optarg, &end, 10);
            if (errno || *end || o.rounds < 0 || end == optarg)
                die(2, "bad -n '%s': give a number of rounds (0: until interrupted)", optarg);
            o.rounds_set = true;
            break;
        case 'd':
            errno = 0;
            o.interval = strtod(optarg, &end);
            if (errno || *end || end == optarg || !(o.interval >= 0.01 && o.interval <= 3600))
                die(2, "bad -d '%s': give seconds between 0.01 and 3600", optarg);
            o.interval_set = true;
            break;
        case ':':
            bad_usage(argv0[optind - 1], "needs a value");
        default:
            bad_usage("unknown option", argv0[optind - 1]);
        }
    }
    if (optind >= argc)
        bad_usage("no command (stats, clients, metrics, limit, scavenge, flush, top)", NULL);
    const char *cmd = argv[optind++];
    int nargs = argc - optind;
    char **args = argv + optind;
    if (!strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    static const char *const known[] = {"stats", "clients", "metrics", "limit", "scavenge", "flush", "top", "roots"};
    bool ok = false;
    for (size_t k = 0; k < NF(known); k++)
        ok |= !strcmp(cmd, known[k]);
    if (!ok)
        die(2, "unknown command '%s' (commands: stats, clients, metrics, limit, scavenge, flush, top, roots)", cmd);
    bool is_limit = !strcmp(cmd, "limit"), is_top = !strcmp(cmd, "top");
    if (o.json && strcmp(cmd, "stats") && strcmp(cmd, "clients") && strcmp(cmd, "roots"))
        die(2, "--json is for stats, clients and roots, not %s", cmd);
    if ((o.set_hard || o.set_soft) && !is_limit)
        die(2, "--hard and --soft are for limit, not %s", cmd);
    if ((o.once || o.rounds_set || o.interval_set) && !is_top)
        die(2, "-n, --once and -d are for top, not %s", cmd);
    if (o.once && o.rounds_set)
        die(2, "top takes -n N or --once, not both");
    if (is_limit && nargs == 1) {
        if (o.set_soft)
            die(2, "limit takes the soft limit once (as SOFT or --soft)");
        size_opt("limit", args[0], &o.soft, &o.set_soft);
    } else if (nargs > 0) {
        die(2, "unexpected argument for %s: %s", cmd, args[is_limit ? 1 : 0]);
    }
    if (!ctl_path)
        ctl_path = default_path(defpath, sizeof(defpath));

    if (!strcmp(cmd, "stats"))
        return cmd_stats(o.json);
    if (!strcmp(cmd, "clients"))
        return cmd_clients(o.json);
    if (!strcmp(cmd, "metrics"))
        return cmd_metrics();
    if (is_limit)
        return cmd_limit(&o);
    if (!strcmp(cmd, "scavenge"))
        return cmd_scavenge();
    if (!strcmp(cmd, "flush"))
        return cmd_flush();
    if (!strcmp(cmd, "roots"))
        return cmd_roots(o.json);
    return cmd_top(&o);
}
