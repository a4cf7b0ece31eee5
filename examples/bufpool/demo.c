/* bufpool-demo: a shared buffer pool over a data file, from the shell.
 *
 *   bufpool-demo [-s SOCKET] [-f FILE] [-m MiB] put PAGE TEXT   write TEXT at the start of PAGE
 *   bufpool-demo [-s SOCKET] [-f FILE] [-m MiB] get PAGE        print the start of PAGE
 *   bufpool-demo [-s SOCKET] [-f FILE] [-m MiB] scan N          pin and unpin pages 0..N-1
 *   bufpool-demo [-s SOCKET] stats                              the pool's counters
 *   bufpool-demo [-s SOCKET] drop                               write dirty pages back, free the pool
 *
 * Every run is a new process; the pool (named "bufpool-demo") outlives it
 * in the shared heap. `put` changes the page in the pool only: another
 * process's `get` sees the text at once (a hit: the file still has the old
 * page), and the file gets it when the page is evicted or at `drop`.
 * FILE (default bufpool-demo.dat) is read with pread and written with
 * pwrite at PAGE * 8 KiB; pages beyond its end read as zeros. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bufpool.h"
#include "heapd.h"

static int fd = -1;

static int file_read(uint64_t id, void *buf, void *arg)
{
    (void)arg;
    ssize_t n = pread(fd, buf, BP_PAGE_SIZE, (off_t)(id * BP_PAGE_SIZE));
    if (n < 0)
        return -1;
    memset((char *)buf + n, 0, BP_PAGE_SIZE - (size_t)n);   /* beyond the end: zeros */
    return 0;
}

static int file_write(uint64_t id, const void *buf, void *arg)
{
    (void)arg;
    return pwrite(fd, buf, BP_PAGE_SIZE, (off_t)(id * BP_PAGE_SIZE)) == BP_PAGE_SIZE ? 0 : -1;
}

static void usage(void)
{
    fprintf(stderr, "usage: bufpool-demo [-s SOCKET] [-f FILE] [-m MiB] put PAGE TEXT | get PAGE | scan N | stats | drop\n");
    exit(2);
}

static uint64_t number(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end || !*s)
        usage();
    return v;
}

int main(int argc, char **argv)
{
    const char *sock = NULL, *file = "bufpool-demo.dat";
    uint64_t mib = 64;
    int o;
    while ((o = getopt(argc, argv, "s:f:m:")) != -1) {
        if (o == 's')
            sock = optarg;
        else if (o == 'f')
            file = optarg;
        else if (o == 'm')
            mib = number(optarg);
        else
            usage();
    }
    if (optind >= argc)
        usage();
    const char *cmd = argv[optind];
    if (heapd_attach(sock) != 0) {
        fprintf(stderr, "bufpool-demo: cannot attach to heapd: %s (is it running? try `make run`)\n", strerror(errno));
        return 1;
    }
    if ((fd = open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0644)) < 0) {
        fprintf(stderr, "bufpool-demo: %s: %s\n", file, strerror(errno));
        return 1;
    }
    bp_t *bp = bp_open("bufpool-demo", mib << 20, file_read, file_write, NULL);
    if (!bp) {
        fprintf(stderr, "bufpool-demo: cannot open the pool: %s\n", strerror(errno));
        return 1;
    }
    int rc = 0;
    if (!strcmp(cmd, "put") && argc - optind == 3) {
        uint64_t id = number(argv[optind + 1]);
        char *p = bp_pin(bp, id);
        if (!p) {
            fprintf(stderr, "bufpool-demo: pin %llu: %s\n", (unsigned long long)id, strerror(errno));
            return 1;
        }
        snprintf(p, BP_PAGE_SIZE, "%s (pid %d)", argv[optind + 2], (int)getpid());
        bp_dirty(bp, id);
        bp_unpin(bp, id);
        printf("page %llu: %s\n", (unsigned long long)id, p);
    } else if (!strcmp(cmd, "get") && argc - optind == 2) {
        uint64_t id = number(argv[optind + 1]);
        char *p = bp_pin(bp, id);
        if (!p) {
            fprintf(stderr, "bufpool-demo: pin %llu: %s\n", (unsigned long long)id, strerror(errno));
            return 1;
        }
        printf("page %llu: %.*s\n", (unsigned long long)id, (int)strnlen(p, 200), p);
        bp_unpin(bp, id);
    } else if (!strcmp(cmd, "scan") && argc - optind == 2) {
        uint64_t n = number(argv[optind + 1]);
        for (uint64_t id = 0; id < n; id++) {
            if (!bp_pin(bp, id)) {
                fprintf(stderr, "bufpool-demo: pin %llu: %s\n", (unsigned long long)id, strerror(errno));
                rc = 1;
                break;
            }
            bp_unpin(bp, id);
        }
    } else if (!strcmp(cmd, "drop") && argc - optind == 1) {
        bp_destroy(bp);
        bp = NULL;
        printf("pool dropped, dirty pages written to %s\n", file);
    } else if (strcmp(cmd, "stats") || argc - optind != 1) {
        usage();
    }
    if (bp) {
        bp_stats_t st;
        bp_get_stats(bp, &st);
        printf("pool: %llu of %llu buffers, %llu hits, %llu misses, %llu evictions, %llu written back, "
               "%llu pins of dead processes released\n",
               (unsigned long long)st.bufs, (unsigned long long)st.max_bufs, (unsigned long long)st.hits,
               (unsigned long long)st.misses, (unsigned long long)st.evictions, (unsigned long long)st.written,
               (unsigned long long)st.pins_reaped);
        bp_close(bp);
    }
    close(fd);
    heapd_detach();
    return rc;
}
