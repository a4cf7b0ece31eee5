/* Integration tests of issue 13 with a real daemon and real client
 * processes: the named roots API, heapd_stats, heapd_usable_size and
 * heapd_realloc on freed objects, and examples/bufpool (two unrelated
 * processes share one pool by name; kill -9 of a pinning process, the next
 * sweep releases its pins; lowering the soft limit shrinks the pool while
 * it serves). Each check in a child returns its own exit code, printed on
 * failure. */
#define _GNU_SOURCE
#include <CUnit/Basic.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bufpool.h"
#include "harness.h"
#include "heapd.h"
#include "unit.h"

#define MiB (1ull << 20)
#define CHECK(code, cond) do { if (!(cond)) { fprintf(stderr, "  child check %d failed: %s (errno %d)\n", (code), #cond, errno); return (code); } } while (0)

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Run heapctl --control SOCK.ctl ARG1 ARG2 [ARG3]; its stdout into out (if
 * given, NUL-terminated). Returns its exit code (wait_child's). */
static int heapctl(const char *sock, char *out, size_t outlen, const char *a1, const char *a2, const char *a3)
{
    char ctl[256];
    snprintf(ctl, sizeof ctl, "%s.ctl", sock);
    int pfd[2];
    if (pipe(pfd) != 0)
        return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pfd[1], 1);
        execl(HEAPCTL_BIN, "heapctl", "--control", ctl, a1, a2, a3, (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    size_t n = 0;
    char sink[512];
    for (ssize_t r; (r = read(pfd[0], out ? out + n : sink, out ? outlen - 1 - n : sizeof sink)) > 0;)
        if (out)
            n += (size_t)r;
    close(pfd[0]);
    if (out)
        out[n] = 0;
    return wait_child(pid, 30);
}
static int heapctl_limit(const char *sock, const char *size) { return heapctl(sock, NULL, 0, "limit", size, NULL); }

/* ---- named roots -------------------------------------------------------------------- */

static int roots_api_body(void *sock)
{
    char stack_obj[16];
    CHECK(1, heapd_root_get("x") == NULL && errno == ENOTCONN);
    CHECK(2, heapd_attach(sock) == 0);
    CHECK(3, heapd_root_get("x") == NULL && errno == ENOENT);
    char *p = heapd_malloc(100), *q = heapd_malloc(5000);
    CHECK(4, p && q);
    char n64[65];
    memset(n64, 'n', 64);
    n64[64] = 0;
    CHECK(5, heapd_root_set("", p) == -1 && errno == EINVAL);
    CHECK(6, heapd_root_set(n64, p) == -1 && errno == ENAMETOOLONG);
    CHECK(7, heapd_root_get(n64) == NULL && errno == ENAMETOOLONG);
    CHECK(8, heapd_root_set("x", stack_obj) == -1 && errno == EINVAL);
    CHECK(9, heapd_root_set("x", NULL) == -1 && errno == EINVAL);
    CHECK(10, heapd_root_set("x", p + 16) == -1 && errno == EINVAL);      /* not an object start */
    CHECK(11, heapd_root_set("x", p) == 0 && heapd_root_get("x") == p);
    CHECK(12, heapd_root_cas("x", NULL, q) == -1 && errno == EAGAIN);
    CHECK(13, heapd_root_cas("x", q, p) == -1 && errno == EAGAIN);
    CHECK(14, heapd_root_cas("x", stack_obj, q) == -1 && errno == EAGAIN);
    CHECK(15, heapd_root_cas("y", p, q) == -1 && errno == ENOENT);
    CHECK(16, heapd_root_cas("x", p, q) == 0 && heapd_root_get("x") == q);
    CHECK(17, heapd_root_cas("x", q, NULL) == 0 && heapd_root_get("x") == NULL && errno == ENOENT);
    CHECK(18, heapd_root_cas("x", NULL, p) == 0 && heapd_root_get("x") == p);
    CHECK(19, heapd_root_del("x") == 0 && heapd_root_del("x") == -1 && errno == ENOENT);
    /* 1024 names per heap */
    char name[32];
    for (int i = 0; i < 1024; i++) {
        snprintf(name, sizeof name, "r%d", i);
        CHECK(20, heapd_root_set(name, p) == 0);
    }
    CHECK(21, heapd_root_set("one too many", p) == -1 && errno == ENOSPC);
    for (int i = 0; i < 1024; i++) {
        snprintf(name, sizeof name, "r%d", i);
        CHECK(22, heapd_root_get(name) == p && heapd_root_del(name) == 0);
    }
    /* a freed object (not yet swept) cannot be named; its root dangles */
    CHECK(23, heapd_root_set("dangling", q) == 0);
    heapd_free(q);
    CHECK(24, heapd_root_set("dead", q) == -1 && errno == EINVAL);
    CHECK(25, heapd_root_get("dangling") == q);
    CHECK(26, heapd_root_del("dangling") == 0);
    heapd_free(p);
    CHECK(27, heapd_bad_frees() == 0);
    heapd_detach();
    CHECK(28, heapd_root_set("x", p) == -1 && errno == ENOTCONN);
    return 0;
}

/* Two unrelated processes: the first names an object and exits; the second
 * finds it by name, checks it, and frees it. */
static int roots_maker(void *sock)
{
    CHECK(1, heapd_attach(sock) == 0);
    char *s = heapd_malloc(64);
    CHECK(2, s != NULL);
    snprintf(s, 64, "made by %d", (int)getpid());
    CHECK(3, heapd_root_set("greeting", s) == 0);
    heapd_detach();
    return 0;
}

/* heapctl roots lists the name, the offset and the object's size. */
static int roots_listed(void *sock)
{
    CHECK(1, heapd_attach(sock) == 0);
    char *s = heapd_root_get("greeting");
    CHECK(2, s != NULL);
    char out[4096], want[128];
    CHECK(3, heapctl(sock, out, sizeof out, "roots", "--json", NULL) == 0);
    snprintf(want, sizeof want, "[{\"Name\":\"greeting\",\"Offset\":%llu,\"Size\":64}]",
             (unsigned long long)heapd_ptr_to_offset(s));
    if (strncmp(out, want, strlen(want)) != 0)
        fprintf(stderr, "  heapctl roots --json: %s", out);
    CHECK(4, strncmp(out, want, strlen(want)) == 0);
    CHECK(5, heapctl(sock, out, sizeof out, "roots", NULL, NULL) == 0);
    CHECK(6, strstr(out, "greeting") != NULL && strstr(out, "64 B") != NULL);
    heapd_detach();
    return 0;
}

static int roots_finder(void *sock)
{
    CHECK(1, heapd_attach(sock) == 0);
    char *s = heapd_root_get("greeting");
    CHECK(2, s != NULL && heapd_usable_size(s) >= 64);
    CHECK(3, strncmp(s, "made by ", 8) == 0 && atoi(s + 8) != getpid());
    CHECK(4, heapd_root_cas("greeting", s, NULL) == 0);
    heapd_free(s);
    CHECK(5, heapd_root_get("greeting") == NULL && heapd_bad_frees() == 0);
    heapd_detach();
    return 0;
}

/* find_or_construct: racing processes each try to create the same name;
 * exactly one wins, and every one ends up with the winner's object. The
 * racers start together (a pipe closed at once) and report what they got. */
typedef struct race_arg {
    const char *sock;
    int go[2], out[2];
} race_arg_t;

static int racer(race_arg_t *a)
{
    CHECK(1, heapd_attach(a->sock) == 0);
    uint64_t *mine = heapd_malloc(sizeof *mine);
    CHECK(2, mine != NULL);
    *mine = (uint64_t)getpid();
    char c;
    CHECK(3, read(a->go[0], &c, 1) == 0);           /* EOF: go */
    int won = heapd_root_cas("race", NULL, mine) == 0;
    CHECK(4, won || errno == EAGAIN);
    uint64_t *got = heapd_root_get("race");
    CHECK(5, got != NULL && (won ? got == mine : got != mine));
    uint64_t rec[2] = {(uint64_t)won, *got};
    CHECK(6, write(a->out[1], rec, sizeof rec) == sizeof rec);
    if (!won)
        heapd_free(mine);
    heapd_detach();
    return 0;
}

static void test_roots_race(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    race_arg_t a = {.sock = d.sock};
    CU_ASSERT_FATAL(pipe(a.go) == 0 && pipe(a.out) == 0);
    enum { N = 6 };
    pid_t kids[N];
    fflush(NULL);
    for (int i = 0; i < N; i++) {
        kids[i] = fork();
        if (kids[i] == 0) {
            close(a.go[1]);
            _exit(racer(&a));
        }
    }
    close(a.go[0]);
    close(a.out[1]);
    close(a.go[1]);                                 /* all at once */
    unsigned winners = 0;
    uint64_t first = 0;
    for (int i = 0; i < N; i++) {
        uint64_t rec[2];
        CU_ASSERT_FATAL(read(a.out[0], rec, sizeof rec) == sizeof rec);
        winners += (unsigned)rec[0];
        if (i == 0)
            first = rec[1];
        CU_ASSERT_EQUAL(rec[1], first);             /* everyone sees the same object */
    }
    for (int i = 0; i < N; i++)
        CU_ASSERT_EQUAL(wait_child(kids[i], 30), 0);
    CU_ASSERT_EQUAL(winners, 1);
    close(a.out[0]);
    CU_ASSERT_EQUAL(daemon_stop(&d), 0);
}

static void test_roots(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    CU_ASSERT_EQUAL(run_child(roots_api_body, d.sock, 30), 0);
    CU_ASSERT_EQUAL(run_child(roots_maker, d.sock, 30), 0);
    CU_ASSERT_EQUAL(run_child(roots_listed, d.sock, 30), 0);
    CU_ASSERT_EQUAL(run_child(roots_finder, d.sock, 30), 0);
    CU_ASSERT_EQUAL(daemon_stop(&d), 0);
}

/* ---- freed objects: usable size 0, realloc EINVAL ------------------------------------ */

static int freed_body(void *sock)
{
    CHECK(1, heapd_attach(sock) == 0);
    size_t sizes[] = {5, 16, 100, 4000, 32768, 100000};
    for (unsigned k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        char *p = heapd_malloc(sizes[k]);
        CHECK(2, p && heapd_usable_size(p) >= sizes[k]);
        heapd_free(p);
        CHECK(3, heapd_usable_size(p) == 0);                  /* freed, not swept */
        uint64_t bad = heapd_bad_frees();
        errno = 0;
        CHECK(4, heapd_realloc(p, sizes[k] * 2) == NULL && errno == EINVAL);
        CHECK(5, heapd_bad_frees() == bad + 1);
    }
    CHECK(6, heapd_ptr_to_offset(NULL) == HEAPD_NULL_OFFSET && heapd_offset_to_ptr(HEAPD_NULL_OFFSET) == NULL);
    heapd_detach();
    return 0;
}

/* Freed in another process: the owner sees it dead at once. */
static int freed_cross_body(void *sock)
{
    CHECK(1, heapd_attach(sock) == 0);
    char *p = heapd_malloc(200);
    CHECK(2, p != NULL);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        heapd_free(p);                  /* the fork child becomes a client of its own */
        _exit(heapd_bad_frees() ? 1 : 0);
    }
    CHECK(3, wait_child(pid, 30) == 0);
    CHECK(4, heapd_usable_size(p) == 0);
    heapd_detach();
    return 0;
}

static void test_freed_objects(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    CU_ASSERT_EQUAL(run_child(freed_body, d.sock, 30), 0);
    CU_ASSERT_EQUAL(run_child(freed_cross_body, d.sock, 30), 0);
    CU_ASSERT_EQUAL(daemon_stop(&d), 0);
}

/* ---- heapd_stats ------------------------------------------------------------------------ */

static void *objs[1000];

static int stats_alloc_body(void *sock)
{
    struct heapd_stats st;
    CHECK(1, heapd_stats(&st, sizeof st) == -1 && errno == ENOTCONN);
    CHECK(2, heapd_attach(sock) == 0);
    CHECK(3, heapd_stats(&st, HEAPD_STATS_SIZE_V1 - 8) == -1 && errno == EINVAL);
    CHECK(4, heapd_stats(NULL, sizeof st) == -1 && errno == EINVAL);
    CHECK(5, heapd_stats(&st, sizeof st) == 0);
    CHECK(6, st.soft_limit == 128 * MiB && st.hard_limit == 192 * MiB && st.heap_bytes == 256 * MiB);
    CHECK(7, st.allocated_bytes == 0 && st.freed_bytes == 0 && st.quota == 0 && st.pressure_level == 0);
    CHECK(8, st.committed_bytes > 0 && st.committed_bytes < 128 * MiB);
    for (int i = 0; i < 1000; i++)
        CHECK(9, (objs[i] = heapd_malloc(1024)) != NULL);
    void *big = heapd_malloc(1 * MiB);
    CHECK(10, big != NULL);
    CHECK(11, heapd_stats(&st, sizeof st) == 0);
    CHECK(12, st.allocated_bytes >= 1000 * 1024 + MiB && st.allocated_bytes < 1000 * 1024 + MiB + 64 * 1024);
    CHECK(13, st.freed_bytes == 0);
    CHECK(14, st.committed_bytes >= MiB + 1000 * 1024 && st.in_use_bytes >= MiB + 1000 * 1024);
    CHECK(15, heapd_set_quota(64 * MiB) == 0 && heapd_stats(&st, sizeof st) == 0 && st.quota == 64 * MiB);
    /* a bigger struct than ours (a newer header): only what we know is written */
    unsigned char buf[sizeof st + 16];
    memset(buf, 0xab, sizeof buf);
    CHECK(16, heapd_stats((struct heapd_stats *)buf, sizeof buf) == 0);
    CHECK(17, buf[sizeof st] == 0xab && buf[sizeof buf - 1] == 0xab);
    /* publish the objects: a second process frees them */
    CHECK(18, heapd_root_set("objs", big) == 0);
    memcpy(big, objs, sizeof objs);
    heapd_detach();
    return 0;
}

static int stats_free_body(void *sock)
{
    CHECK(1, heapd_attach(sock) == 0);
    void **list = heapd_root_get("objs");
    CHECK(2, list != NULL);
    for (int i = 0; i < 1000; i++)
        heapd_free(list[i]);
    struct heapd_stats st;
    CHECK(3, heapd_stats(&st, sizeof st) == 0);
    CHECK(4, st.allocated_bytes == 0 && st.freed_bytes == 1000 * 1024);   /* frees count where they happen */
    CHECK(5, heapd_root_del("objs") == 0);
    heapd_free(list);
    heapd_detach();
    return 0;
}

static void test_stats(void)
{
    daemon_proc_t d;
    const char *extra[] = {"--memory-limit", "128MiB", "--hard-limit", "192MiB", NULL};
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", extra) == 0);
    CU_ASSERT_EQUAL(run_child(stats_alloc_body, d.sock, 30), 0);
    CU_ASSERT_EQUAL(run_child(stats_free_body, d.sock, 30), 0);
    CU_ASSERT_EQUAL(daemon_stop(&d), 0);
}

/* ---- examples/bufpool ---------------------------------------------------------------------- */

/* The synthetic source: every byte of page id is a function of id. */
static int synth_read(uint64_t id, void *buf, void *arg)
{
    (void)arg;
    uint64_t *w = buf;
    for (unsigned i = 0; i < BP_PAGE_SIZE / 8; i++)
        w[i] = id * 0x9e3779b97f4a7c15ull + i;
    return 0;
}
static bool synth_ok(uint64_t id, const void *buf)
{
    const uint64_t *w = buf;
    return w[0] == id * 0x9e3779b97f4a7c15ull && w[BP_PAGE_SIZE / 8 - 1] == id * 0x9e3779b97f4a7c15ull + BP_PAGE_SIZE / 8 - 1;
}

typedef struct pool_arg {
    const char *sock;
    int ready[2], go[2];        /* child -> parent, parent -> child */
} pool_arg_t;

/* Pins page 7, writes into it, says so, and keeps the pin until told. */
static int pool_writer(void *arg)
{
    pool_arg_t *a = arg;
    CHECK(1, heapd_attach(a->sock) == 0);
    bp_t *bp = bp_open("itest-pool", 4 * MiB, synth_read, NULL, NULL);
    CHECK(2, bp != NULL);
    char *p = bp_pin(bp, 7);
    CHECK(3, p != NULL && synth_ok(7, p));
    snprintf(p, 64, "written by %d", (int)getpid());
    bp_dirty(bp, 7);
    char c = 'r';
    CHECK(4, write(a->ready[1], &c, 1) == 1);
    CHECK(5, read(a->go[0], &c, 1) == 1);
    bp_unpin(bp, 7);
    bp_close(bp);
    heapd_detach();
    return 0;
}

/* Another process opens the pool by name and reads the pinned page. */
static int pool_reader(void *arg)
{
    pool_arg_t *a = arg;
    CHECK(1, heapd_attach(a->sock) == 0);
    bp_t *bp = bp_open("itest-pool", 4 * MiB, synth_read, NULL, NULL);
    CHECK(2, bp != NULL);
    bp_stats_t before, after;
    bp_get_stats(bp, &before);
    char *p = bp_pin(bp, 7);
    CHECK(3, p != NULL && strncmp(p, "written by ", 11) == 0 && atoi(p + 11) != getpid());
    CHECK(4, bp_pins(bp, 7) == 2);                  /* the writer's pin and ours */
    bp_get_stats(bp, &after);
    CHECK(5, after.hits == before.hits + 1 && after.misses == before.misses);
    bp_unpin(bp, 7);
    CHECK(6, bp_pins(bp, 7) == 1);
    bp_close(bp);
    heapd_detach();
    return 0;
}

/* Pins pages 100..109 and never unpins: killed with SIGKILL. */
static int pool_pinner(void *arg)
{
    pool_arg_t *a = arg;
    if (heapd_attach(a->sock) != 0)
        return 1;
    bp_t *bp = bp_open("itest-pool", 4 * MiB, synth_read, NULL, NULL);
    if (!bp)
        return 2;
    for (uint64_t id = 100; id < 110; id++)
        if (!bp_pin(bp, id))
            return 3;
    char c = 'r';
    if (write(a->ready[1], &c, 1) != 1)
        return 4;
    for (;;)
        pause();
}

/* After the pinner died: its pins hold until a sweep passes them; pinning
 * more pages than the pool holds makes the hand go round. */
static int pool_sweeper(void *arg)
{
    pool_arg_t *a = arg;
    CHECK(1, heapd_attach(a->sock) == 0);
    bp_t *bp = bp_open("itest-pool", 4 * MiB, synth_read, NULL, NULL);
    CHECK(2, bp != NULL);
    for (uint64_t id = 100; id < 110; id++)
        CHECK(3, bp_pins(bp, id) == 1);
    bp_stats_t st;
    bp_get_stats(bp, &st);
    uint64_t reaped0 = st.pins_reaped;
    for (uint64_t id = 1000; id < 1000 + 4 * st.max_bufs; id++) {
        char *p = bp_pin(bp, id);
        CHECK(4, p != NULL && synth_ok(id, p));
        bp_unpin(bp, id);
    }
    for (uint64_t id = 100; id < 110; id++)
        CHECK(5, bp_pins(bp, id) == 0);
    bp_get_stats(bp, &st);
    CHECK(6, st.pins_reaped == reaped0 + 10);
    bp_destroy(bp);
    CHECK(7, heapd_root_get("itest-pool") == NULL);
    heapd_detach();
    return 0;
}

static void test_bufpool_shared(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    pool_arg_t a = {.sock = d.sock};
    CU_ASSERT_FATAL(pipe(a.ready) == 0 && pipe(a.go) == 0);
    fflush(NULL);
    pid_t w = fork();
    if (w == 0)
        _exit(pool_writer(&a));
    char c;
    CU_ASSERT_FATAL(read(a.ready[0], &c, 1) == 1);
    CU_ASSERT_EQUAL(run_child(pool_reader, &a, 30), 0);
    CU_ASSERT(write(a.go[1], &c, 1) == 1);
    CU_ASSERT_EQUAL(wait_child(w, 30), 0);

    /* kill -9 of a pinning process */
    fflush(NULL);
    pid_t k = fork();
    if (k == 0)
        _exit(pool_pinner(&a));
    CU_ASSERT_FATAL(read(a.ready[0], &c, 1) == 1);
    kill(k, SIGKILL);
    CU_ASSERT_EQUAL(wait_child(k, 30), 128 + SIGKILL);
    CU_ASSERT_EQUAL(run_child(pool_sweeper, &a, 60), 0);
    for (int i = 0; i < 2; i++) {
        close(a.ready[i]);
        close(a.go[i]);
    }
    CU_ASSERT_EQUAL(daemon_stop(&d), 0);
}

/* Lowering the soft limit under load: the pool fills memory, the limit
 * goes down to 16 MiB (heapctl limit), and the pool gives buffers back in
 * its pressure callback while every pin still succeeds, until the heap is
 * under the limit. */
static int pool_limit_body(void *sock)
{
    CHECK(1, heapd_attach(sock) == 0);
    bp_t *bp = bp_open("limit-pool", 48 * MiB, synth_read, NULL, NULL);
    CHECK(2, bp != NULL);
    uint64_t id = 0, n = 5000;                      /* 39 MiB of distinct pages */
    for (; id < n; id++) {
        char *p = bp_pin(bp, id);
        CHECK(3, p != NULL && synth_ok(id, p));
        bp_unpin(bp, id);
    }
    bp_stats_t st;
    bp_get_stats(bp, &st);
    CHECK(4, st.bufs >= 3000);                      /* it grew: memory was free */
    uint64_t full = st.bufs;
    CHECK(5, heapctl_limit(sock, "16MiB") == 0);
    struct heapd_stats hs;
    uint64_t t0 = now_ms(), pins = 0;
    do {                                            /* keep serving while it shrinks */
        uint64_t pid = id++ % (2 * n);
        char *p = bp_pin(bp, pid);
        CHECK(6, p != NULL && synth_ok(pid, p));
        bp_unpin(bp, pid);
        pins++;
        CHECK(7, heapd_stats(&hs, sizeof hs) == 0);
    } while (hs.committed_bytes > 16 * MiB && now_ms() - t0 < 20000);
    bp_get_stats(bp, &st);
    if (hs.committed_bytes > 16 * MiB)
        fprintf(stderr, "  committed %llu after 20 s, pool %llu buffers (was %llu), %llu pins\n",
                (unsigned long long)hs.committed_bytes, (unsigned long long)st.bufs, (unsigned long long)full,
                (unsigned long long)pins);
    CHECK(8, hs.committed_bytes <= 16 * MiB);
    CHECK(9, st.bufs < full / 2 && st.shrunk > 0);
    CHECK(10, hs.soft_limit == 16 * MiB);
    bp_destroy(bp);
    heapd_detach();
    return 0;
}

static void test_bufpool_limit(void)
{
    daemon_proc_t d;
    const char *extra[] = {"--memory-limit", "64MiB", NULL};
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", extra) == 0);
    CU_ASSERT_EQUAL(run_child(pool_limit_body, d.sock, 60), 0);
    CU_ASSERT_EQUAL(daemon_stop(&d), 0);
}

/* A quota caps the pool: it stops growing before the quota and evicts
 * instead, every pin served. */
static int pool_quota_body(void *sock)
{
    CHECK(1, heapd_attach(sock) == 0);
    CHECK(2, heapd_set_quota(4 * MiB) == 0);
    bp_t *bp = bp_open("quota-pool", 32 * MiB, synth_read, NULL, NULL);
    CHECK(3, bp != NULL);
    for (uint64_t id = 0; id < 3000; id++) {
        char *p = bp_pin(bp, id);
        CHECK(4, p != NULL && synth_ok(id, p));
        bp_unpin(bp, id);
    }
    bp_stats_t st;
    bp_get_stats(bp, &st);
    struct heapd_stats hs;
    CHECK(5, heapd_stats(&hs, sizeof hs) == 0 && hs.quota == 4 * MiB);
    if (st.bufs * BP_PAGE_SIZE > 4 * MiB || st.bufs < 200)
        fprintf(stderr, "  pool of %llu buffers under a 4 MiB quota\n", (unsigned long long)st.bufs);
    CHECK(6, st.bufs * BP_PAGE_SIZE <= 4 * MiB && st.bufs >= 200);   /* grew, but not past the quota */
    CHECK(7, st.evictions >= 3000 - st.bufs);
    bp_destroy(bp);
    heapd_detach();
    return 0;
}

static void test_bufpool_quota(void)
{
    daemon_proc_t d;
    CU_ASSERT_FATAL(daemon_start(&d, "256MiB", NULL) == 0);
    CU_ASSERT_EQUAL(run_child(pool_quota_body, d.sock, 60), 0);
    CU_ASSERT_EQUAL(daemon_stop(&d), 0);
}

static void register_roots_itest(void)
{
    CU_pSuite s = CU_add_suite("roots and bufpool", NULL, NULL);
    CU_add_test(s, "named roots: API, errors, two processes", test_roots);
    CU_add_test(s, "named roots: racing creators, one winner", test_roots_race);
    CU_add_test(s, "freed objects: usable size 0, realloc EINVAL", test_freed_objects);
    CU_add_test(s, "heapd_stats", test_stats);
    CU_add_test(s, "bufpool: shared by name, kill -9 of a pinner", test_bufpool_shared);
    CU_add_test(s, "bufpool: the soft limit lowered under load", test_bufpool_limit);
    CU_add_test(s, "bufpool: honours its quota", test_bufpool_quota);
}
UNIT_SUITE(register_roots_itest)
