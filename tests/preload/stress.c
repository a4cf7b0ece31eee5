/* stress.c: a plain C program for scripts/test-preload.sh, run with and
 * without libheapd-malloc.so; its output must be the same. It checks what a
 * drop-in malloc owes a program (alignment, usable size, realloc keeping the
 * contents) and exercises what may deadlock or leak in a preloaded
 * allocator: thousands of threads created and exiting, fork while other
 * threads allocate (with and without exec), dlopen. Deterministic: a fixed
 * seed, results printed as sums. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int fails;
#define CHECK(c, ...) do { if (!(c)) { fails++; fprintf(stderr, "stress: " __VA_ARGS__); fputc('\n', stderr); } } while (0)

static uint64_t rnd(uint64_t *s) { *s = *s * 6364136223846793005ull + 1442695040888963407ull; return *s >> 33; }

static void alignment(void)
{
    for (size_t n = 1; n <= 70000; n += n < 1100 ? 1 : 997) {
        unsigned char *p = malloc(n);
        size_t want = n <= 8 ? 8 : 16;
        CHECK(p && (uintptr_t)p % want == 0, "malloc(%zu) = %p: not %zu-aligned", n, (void *)p, want);
        CHECK(malloc_usable_size(p) >= n, "malloc_usable_size(malloc(%zu)) = %zu", n, malloc_usable_size(p));
        memset(p, 0xab, n);
        free(p);
        unsigned char *z = calloc(1, n);
        size_t nz = 0;
        for (size_t i = 0; i < n; i++)
            nz += z[i] != 0;
        CHECK(nz == 0, "calloc(1, %zu): %zu bytes not zero", n, nz);
        free(z);
    }
    for (size_t a = 8; a <= 65536; a *= 2)
        for (size_t n = 1; n < 3 * a; n = n * 3 + 1) {
            void *p = NULL;
            CHECK(posix_memalign(&p, a, n) == 0 && (uintptr_t)p % a == 0, "posix_memalign(%zu, %zu)", a, n);
            free(p);
            p = aligned_alloc(a, n);
            CHECK(p && (uintptr_t)p % a == 0, "aligned_alloc(%zu, %zu)", a, n);
            free(p);
            p = memalign(a, n);
            CHECK(p && (uintptr_t)p % a == 0, "memalign(%zu, %zu)", a, n);
            free(p);
        }
    void *v = valloc(100), *pv = pvalloc(100);
    long pg = sysconf(_SC_PAGESIZE);
    CHECK(v && (uintptr_t)v % pg == 0 && pv && (uintptr_t)pv % pg == 0 && malloc_usable_size(pv) >= (size_t)pg,
          "valloc/pvalloc");
    free(v);
    free(pv);
    volatile size_t big = SIZE_MAX / 2;
    void *r = reallocarray(NULL, big, 4);
    CHECK(r == NULL, "reallocarray overflow");
    printf("alignment: checked\n");
}

static void reallocs(void)
{
    uint64_t seed = 42, sum = 0;
    unsigned char *p = NULL;
    size_t n = 0;
    for (int i = 0; i < 400; i++) {
        size_t m = 1 + rnd(&seed) % (i % 7 == 0 ? 300000 : 5000);
        unsigned char *q = realloc(p, m);
        CHECK(q != NULL, "realloc(%zu)", m);
        for (size_t j = 0; j < (n < m ? n : m); j++)
            if (q[j] != (unsigned char)(j * 7 + n)) { CHECK(0, "realloc %zu -> %zu lost byte %zu", n, m, j); break; }
        for (size_t j = 0; j < m; j++)
            q[j] = (unsigned char)(j * 7 + m);
        sum += m;
        p = q;
        n = m;
    }
    free(p);
    printf("realloc: %llu bytes moved through\n", (unsigned long long)sum);
}

static void *worker(void *arg)
{
    uint64_t seed = (uintptr_t)arg, sum = 0;
    void *keep[64] = {0};
    for (int i = 0; i < 500; i++) {
        unsigned k = rnd(&seed) % 64;
        free(keep[k]);
        size_t n = 1 + rnd(&seed) % (i % 50 == 0 ? 100000 : 2000);
        keep[k] = malloc(n);
        memset(keep[k], (int)k, n);
        sum += n;
    }
    for (int k = 0; k < 64; k++)
        free(keep[k]);
    return (void *)(uintptr_t)sum;
}

static void threads(void)
{
    uint64_t total = 0;
    for (int batch = 0; batch < 40; batch++) {       /* 40 x 50 = 2000 threads */
        pthread_t t[50];
        for (int i = 0; i < 50; i++)
            CHECK(pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(batch * 50 + i + 1)) == 0, "pthread_create");
        for (int i = 0; i < 50; i++) {
            void *r;
            pthread_join(t[i], &r);
            total += (uintptr_t)r;
        }
    }
    printf("threads: 2000 threads allocated %llu bytes\n", (unsigned long long)total);
}

static atomic_bool stop;
static void *churn(void *arg)
{
    uint64_t seed = (uintptr_t)arg;
    while (!atomic_load(&stop)) {
        void *p = malloc(1 + rnd(&seed) % 70000);
        free(p);
    }
    return NULL;
}

/* fork while other threads allocate: the child must allocate and free at
 * once (a lock held at fork would hang it; the script's time limit fails the
 * test), and what it writes to or frees of its inherited memory must not
 * reach the parent's. With exec: the child is a new program under the same
 * preload. */
static void forks(const char *self)
{
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, churn, (void *)(uintptr_t)(i + 7));
    char *parents = malloc(1000);
    strcpy(parents, "from the parent");
    int ok = 0;
    for (int i = 0; i < 50; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            char *c = malloc(100 + (size_t)i * 1000);
            snprintf(c, 100, "%s", parents);
            int good = strcmp(c, "from the parent") == 0;
            strcpy(parents, "the child's own copy");    /* fork copies: the parent must not see it */
            __asm__ volatile("" ::: "memory");           /* a store the compiler may not drop before free */
            free(c);
            free(parents);                               /* the child's copy */
            void *big = malloc(1 << 20);
            free(big);
            _exit(good ? 0 : 1);
        }
        int st;
        waitpid(pid, &st, 0);
        ok += WIFEXITED(st) && WEXITSTATUS(st) == 0 && strcmp(parents, "from the parent") == 0;
    }
    atomic_store(&stop, true);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    free(parents);
    printf("fork: %d of 50 children allocated and exited\n", ok);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        execl(self, self, "child", (char *)NULL);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    printf("fork+exec: child exited %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

static void dlopens(void)
{
    double s = 0;
    for (int i = 0; i < 20; i++) {
        void *h = dlopen("libm.so.6", RTLD_NOW | RTLD_LOCAL);
        double (*cosf_)(double) = h ? (double (*)(double))dlsym(h, "cos") : NULL;
        if (cosf_)
            s += cosf_(0.0);
        if (h)
            dlclose(h);
    }
    printf("dlopen: %.0f\n", s);
}

/* HEAPD_PRELOAD_FORK=share: the parent allocates, forks and exits holding
 * everything; the child waits for a byte on stdin (sent once the daemon has
 * ended the parent's connection), then checks that what it inherited is
 * still live and intact, before and after allocating plenty of its own
 * (an object freed under it would be handed out again). */
enum { FAM_N = 20000, FAM_NEW = 20000 };
static char *fam_obj[FAM_N];

static size_t fam_size(int i)
{
    if (i % 5000 == 0)
        return (size_t)3 << 20;               /* LARGE spans */
    if (i % 1000 == 0)
        return (size_t)200 << 10;             /* a large class */
    return 1 + (size_t)(i * 7919) % 4096;
}

static int fam_check(void)
{
    int bad = 0;
    for (int i = 0; i < FAM_N; i++) {
        size_t n = fam_size(i);
        const unsigned char *p = (const unsigned char *)fam_obj[i];
        if (malloc_usable_size(fam_obj[i]) < n || p[0] != (unsigned char)i || p[n - 1] != (unsigned char)i ||
            p[n / 2] != (unsigned char)i)
            bad++;
    }
    return bad;
}

static int family(bool child_allocates)
{
    for (int i = 0; i < FAM_N; i++) {
        fam_obj[i] = malloc(fam_size(i));
        memset(fam_obj[i], (unsigned char)i, fam_size(i));
    }
    pid_t pid = fork();
    if (pid < 0)
        return 1;
    if (pid > 0)
        return 0;                             /* exit holding all of it */
    char c;
    if (read(0, &c, 1) != 1)
        return 1;
    int bad = fam_check();
    if (!child_allocates) {                   /* never connects: a member by its pid alone */
        printf("family: %s (%d objects not intact, no allocation)\n", bad ? "FAIL" : "ok", bad);
        fflush(stdout);
        return bad != 0;
    }
    static char *mine[FAM_NEW];
    for (int j = 0; j < FAM_NEW; j++) {
        size_t n = 16 + (size_t)(j * 104729) % 4000;
        mine[j] = malloc(n);
        memset(mine[j], 0xee, n);
    }
    bad += fam_check();
    for (int j = 0; j < FAM_NEW; j++)
        free(mine[j]);
    for (int i = 0; i < FAM_N; i += 2)
        free(fam_obj[i]);
    printf("family: %s (%d objects not intact)\n", bad ? "FAIL" : "ok", bad);
    fflush(stdout);
    return bad != 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "hold") == 0) {   /* fork; both allocate, wait for a byte each */
        pid_t pid = fork();
        char *volatile p = malloc(64), c;
        snprintf(p, 64, "%d", (int)getpid());
        ssize_t r = read(0, &c, 1);
        free(p);
        int st = 0;
        if (pid > 0)
            waitpid(pid, &st, 0);
        return r == 1 && st == 0 ? 0 : 1;
    }
    if (argc > 1 && strcmp(argv[1], "family") == 0)
        return family(!(argc > 2 && strcmp(argv[2], "quiet") == 0));
    if (argc > 1 && strcmp(argv[1], "leak") == 0) {   /* exit (or die: leak kill) holding objects */
        for (int i = 0; i < 8; i++) {               /* 2 MiB: above the large classes, a LARGE span each */
            char *volatile p = malloc(2 << 20);
            memset(p, i, 2 << 20);
        }
        for (int i = 0; i < 8; i++) {               /* large classes (40 KiB..1 MiB) */
            char *volatile p = malloc((size_t)(48 + 100 * i) << 10);
            p[0] = (char)i;
        }
        for (int i = 0; i < 50000; i++) {           /* small objects of every size up to 4 KiB, half freed */
            char *volatile p = malloc(1 + (size_t)(i * 7919) % 4096);
            p[0] = (char)i;
            if (i % 2)
                free(p);
        }
        if (argc > 2 && strcmp(argv[2], "kill") == 0)
            raise(SIGKILL);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "child") == 0) {
        char *p = strdup("exec'd child allocates");
        puts(p);
        free(p);
        return 0;
    }
    alignment();
    reallocs();
    threads();
    forks(argv[0]);
    dlopens();
    printf("failures: %d\n", fails);
    return fails != 0;
}
