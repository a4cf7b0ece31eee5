/* bench/limit: the soft memory limit and the scavenger, seen from outside.
 *
 * Starts its own heapd with --memory-limit LIMIT, runs a workload in a child
 * process, and samples every 5 ms, from this process:
 *   - resident: st_blocks of the segment's two memfds (what the kernel holds
 *     for the heap: the truth, whatever the daemon's books say);
 *   - committed: the daemon's counted bytes (books in the segment header);
 *   - live: the bytes the workload holds (it publishes them in shared memory).
 * The workload, on a 1 MiB unit (one large object of 256 KiB..1 MiB, or
 * small objects of random classes adding up to 1 MiB):
 *   grow to 1.5 x LIMIT over 2 s, hold 1 s, shrink to LIMIT / 4 over 2 s by
 *   freeing random units, hold 2 s, free everything, then stay attached and
 *   idle until resident has not moved for 1 s (at most 20 s).
 * Reported: peak resident and overshoot; after the shrink, the time until
 * resident falls under the limit; after the final free, the time until the
 * freed memory is returned to the OS (resident back to the metadata, with
 * the background scavenger at its default 1% CPU). With --plot FILE it
 * draws the samples with gnuplot into FILE (PNG), the limit as a line;
 * --samples FILE keeps them (tab-separated, one line per sample).
 *
 * Usage: bench-limit [--limit SIZE] [--scavenge-cpu PCT] [--plot FILE.png] [--samples FILE.tsv]
 *                    [--heapd PATH]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "heapd.h"
#include "heapd.pb-c.h"
#include "segment.h"
#include "size.h"
#include "sizeclasses.h"

#define MiB (1ull << 20)
#define UNIT MiB
#define SAMPLE_MS 5
#define MAX_SAMPLES 8192

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static uint64_t rnd(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ---- shared with the workload child ------------------------------------------------ */

enum phase { PH_START, PH_GROW, PH_HOLD, PH_SHRINK, PH_LOW, PH_FREED, PH_DONE };
static const char *const phase_names[] = {"start", "grow", "hold", "shrink", "low", "freed", "done"};

typedef struct shared {
    _Atomic uint64_t live;          /* bytes the workload holds */
    _Atomic int phase;
    _Atomic uint64_t phase_us[PH_DONE + 1];
    _Atomic int stop;               /* set by the sampler once resident is stable after the free */
} shared_t;

static shared_t *sh;

/* ---- the workload ------------------------------------------------------------------- */

typedef struct unit {
    void **objs;
    unsigned n;
} unit_t;

static void unit_fill(unit_t *u, uint64_t *st)
{
    if (rnd(st) % 3 == 0) {                    /* a third of the units: one large object */
        size_t size = (256u << 10) + rnd(st) % (768u << 10);
        u->objs = heapd_malloc(sizeof(void *));
        u->objs[0] = heapd_malloc(size);
        memset(u->objs[0], 1, size);
        u->n = 1;
        atomic_fetch_add(&sh->live, size);
        return;
    }
    unsigned cls = 5 + (unsigned)(rnd(st) % 50);   /* 64 B .. 10 KiB classes */
    size_t size = hd_class_to_size[cls];
    unsigned n = (unsigned)(UNIT / size);
    u->objs = heapd_malloc(n * sizeof(void *));
    for (unsigned i = 0; i < n; i++) {
        u->objs[i] = heapd_malloc(size);
        memset(u->objs[i], 1, size);
    }
    u->n = n;
    atomic_fetch_add(&sh->live, (uint64_t)n * size);
}

static void unit_free(unit_t *u)
{
    for (unsigned i = 0; i < u->n; i++)
        heapd_free(u->objs[i]);
    heapd_free(u->objs);
    u->objs = NULL;
    u->n = 0;
}

static void set_phase(int p)
{
    atomic_store(&sh->phase_us[p], now_us());
    atomic_store(&sh->phase, p);
}

static int workload(const char *sock, uint64_t limit)
{
    if (heapd_attach(sock) != 0) {
        perror("bench-limit: heapd_attach");
        return 1;
    }
    unsigned peak = (unsigned)(limit * 3 / 2 / UNIT), low = (unsigned)(limit / 4 / UNIT);
    unit_t *units = calloc(peak, sizeof(*units));
    uint64_t *sizes = calloc(peak, sizeof(*sizes));
    uint64_t st = 0x11317;
    unsigned n = 0;
    set_phase(PH_GROW);
    uint64_t t0 = now_us();
    while (n < peak) {                          /* grow over 2 s */
        uint64_t before = atomic_load(&sh->live);
        unit_fill(&units[n], &st);
        sizes[n] = atomic_load(&sh->live) - before;
        n++;
        uint64_t due = t0 + (uint64_t)n * 2000000 / peak;
        while (now_us() < due)
            usleep(500);
    }
    set_phase(PH_HOLD);
    usleep(1000000);
    set_phase(PH_SHRINK);
    t0 = now_us();
    unsigned left = n, k = 0;
    while (left > low) {                        /* free random units over 2 s */
        unsigned i = (unsigned)(rnd(&st) % n);
        while (!units[i].objs)
            i = (i + 1) % n;
        unit_free(&units[i]);
        atomic_fetch_sub(&sh->live, sizes[i]);
        left--;
        k++;
        uint64_t due = t0 + (uint64_t)k * 2000000 / (n - low);
        while (now_us() < due)
            usleep(500);
    }
    heapd_flush();
    set_phase(PH_LOW);
    usleep(2000000);
    set_phase(PH_FREED);                        /* the clock for "returned to the OS" starts here */
    for (unsigned i = 0; i < n; i++)
        if (units[i].objs) {
            unit_free(&units[i]);
            atomic_fetch_sub(&sh->live, sizes[i]);
        }
    heapd_flush();
    while (!atomic_load(&sh->stop))
        usleep(10000);
    set_phase(PH_DONE);
    heapd_detach();
    return 0;
}

/* ---- the daemon and the view from outside --------------------------------------------- */

static pid_t daemon_pid;
static char tmpdir[64], sock_path[96], tmp_tsv[96];

static void cleanup(void)
{
    if (daemon_pid > 0) {
        kill(daemon_pid, SIGTERM);
        waitpid(daemon_pid, NULL, 0);
        daemon_pid = 0;
    }
    if (sock_path[0])
        unlink(sock_path);
    if (tmp_tsv[0])
        unlink(tmp_tsv);
    if (tmpdir[0])
        rmdir(tmpdir);
}

static void on_signal(int sig)
{
    cleanup();
    signal(sig, SIG_DFL);
    raise(sig);
}

static int raw_connect(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
        return fd;
    if (fd >= 0)
        close(fd);
    return -1;
}

static const char *scav_cpu = "1";

static int start_daemon(const char *heapd, uint64_t limit)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/heapd-bench-limit-XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(sock_path, sizeof(sock_path), "%s/heapd.sock", tmpdir);
    char lim[32];
    snprintf(lim, sizeof(lim), "%llu", (unsigned long long)limit);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execl(heapd, heapd, "--socket", sock_path, "--size", "4GiB", "--memory-limit", lim, "--scavenge-cpu",
              scav_cpu, "--foreground", "--quiet", (char *)NULL);
        _exit(127);
    }
    daemon_pid = pid;
    for (int i = 0; i < 1000; i++) {
        int fd = raw_connect(sock_path);
        if (fd >= 0) {
            close(fd);
            return 0;
        }
        usleep(10000);
    }
    return -1;
}

/* Hello on a raw connection: the segment's fds, and its header mapped. */
static int open_segment(int fds[2], const hd_header_t **hdr)
{
    int fd = raw_connect(sock_path);
    if (fd < 0)
        return -1;
    Heapd__Hello hello = HEAPD__HELLO__INIT;
    hello.version = HD_PROTO_VERSION;
    hello.pid = getpid();
    hello.name = "bench-limit";
    Heapd__ClientMsg m = HEAPD__CLIENT_MSG__INIT;
    m.seq = 1;
    m.body_case = HEAPD__CLIENT_MSG__BODY_HELLO;
    m.hello = &hello;
    uint8_t buf[4096];
    size_t n = heapd__client_msg__pack(&m, buf);
    char cbuf[CMSG_SPACE(3 * sizeof(int))];    /* meta, heap, our stats slot (closed) */
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof(buf)};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
    fds[0] = fds[1] = -1;
    if (send(fd, buf, n, MSG_NOSIGNAL) == (ssize_t)n && recvmsg(fd, &mh, MSG_CMSG_CLOEXEC) > 0)
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
                c->cmsg_len >= CMSG_LEN(2 * sizeof(int))) {
                memcpy(fds, CMSG_DATA(c), 2 * sizeof(int));
                if (c->cmsg_len >= CMSG_LEN(3 * sizeof(int))) {
                    int slot;
                    memcpy(&slot, CMSG_DATA(c) + 2 * sizeof(int), sizeof(int));
                    close(slot);
                }
            }
    close(fd);
    if (fds[0] < 0)
        return -1;
    void *h = mmap(NULL, HD_HEADER_BYTES, PROT_READ, MAP_SHARED, fds[0], 0);
    if (h == MAP_FAILED)
        return -1;
    *hdr = h;
    return 0;
}

static uint64_t fd_bytes(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 ? (uint64_t)st.st_blocks * 512 : 0;
}

typedef struct sample {
    double t;                   /* seconds since the workload started */
    uint64_t resident, committed, live;
    uint64_t inuse, cached, central;    /* pages in spans; spans cached by clients; spans in central */
    int phase;
} sample_t;

static sample_t samples[MAX_SAMPLES];

static void usage(void)
{
    fprintf(stderr, "usage: bench-limit [--limit SIZE] [--scavenge-cpu PCT] [--plot FILE.png] [--samples FILE.tsv]\n"
                    "                   [--heapd PATH]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    uint64_t limit = 256 * MiB;
    const char *plot = NULL, *heapd = NULL, *tsv = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--limit") && i + 1 < argc) {
            if (hd_parse_size(argv[++i], &limit) < 0 || limit < 16 * MiB)
                usage();
        } else if (!strcmp(argv[i], "--plot") && i + 1 < argc) {
            plot = argv[++i];
        } else if (!strcmp(argv[i], "--scavenge-cpu") && i + 1 < argc) {
            scav_cpu = argv[++i];
        } else if (!strcmp(argv[i], "--samples") && i + 1 < argc) {
            tsv = argv[++i];
        } else if (!strcmp(argv[i], "--heapd") && i + 1 < argc) {
            heapd = argv[++i];
        } else {
            usage();
        }
    }
    char self[4096], bin[4200];
    if (!heapd) {
#ifdef HEAPD_BIN
        heapd = HEAPD_BIN;
#else
        ssize_t k = readlink("/proc/self/exe", self, sizeof(self) - 1);
        self[k > 0 ? k : 0] = 0;
        char *slash = strrchr(self, '/');
        snprintf(bin, sizeof(bin), "%.*s/heapd", slash ? (int)(slash - self) : 1, slash ? self : ".");
        heapd = bin;
#endif
    }
    (void)self;
    (void)bin;
    atexit(cleanup);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    if (start_daemon(heapd, limit) < 0) {
        fprintf(stderr, "bench-limit: cannot start %s\n", heapd);
        return 1;
    }
    int fds[2];
    const hd_header_t *hdr;
    if (open_segment(fds, &hdr) < 0) {
        fprintf(stderr, "bench-limit: cannot open the segment\n");
        return 1;
    }
    sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        return 1;
    uint64_t t0 = now_us();
    fflush(NULL);
    pid_t child = fork();
    if (child == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        _exit(workload(sock_path, limit));
    }

    unsigned ns = 0;
    uint64_t stable_val = 0;
    double stable_since = 0;
    while (ns < MAX_SAMPLES) {
        sample_t *s = &samples[ns++];
        s->t = (double)(now_us() - t0) / 1e6;
        s->resident = fd_bytes(fds[0]) + fd_bytes(fds[1]);
        hd_header_t bk;                  /* the books of one instant (a batch never half seen) */
        hd_books_snapshot(hdr, &bk, 64);
        s->committed = hd_book(&bk.committed_bytes);
        s->live = atomic_load(&sh->live);
        s->inuse = hd_book(&bk.pages_inuse) * HD_PAGE_SIZE;
        s->cached = hd_book(&bk.spans_cached);
        s->central = hd_book(&bk.spans_central);
        s->phase = atomic_load(&sh->phase);
        if (s->phase == PH_DONE)
            break;
        /* after the final free: stop once resident has not moved for 1 s (or after 20 s) */
        if (s->phase == PH_FREED && !atomic_load(&sh->stop)) {
            if (s->resident != stable_val) {
                stable_val = s->resident;
                stable_since = s->t;
            }
            double since_free = s->t - (double)(sh->phase_us[PH_FREED] - t0) / 1e6;
            if ((s->t - stable_since >= 1.0 && since_free >= 1.0) || since_free >= 20.0)
                atomic_store(&sh->stop, 1);
        }
        usleep(SAMPLE_MS * 1000);
    }
    int st;
    waitpid(child, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "bench-limit: the workload failed\n");
        return 1;
    }

    /* ---- numbers ---- */
    uint64_t meta_floor, peak = 0, peak_live = 0;
    for (unsigned i = 0; i < ns; i++) {
        if (samples[i].resident > peak)
            peak = samples[i].resident;
        if (samples[i].live > peak_live)
            peak_live = samples[i].live;
    }
    /* the metadata floor: resident at the end (everything freed and released) */
    meta_floor = samples[ns - 1].resident;
    double t_low = (double)(sh->phase_us[PH_LOW] - t0) / 1e6, t_freed = (double)(sh->phase_us[PH_FREED] - t0) / 1e6;
    double t_shrink = (double)(sh->phase_us[PH_SHRINK] - t0) / 1e6;
    double under = -1, returned = -1;
    const sample_t *lowend = &samples[0];
    for (unsigned i = 0; i < ns; i++) {
        if (samples[i].t < t_freed)
            lowend = &samples[i];
        if (under < 0 && samples[i].t >= t_shrink && samples[i].resident <= limit)
            under = samples[i].t - t_shrink;
        if (returned < 0 && samples[i].t >= t_freed && samples[i].resident <= meta_floor + MiB / 4)
            returned = samples[i].t - t_freed;
    }
    printf("bench-limit: soft limit %llu MiB, scavenger %s%% CPU, %u samples every %d ms over %.1f s\n",
           (unsigned long long)(limit / MiB), scav_cpu, ns, SAMPLE_MS, samples[ns - 1].t);
    printf("  peak live %.1f MiB; peak resident %.1f MiB (%.1f MiB over the limit; daemon's overshoot_max %.1f MiB)\n",
           (double)peak_live / MiB, (double)peak / MiB, peak > limit ? (double)(peak - limit) / MiB : 0.0,
           (double)atomic_load(&hdr->overshoot_max) / MiB);
    printf("  shrink started at %.2f s; resident under the limit %.2f s later\n", t_shrink, under);
    printf("  low phase (from %.2f s): live %.1f MiB, resident %.1f MiB at its end\n", t_low,
           (double)lowend->live / MiB, (double)lowend->resident / MiB);
    printf("  everything freed from %.2f s: returned to the OS (resident within 0.25 MiB of the "
           "%.2f MiB of metadata) %.0f ms later\n", t_freed, (double)meta_floor / MiB, returned * 1000);
    printf("  scavenged %.1f MiB in total; %llu Pressure and %llu Flush messages sent\n",
           (double)atomic_load(&hdr->scavenged_total) / MiB, (unsigned long long)atomic_load(&hdr->pressure_sent),
           (unsigned long long)atomic_load(&hdr->flush_sent));

    if (plot && !tsv) {
        snprintf(tmp_tsv, sizeof(tmp_tsv), "%s/samples.tsv", tmpdir);
        tsv = tmp_tsv;
    }
    if (tsv) {
        FILE *f = fopen(tsv, "w");
        if (!f) {
            perror(tsv);
            return 1;
        }
        fprintf(f, "# t_s\tresident_MiB\tcommitted_MiB\tlive_MiB\tin_spans_MiB\tspans_cached\tspans_central\tphase\n");
        for (unsigned i = 0; i < ns; i++)
            fprintf(f, "%.3f\t%.2f\t%.2f\t%.2f\t%.2f\t%llu\t%llu\t%s\n", samples[i].t,
                    (double)samples[i].resident / MiB, (double)samples[i].committed / MiB,
                    (double)samples[i].live / MiB, (double)samples[i].inuse / MiB,
                    (unsigned long long)samples[i].cached, (unsigned long long)samples[i].central,
                    phase_names[samples[i].phase]);
        fclose(f);
        if (tsv != tmp_tsv)
            printf("  samples: %s\n", tsv);
    }
    if (plot) {
        char cmd[12000];
        snprintf(cmd, sizeof(cmd),
                 "gnuplot -e \"set terminal pngcairo size 960,480 font ',10' noenhanced; set output '%s'; "
                 "set title 'heapd: a workload grows past a %llu MiB soft limit, shrinks, frees everything'; "
                 "set xlabel 'seconds'; set ylabel 'MiB'; set key top right; set grid; "
                 "set arrow from %.2f, graph 0 to %.2f, graph 1 nohead dt 3 lc 'gray'; "
                 "set arrow from %.2f, graph 0 to %.2f, graph 1 nohead dt 3 lc 'gray'; "
                 "set label 'shrink' at %.2f, graph 0.95; set label 'free all' at %.2f, graph 0.95; "
                 "plot '%s' using 1:2 with lines lw 2 title 'resident (st_blocks of the memfds)', "
                 "'' using 1:3 with lines dt 2 title 'committed (daemon books)', "
                 "'' using 1:4 with lines title 'live (workload)', "
                 "%llu with lines lc 'red' lw 1 title 'soft limit'\"",
                 plot, (unsigned long long)(limit / MiB), t_shrink, t_shrink, t_freed, t_freed, t_shrink + 0.05,
                 t_freed + 0.05, tsv, (unsigned long long)(limit / MiB));
        if (system(cmd) != 0)
            fprintf(stderr, "bench-limit: gnuplot failed (apt-get install gnuplot-nox); samples in %s\n", tsv);
        else
            printf("  plot: %s\n", plot);
    }
    return 0;
}
