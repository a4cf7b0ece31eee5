/* bench/common.c: see common.h. */
#define _GNU_SOURCE
#include "common.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "heapd.h"

extern char **environ;

const allocator_t allocators[A_COUNT] = {
    [A_HEAPD]    = { "heapd",    NULL, NULL },
    [A_GLIBC]    = { "glibc",    NULL, NULL },
    [A_JEMALLOC] = { "jemalloc", LIBDIR "libjemalloc.so.2", "mallocx" },
    [A_TCMALLOC] = { "tcmalloc", LIBDIR "libtcmalloc.so.4", "tc_malloc" },
    [A_MIMALLOC] = { "mimalloc", LIBDIR "libmimalloc.so.2", "mi_malloc" },
};

const char *bench_name = "bench";

/* ---- small helpers ------------------------------------------------------------ */

double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median of the n values that are > 0; negative if there are none. */
double median(const double *v, unsigned n)
{
    double t[BENCH_MAX_ROUNDS];
    unsigned k = 0;
    for (unsigned i = 0; i < n && k < BENCH_MAX_ROUNDS; i++)
        if (v[i] > 0)
            t[k++] = v[i];
    if (k == 0)
        return -1;
    qsort(t, k, sizeof(t[0]), cmp_double);
    return k % 2 ? t[k / 2] : (t[k / 2 - 1] + t[k / 2]) / 2;
}

bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || v == 0 || s[0] == '-')
        return false;
    *out = v;
    return true;
}

/* ---- the daemon and the workers ---------------------------------------------------- */

char self_exe[PATH_MAX];
static char tmpdir[64];
char sock_path[80];
static char log_path[80];
static volatile pid_t daemon_pid;
static volatile pid_t worker_pid;

void stop_daemon(void)
{
    pid_t pid = daemon_pid;
    if (pid > 0) {
        kill(pid, SIGTERM);
        for (int i = 0; i < 500; i++) {             /* 5 s, then SIGKILL */
            if (waitpid(pid, NULL, WNOHANG) == pid) {
                pid = 0;
                break;
            }
            usleep(10000);
        }
        if (pid > 0) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
        }
        daemon_pid = 0;
    }
    if (tmpdir[0]) {
        unlink(sock_path);
        unlink(log_path);
        rmdir(tmpdir);
        tmpdir[0] = 0;
    }
}

static void on_signal(int sig)
{
    if (worker_pid > 0)
        kill(worker_pid, SIGKILL);
    if (daemon_pid > 0) {
        kill(daemon_pid, SIGKILL);
        waitpid(daemon_pid, NULL, 0);
    }
    if (tmpdir[0]) {
        unlink(sock_path);
        unlink(log_path);
        rmdir(tmpdir);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static bool sock_accepts(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    size_t len = strlen(path);
    if (len >= sizeof(a.sun_path)) {
        close(fd);
        return false;
    }
    memcpy(a.sun_path, path, len + 1);
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

static void print_log_tail(void)
{
    FILE *f = fopen(log_path, "r");
    if (!f)
        return;
    char line[512];
    fprintf(stderr, "---- heapd output ----\n");
    while (fgets(line, sizeof(line), f))
        fputs(line, stderr);
    fprintf(stderr, "----------------------\n");
    fclose(f);
}

static int start_daemon(const char *bin, const char *size)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/%s-XXXXXX", bench_name);
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "%s: mkdtemp: %s\n", bench_name, strerror(errno));
        tmpdir[0] = 0;
        return -1;
    }
    snprintf(sock_path, sizeof(sock_path), "%s/h.sock", tmpdir);
    snprintf(log_path, sizeof(log_path), "%s/heapd.log", tmpdir);
    printf("daemon: %s --socket %s --size %s --foreground --quiet\n", bin, sock_path, size);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "%s: fork: %s\n", bench_name, strerror(errno));
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);   /* never outlive the bench */
        int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        unsetenv("LD_PRELOAD");
        execl(bin, bin, "--socket", sock_path, "--size", size, "--foreground", "--quiet", (char *)NULL);
        fprintf(stderr, "exec %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    daemon_pid = pid;
    double t0 = now_s();
    while (now_s() - t0 < 10) {
        if (sock_accepts(sock_path))
            return 0;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            daemon_pid = 0;
            fprintf(stderr, "%s: heapd exited at start (status %#x)\n", bench_name, st);
            print_log_tail();
            return -1;
        }
        usleep(10000);
    }
    fprintf(stderr, "%s: heapd did not accept connections within 10 s\n", bench_name);
    print_log_tail();
    return -1;
}

/* The heapd binary: --heapd, else HEAPD_BIN from the build, else next to us. */
static bool find_heapd(const char *opt, char *out, size_t len)
{
    if (opt) {
        snprintf(out, len, "%s", opt);
        return access(out, X_OK) == 0;
    }
#ifdef HEAPD_BIN
    if (access(HEAPD_BIN, X_OK) == 0) {
        snprintf(out, len, "%s", HEAPD_BIN);
        return true;
    }
#endif
    const char *slash = strrchr(self_exe, '/');
    int dirlen = slash ? (int)(slash - self_exe) : 0;
    snprintf(out, len, "%.*s/heapd", dirlen, self_exe);
    return access(out, X_OK) == 0;
}

int bench_run_worker(const char *const *argv_in, int alloc_idx, void (*line)(void *, const char *), void *arg)
{
    const allocator_t *a = alloc_idx >= 0 && alloc_idx < A_COUNT ? &allocators[alloc_idx] : NULL;
    const char *argv[32] = { self_exe };
    int argc = 1;
    for (int i = 1; argv_in[i] && argc < 28; i++)
        argv[argc++] = argv_in[i];
    if (a && a->symbol) {
        argv[argc++] = "--expect";
        argv[argc++] = a->symbol;
    }
    argv[argc] = NULL;

    /* The environment without LD_PRELOAD, plus ours when the allocator has one. */
    size_t n = 0;
    while (environ[n])
        n++;
    char **envp = calloc(n + 2, sizeof(*envp));
    if (!envp)
        return -1;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "LD_PRELOAD=", 11) != 0)
            envp[k++] = environ[i];
    char preload[PATH_MAX + 16];
    if (a && a->preload) {
        snprintf(preload, sizeof(preload), "LD_PRELOAD=%s", a->preload);
        envp[k++] = preload;
    }
    envp[k] = NULL;

    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0) {
        free(envp);
        return -1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(pfd[0]);
        close(pfd[1]);
        free(envp);
        return -1;
    }
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(pfd[1], 1);
        execve(self_exe, (char *const *)argv, envp);
        fprintf(stderr, "%s: exec %s: %s\n", bench_name, self_exe, strerror(errno));
        _exit(127);
    }
    worker_pid = pid;
    free(envp);
    close(pfd[1]);
    FILE *f = fdopen(pfd[0], "r");
    char buf[256];
    while (f && fgets(buf, sizeof(buf), f))
        line(arg, buf);
    if (f)
        fclose(f);
    else
        close(pfd[0]);
    int st;
    waitpid(pid, &st, 0);
    worker_pid = 0;
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    fprintf(stderr, "%s: %s worker killed by signal %d\n", bench_name, a ? a->name : "the", WTERMSIG(st));
    return 128 + WTERMSIG(st);
}

void print_header(int argc, char **argv)
{
    printf("command:");
    for (int i = 0; i < argc; i++)
        printf(" %s", argv[i]);
    char date[64];
    time_t t = time(NULL);
    strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S %Z", localtime(&t));
    printf("\ndate: %s\nnproc: %ld\n", date, sysconf(_SC_NPROCESSORS_ONLN));
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[256];
    while (f && fgets(line, sizeof(line), f))
        if (strncmp(line, "model name", 10) == 0) {
            char *v = strchr(line, ':');
            if (v) {
                v += 1 + (v[1] == ' ');
                printf("cpu: %s", v);
            }
            break;
        }
    if (f)
        fclose(f);
}

int bench_init(const char *name)
{
    bench_name = name;
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof(self_exe) - 1);
    if (n <= 0) {
        fprintf(stderr, "%s: readlink /proc/self/exe: %s\n", name, strerror(errno));
        return -1;
    }
    self_exe[n] = 0;
    struct sigaction sa = { .sa_handler = on_signal };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    atexit(stop_daemon);
    return 0;
}

int bench_daemon_open(const char *heapd_opt, const char **sock, const char *size)
{
    if (*sock) {
        printf("daemon: existing, --socket %s\n", *sock);
        if (!sock_accepts(*sock)) {
            fprintf(stderr, "%s: nothing accepts connections on %s: %s\n", bench_name, *sock, strerror(errno));
            return -1;
        }
        return 0;
    }
    char bin[PATH_MAX];
    if (!find_heapd(heapd_opt, bin, sizeof(bin))) {
        fprintf(stderr, "%s: no heapd binary at %s (build it, or pass --heapd PATH or --socket PATH)\n",
                bench_name, bin);
        return -1;
    }
    if (start_daemon(bin, size) != 0)
        return -1;
    *sock = sock_path;
    return 0;
}

void bench_control_path(const char *sock, char *out, size_t len)
{
    snprintf(out, len, "%s.ctl", sock);
}

int bench_worker_enter(const char *symbol)
{
    alarm(WORKER_TIMEOUT_S);
    if (symbol && !dlsym(RTLD_DEFAULT, symbol)) {
        fprintf(stderr, "%s worker: %s not found: LD_PRELOAD=%s did not take effect\n", bench_name, symbol,
                getenv("LD_PRELOAD") ? getenv("LD_PRELOAD") : "(unset)");
        return 3;
    }
    return 0;
}

int bench_worker_attach(const char *sock)
{
    if (getenv("LD_PRELOAD")) {
        fprintf(stderr, "%s worker: heapd must not run under LD_PRELOAD\n", bench_name);
        return 2;
    }
    if (heapd_attach(sock) != 0) {
        fprintf(stderr, "%s worker: cannot attach to heapd at %s: %s\n", bench_name, sock ? sock : "(default)",
                strerror(errno));
        return 1;
    }
    return 0;
}

bool bench_common_arg(int argc, char **argv, int *i, bench_opts_t *o)
{
    const char *a = argv[*i], *v = *i + 1 < argc ? argv[*i + 1] : NULL;
    const char **slot = NULL;
    if (strcmp(a, "--quick") == 0) {
        o->quick = true;
        return true;
    }
    if (strncmp(a, "--worker=", 9) == 0) {
        o->worker = a + 9;
        return true;
    }
    if (strcmp(a, "--socket") == 0)
        slot = &o->sock;
    else if (strcmp(a, "--heapd") == 0)
        slot = &o->heapd;
    else if (strcmp(a, "--expect") == 0)
        slot = &o->expect;
    if (!slot || !v)
        return false;
    *slot = v;
    ++*i;
    return true;
}
