/* heapd: the daemon's command line.
 *
 *   heapd --socket PATH --size SIZE [--base ADDR] [--backing PATH | --hugetlb]
 *         [--memory-limit SIZE] [--hard-limit SIZE] [--scavenge-cpu PCT]
 *         [--control PATH] [--foreground] [--quiet]
 *         [--socket-mode OCTAL] [--socket-group NAME|GID] [--allow-uid LIST] [--allow-gid LIST]
 *
 * Owns argument checking and process set-up only; daemon.c runs the loop.
 * Exit codes: 0 clean shutdown (SIGTERM/SIGINT) or --help/--version; 2 a bad
 * flag or value (one line "heapd: <what is wrong>" on stderr); 1 the daemon
 * could not start (address in use, backing file, socket).
 *
 * The socket listens before we fork, so when the parent says "started" a
 * client can connect at once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conn.h"
#include "control.h"
#include "daemon.h"

#ifndef HEAPD_VERSION
#define HEAPD_VERSION "0.1.0"
#endif
#define DEFAULT_SIZE (16ull << 30)
#define MIN_SIZE     (8ull << 20)

static void usage(FILE *f)
{
    fprintf(f,
            "usage: heapd [--socket PATH] [--size SIZE] [--base ADDR] [--backing PATH | --hugetlb]\n"
            "             [--memory-limit SIZE] [--hard-limit SIZE] [--scavenge-cpu PCT]\n"
            "             [--control PATH] [--foreground] [--quiet]\n"
            "             [--socket-mode OCTAL] [--socket-group NAME|GID] [--allow-uid LIST] [--allow-gid LIST]\n"
            "  --socket PATH   listen here (default: $HEAPD_SOCKET, $XDG_RUNTIME_DIR/heapd.sock,\n"
            "                  or /tmp/heapd-UID/heapd.sock)\n"
            "  --control PATH  the control socket heapctl talks to (default: the socket path + .ctl)\n"
            "  --size SIZE     heap size, like GOMEMLIMIT: 512MiB, 64GiB, bytes (default 16GiB, min 8MiB)\n"
            "  --base ADDR     address every process maps the heap at, 2 MiB aligned (default 0x%llx)\n"
            "  --backing PATH  keep the heap in this file (e.g. on hugetlbfs or DAX) instead of a memfd\n"
            "  --hugetlb       back the heap with huge pages (MFD_HUGETLB)\n"
            "  --memory-limit SIZE  soft limit on committed memory, like GOMEMLIMIT: over it the\n"
            "                  daemon releases free pages and asks clients to give memory back;\n"
            "                  allocations still succeed (default: none)\n"
            "  --hard-limit SIZE    allocations that would commit more than this fail with ENOMEM\n"
            "  --scavenge-cpu PCT   CPU the background scavenger may use, 0..100 (default 1; 0: none)\n"
            "  --socket-mode OCTAL   mode of the socket file (default 0600)\n"
            "  --socket-group NAME|GID  group of the socket file (default: the daemon's)\n"
            "  --allow-uid LIST  users (names or uids, comma-separated) who may attach besides\n"
            "                  the daemon's own uid and root (the default: only those)\n"
            "  --allow-gid LIST  groups (names or gids) whose members may attach\n"
            "  --foreground    do not daemonize; log to stderr\n"
            "  --quiet         no log lines\n"
            "  --help, --version\n",
            (unsigned long long)HD_DEFAULT_BASE);
}

static void die_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "heapd: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    exit(2);
}

/* "16GiB" when the size is a whole number of some unit, else bytes. */
static const char *fmt_size(uint64_t v, char *buf, size_t len)
{
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    unsigned u = 0;
    while (u < 4 && v && v % 1024 == 0) {
        v /= 1024;
        u++;
    }
    snprintf(buf, len, "%llu%s", (unsigned long long)v, units[u]);
    return buf;
}

static int parse_addr(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    int b = (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) ? 16 : 10;
    if (!*s || *s == '-' || *s == '+')
        return -1;
    unsigned long long v = strtoull(s, &end, b);
    if (errno || *end || end == s + (b == 16 ? 2 : 0))
        return -1;
    *out = v;
    return 0;
}

/* A uid or gid: digits, or a name looked up in passwd/group. -1 if neither. */
static int parse_id(const char *s, bool group, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (*s && *s != '-' && *s != '+' && !*end && !errno && v < UINT_MAX) {
        *out = (unsigned)v;
        return 0;
    }
    if (group) {
        struct group *g = getgrnam(s);
        if (g) {
            *out = g->gr_gid;
            return 0;
        }
    } else {
        struct passwd *pw = getpwnam(s);
        if (pw) {
            *out = pw->pw_uid;
            return 0;
        }
    }
    return -1;
}

/* --allow-uid/--allow-gid: comma-separated ids or names, appended to list. */
static void parse_id_list(const char *opt, const char *arg, bool group, unsigned *list, unsigned *n)
{
    char buf[1024];
    if (!*arg || strlen(arg) >= sizeof(buf)) {
        fprintf(stderr, "heapd: bad %s '%s': give %s, comma-separated\n", opt, arg,
                group ? "group names or gids" : "user names or uids");
        exit(2);
    }
    snprintf(buf, sizeof(buf), "%s", arg);
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        unsigned id;
        if (parse_id(t, group, &id) < 0) {
            fprintf(stderr, "heapd: bad %s '%s': no %s '%s'\n", opt, arg, group ? "group" : "user", t);
            exit(2);
        }
        if (*n >= DAEMON_MAX_ALLOW) {
            fprintf(stderr, "heapd: bad %s '%s': at most %u entries\n", opt, arg, DAEMON_MAX_ALLOW);
            exit(2);
        }
        list[(*n)++] = id;
    }
    if (!*n) {
        fprintf(stderr, "heapd: bad %s '%s': give %s, comma-separated\n", opt, arg,
                group ? "group names or gids" : "user names or uids");
        exit(2);
    }
}

int main(int argc, char **argv)
{
    enum { O_SOCKET = 1, O_SIZE, O_BASE, O_BACKING, O_HUGETLB, O_FG, O_QUIET, O_HELP, O_VERSION,
           O_MEMLIMIT, O_HARDLIMIT, O_SCAVCPU, O_SOCKMODE, O_SOCKGROUP, O_ALLOWUID, O_ALLOWGID };
    static const struct option opts[] = {
        {"socket", required_argument, 0, O_SOCKET},   {"size", required_argument, 0, O_SIZE},
        {"base", required_argument, 0, O_BASE},       {"backing", required_argument, 0, O_BACKING},
        {"hugetlb", no_argument, 0, O_HUGETLB},       {"foreground", no_argument, 0, O_FG},
        {"quiet", no_argument, 0, O_QUIET},           {"help", no_argument, 0, O_HELP},
        {"version", no_argument, 0, O_VERSION},       {"memory-limit", required_argument, 0, O_MEMLIMIT},
        {"hard-limit", required_argument, 0, O_HARDLIMIT}, {"scavenge-cpu", required_argument, 0, O_SCAVCPU},
        {"control", required_argument, 0, 'C'},
        {"socket-mode", required_argument, 0, O_SOCKMODE}, {"socket-group", required_argument, 0, O_SOCKGROUP},
        {"allow-uid", required_argument, 0, O_ALLOWUID},   {"allow-gid", required_argument, 0, O_ALLOWGID},
        {0, 0, 0, 0},
    };
    const char *sock = NULL, *size_arg = NULL, *backing = NULL;
    uint64_t base = HD_DEFAULT_BASE, size = DEFAULT_SIZE;
    bool hugetlb = false, fg = false, quiet = false;
    uint64_t soft_limit = 0, hard_limit = 0;
    unsigned scav_cpu = 0;      /* daemon_opts_t: 0 = default */
    char sizebuf[32], defsock[PATH_MAX];
    const char *control = NULL;
    unsigned sock_mode = 0, sock_gid = 0, allow_uids[DAEMON_MAX_ALLOW], allow_gids[DAEMON_MAX_ALLOW];
    unsigned n_allow_uids = 0, n_allow_gids = 0;
    bool sock_gid_set = false;

    opterr = 0;
    int o;
    while ((o = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (o) {
        case O_SOCKET:
            sock = optarg;
            break;
        case O_SIZE:
            size_arg = optarg;
            if (hd_parse_size(optarg, &size) < 0)
                die_usage("bad --size '%s': give bytes or a size like 512MiB or 64GiB", optarg);
            break;
        case O_BASE:
            if (parse_addr(optarg, &base) < 0)
                die_usage("bad --base '%s': give an address in hex (0x...) or decimal", optarg);
            if (base == 0 || base % HD_SEG_ALIGN)
                die_usage("bad --base '%s': it must be a nonzero multiple of 2 MiB (0x200000)", optarg);
            break;
        case O_BACKING:
            if (!*optarg)
                die_usage("bad --backing '%s': give a file path", optarg);
            backing = optarg;
            break;
        case O_HUGETLB:
            hugetlb = true;
            break;
        case O_MEMLIMIT:
            if (hd_parse_size(optarg, &soft_limit) < 0)
                die_usage("bad --memory-limit '%s': give bytes or a size like 512MiB or 64GiB", optarg);
            break;
        case O_HARDLIMIT:
            if (hd_parse_size(optarg, &hard_limit) < 0)
                die_usage("bad --hard-limit '%s': give bytes or a size like 512MiB or 64GiB", optarg);
            break;
        case O_SCAVCPU: {
            char *end;
            errno = 0;
            unsigned long v = strtoul(optarg, &end, 10);
            if (errno || !*optarg || *end || optarg[0] == '-' || v > 100)
                die_usage("bad --scavenge-cpu '%s': give a percentage 0..100", optarg);
            scav_cpu = v == 0 ? SCAV_CPU_OFF : (unsigned)v;
            break;
        }
        case O_SOCKMODE: {
            char *end;
            errno = 0;
            unsigned long v = strtoul(optarg, &end, 8);
            if (errno || !*optarg || *end || optarg[0] == '-' || optarg[0] == '+' || v > 0777 || (v & 0600) != 0600)
                die_usage("bad --socket-mode '%s': give octal permission bits 0600..0777 (the owner needs rw)",
                          optarg);
            sock_mode = (unsigned)v;
            break;
        }
        case O_SOCKGROUP:
            if (parse_id(optarg, true, &sock_gid) < 0)
                die_usage("bad --socket-group '%s': no such group (give a name or a gid)", optarg);
            sock_gid_set = true;
            break;
        case O_ALLOWUID:
            parse_id_list("--allow-uid", optarg, false, allow_uids, &n_allow_uids);
            break;
        case O_ALLOWGID:
            parse_id_list("--allow-gid", optarg, true, allow_gids, &n_allow_gids);
            break;
        case 'C':
            if (!*optarg)
                die_usage("bad --control '%s': give a socket path", optarg);
            control = optarg;
            break;
        case O_FG:
            fg = true;
            break;
        case O_QUIET:
            quiet = true;
            break;
        case 'h':
        case O_HELP:
            usage(stdout);
            return 0;
        case O_VERSION:
            printf("heapd %s (protocol %u, layout %u)\n", HEAPD_VERSION, HD_PROTO_VERSION, HD_LAYOUT_VERSION);
            return 0;
        case ':':
            die_usage("%s needs a value", argv[optind - 1]);
            break;
        default:
            die_usage("unknown option %s (see --help)", argv[optind - 1]);
        }
    }
    if (optind < argc)
        die_usage("unexpected argument '%s' (see --help)", argv[optind]);
    if (soft_limit && hard_limit && hard_limit < soft_limit)
        die_usage("%s", "--hard-limit is below --memory-limit");
    if (backing && hugetlb)
        die_usage("%s", "--backing and --hugetlb exclude each other (put the file on hugetlbfs instead)");
    if (size < MIN_SIZE)
        die_usage("--size %s is too small: the heap needs at least 8MiB", size_arg);
    if (size / HD_PAGE_SIZE > HD_MAX_NPAGES)
        die_usage("--size %s is too large: at most 16TiB", size_arg);
    uint64_t grain = hugetlb ? HD_SEG_ALIGN : HD_PAGE_SIZE;
    if (size % grain) {
        size -= size % grain;
        if (!quiet)
            fprintf(stderr, "heapd: --size %s rounded down to %s (a multiple of %s)\n", size_arg,
                    fmt_size(size, sizebuf, sizeof(sizebuf)), hugetlb ? "2 MiB huge pages" : "8 KiB pages");
    }
    if (!sock) {
        if (hd_default_socket(defsock, sizeof(defsock)) < 0)
            die_usage("%s", "the default socket path is too long; give --socket");
        sock = defsock;
    }
    /* An absolute path: the daemon leaves its working directory, and must
     * still find the socket to unlink it. */
    char abspath[PATH_MAX];
    if (sock[0] != '/') {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof(cwd)) || snprintf(abspath, sizeof(abspath), "%s/%s", cwd, sock) >= (int)sizeof(abspath))
            die_usage("cannot make socket path '%s' absolute", sock);
        sock = abspath;
    }
    if (strlen(sock) >= sizeof(((daemon_t *)0)->sock_path))
        die_usage("socket path too long (at most 107 bytes): %s", sock);
    char ctlpath[PATH_MAX];     /* the control socket: absolute too */
    bool ctl_default = !control;
    if (!control) {
        if (snprintf(ctlpath, sizeof(ctlpath), "%s.ctl", sock) >= (int)sizeof(ctlpath))
            ctlpath[0] = 0;
    } else if (control[0] != '/') {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof(cwd)) || snprintf(ctlpath, sizeof(ctlpath), "%s/%s", cwd, control) >= (int)sizeof(ctlpath))
            die_usage("cannot make control socket path '%s' absolute", control);
    } else if (snprintf(ctlpath, sizeof(ctlpath), "%s", control) >= (int)sizeof(ctlpath)) {
        die_usage("control socket path too long: %s", control);
    }
    if (strlen(ctlpath) >= sizeof(((daemon_t *)0)->sock_path) || !ctlpath[0]) {
        if (!ctl_default)
            die_usage("control socket path too long (at most 107 bytes): %s", ctlpath);
        if (!quiet)             /* the heap works without it */
            fprintf(stderr, "heapd: no control socket: %s.ctl is too long (give --control PATH)\n", sock);
        ctlpath[0] = 0;
    }

    daemon_t *d = calloc(1, sizeof(*d));
    if (!d) {
        fprintf(stderr, "heapd: out of memory\n");
        return 1;
    }
    char err[512];
    if (client_pidfd_probe(NULL, err, sizeof(err)) < 0) {   /* leases need it: docs/design.md */
        fprintf(stderr, "heapd: %s\n", err);
        free(d);
        return 1;
    }
    daemon_opts_t dopt = {.size = size, .base = base, .backing = backing, .hugetlb = hugetlb, .quiet = quiet,
                          .soft_limit = soft_limit, .hard_limit = hard_limit, .scavenge_cpu = scav_cpu};
    if (daemon_init(d, &dopt, err, sizeof(err)) < 0) {
        fprintf(stderr, "heapd: %s\n", err);
        return 1;
    }
    d->sock_mode = sock_mode;
    d->sock_gid_set = sock_gid_set;
    d->sock_gid = (gid_t)sock_gid;
    for (unsigned i = 0; i < n_allow_uids; i++)
        d->allow_uids[i] = (uid_t)allow_uids[i];
    for (unsigned i = 0; i < n_allow_gids; i++)
        d->allow_gids[i] = (gid_t)allow_gids[i];
    d->n_allow_uids = n_allow_uids;
    d->n_allow_gids = n_allow_gids;
    if (client_listen(d, sock, err, sizeof(err)) < 0) {
        fprintf(stderr, "heapd: %s\n", err);
        daemon_destroy(d);
        return 1;
    }
    if (ctlpath[0] && control_listen(d, ctlpath, err, sizeof(err)) < 0) {
        fprintf(stderr, "heapd: %s\n", err);
        client_shutdown(d);     /* no loop yet: closes and unlinks the client socket */
        daemon_destroy(d);
        return 1;
    }
    daemon_log(d, "listening on %s (heap %s at 0x%llx), control %s", sock, fmt_size(size, sizebuf, sizeof(sizebuf)),
               (unsigned long long)base, ctlpath[0] ? ctlpath : "none");

    if (!fg) {
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "heapd: fork: %s\n", strerror(errno));
            unlink(sock);
            if (ctlpath[0])
                unlink(ctlpath);
            return 1;
        }
        if (pid > 0) {
            printf("heapd: started, pid %d\n", (int)pid);
            fflush(stdout);
            _exit(0);       /* the child owns the socket and the segment now */
        }
        setsid();
        if (chdir("/") < 0) { /* keep going: the cwd only pins a mount */ }
        int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (nul >= 0) {
            dup2(nul, 0);
            dup2(nul, 1);
            dup2(nul, 2);
            if (nul > 2)
                close(nul);
        }
        d->quiet = true;    /* stderr is /dev/null */
    }

    int r = daemon_run(d);     /* on failure it has closed and unlinked the socket */
    daemon_destroy(d);
    free(d);
    return r < 0 ? 1 : 0;
}
