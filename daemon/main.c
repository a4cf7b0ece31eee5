/* heapd: the daemon's command line.
 *
 *   heapd [--socket PATH] [--size SIZE] [--base ADDR] [--backing PATH | --hugetlb]
 *         [--memory-limit SIZE|off] [--hard-limit SIZE|off] [--scavenge-cpu PCT]
 *         [--control PATH] [--foreground] [--quiet] [--pidfile PATH]
 *         [--metrics-listen ADDR:PORT]
 *         [--socket-mode OCTAL] [--socket-group NAME|GID] [--allow-uid LIST] [--allow-gid LIST]
 *
 * Owns argument checking and process set-up only; daemon.c runs the loop.
 * Exit codes: 0 clean shutdown (SIGTERM/SIGINT) or --help/--version; 2 a bad
 * flag or value, or a --socket/--control whose directory does not exist (one
 * line "heapd: <what is wrong>" on stderr); 1 the daemon could not start
 * (address in use, backing file, socket, pidfile).
 *
 * The sockets listen before we fork, so when the parent says "started" a
 * client can connect at once. Under systemd (sdnotify.h) the client and
 * control sockets may come from socket activation (FileDescriptorName=client
 * and =control), and READY=1 goes to $NOTIFY_SOCKET once they listen.
 * Foreground mode logs to stderr; daemon mode to syslog (facility daemon).
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
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "control.h"
#include "daemon.h"
#include "heapd_version.h"
#include "metrics_http.h"
#include "paths.h"
#include "sdnotify.h"
#include "size.h"
#define DEFAULT_SIZE (16ull << 30)
#define MIN_SIZE     (8ull << 20)

static void usage(FILE *f)
{
    fprintf(f,
            "usage: heapd [--socket PATH] [--size SIZE] [--base ADDR] [--backing PATH | --hugetlb]\n"
            "             [--memory-limit SIZE|off] [--hard-limit SIZE|off] [--scavenge-cpu PCT]\n"
            "             [--control PATH] [--foreground] [--quiet] [--pidfile PATH]\n"
            "             [--metrics-listen ADDR:PORT]\n"
            "             [--socket-mode OCTAL] [--socket-group NAME|GID] [--allow-uid LIST] [--allow-gid LIST]\n"
            "             [--help] [--version]\n"
            "  --socket PATH   listen here (default: $HEAPD_SOCKET, else $XDG_RUNTIME_DIR/heapd.sock,\n"
            "                  else /run/heapd/heapd.sock as root, /tmp/heapd-UID/heapd.sock otherwise);\n"
            "                  its directory must exist (heapd creates only /run/heapd and /tmp/heapd-UID)\n"
            "  --control PATH  the control socket heapctl talks to (default: the socket path + .ctl)\n"
            "  --size SIZE     heap size (default 16GiB, min 8MiB). SIZE is GOMEMLIMIT's syntax:\n"
            "                  bytes, or a number with B, KiB, MiB, GiB or TiB (512MiB, 64GiB)\n"
            "  --base ADDR     address every process maps the heap at, 2 MiB aligned (default 0x%llx)\n"
            "  --backing PATH  keep the heap in this file (e.g. on hugetlbfs or DAX) instead of a memfd\n"
            "  --hugetlb       back the heap with huge pages (MFD_HUGETLB)\n"
            "  --memory-limit SIZE|off  soft limit on committed memory, like GOMEMLIMIT: over it the\n"
            "                  daemon releases free pages and asks clients to give memory back;\n"
            "                  allocations still succeed (default: off)\n"
            "  --hard-limit SIZE|off    allocations that would commit more than this fail with ENOMEM\n"
            "  --scavenge-cpu PCT   CPU the background scavenger may use, 0..100 (default 1; 0: none)\n"
            "  --socket-mode OCTAL   mode of the socket file (default 0600)\n"
            "  --socket-group NAME|GID  group of the socket file (default: the daemon's)\n"
            "  --allow-uid LIST  users (names or uids, comma-separated) who may attach besides\n"
            "                  the daemon's own uid and root (the default: only those)\n"
            "  --allow-gid LIST  groups (names or gids) whose members may attach\n"
            "  --metrics-listen ADDR:PORT  serve Prometheus metrics at http://ADDR:PORT/metrics\n"
            "                  (127.0.0.1:9464, [::1]:9464; default: off)\n"
            "  --pidfile PATH  write the daemon's pid here (removed at a clean exit)\n"
            "  --foreground    do not daemonize; log to stderr (daemon mode logs to syslog)\n"
            "  --quiet         no log lines\n"
            "  --help, --version\n"
            "Under systemd: Type=notify (READY=1 on $NOTIFY_SOCKET) and socket activation\n"
            "(FileDescriptorName=client, =control) work without flags; see heapd(8).\n",
            (unsigned long long)HD_DEFAULT_BASE);
}

static void die_usage(const char *fmt, const char *arg)
{
    char msg[1024];             /* one write: stderr is unbuffered, and a reader may take one read */
    int n = snprintf(msg, sizeof(msg), "heapd: ");
    n += snprintf(msg + n, sizeof(msg) - (size_t)n, fmt, arg);
    fprintf(stderr, "%s\n", msg);
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

/* A --socket or --control whose directory is missing is a typo until proven
 * otherwise: say so (exit 2) rather than create directories somewhere. */
static void check_parent(const char *opt, const char *path)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return;
    *slash = 0;
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "heapd: %s %s: directory %s does not exist (create it, or choose another path)\n", opt,
                path, dir);
        exit(2);
    }
}

/* The default socket's own directory (/run/heapd, /tmp/heapd-UID): made if
 * missing; it must be ours and closed to others, or someone else could
 * stand in for the daemon. Exits 1 when it is not. */
static void make_own_dir(const char *sock)
{
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", sock);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return;
    *slash = 0;
    bool sys = !strcmp(dir, HD_SYSTEM_SOCKET_DIR);
    if (mkdir(dir, sys ? 0755 : 0700) < 0 && errno != EEXIST) {
        fprintf(stderr, "heapd: cannot create %s: %s (give --socket)\n", dir, strerror(errno));
        exit(1);
    }
    struct stat st;
    if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 022)) {
        fprintf(stderr, "heapd: %s is not a directory of ours closed to others (owner %u, mode %04o); "
                "remove it or give --socket\n", dir, (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
        exit(1);
    }
}

/* A socket systemd passed: is it a listening Unix socket of this type? */
static bool sock_is(int fd, int type)
{
    int t = 0, acc = 0;
    socklen_t l = sizeof(t);
    struct sockaddr_un sa;
    socklen_t sl = sizeof(sa);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &t, &l) < 0 || t != type)
        return false;
    l = sizeof(acc);
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &l) < 0 || !acc)
        return false;
    return getsockname(fd, (struct sockaddr *)&sa, &sl) == 0 && sa.sun_family == AF_UNIX;
}

/* The client socket from systemd: the daemon serves it as if it had made it,
 * but never unlinks its file (sock_ino 0 matches no file). */
static int adopt_client(daemon_t *d, int fd, char *err, size_t errlen)
{
    struct sockaddr_un sa;
    socklen_t sl = sizeof(sa);
    memset(&sa, 0, sizeof(sa));
    if (getsockname(fd, (struct sockaddr *)&sa, &sl) < 0 || fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
        snprintf(err, errlen, "client socket fd %d from systemd: %s", fd, strerror(errno));
        return -1;
    }
    d->listen_fd = fd;
    d->sock_dev = 0;
    d->sock_ino = 0;
    snprintf(d->sock_path, sizeof(d->sock_path), "%s", sa.sun_path[0] ? sa.sun_path : "(systemd socket)");
    return 0;
}

/* --pidfile: our pid, written once the process that serves is known. */
static int write_pidfile(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return -1;
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
    ssize_t w = write(fd, buf, (size_t)n);
    int e = errno;
    close(fd);
    errno = e;
    return w == n ? 0 : -1;
}

int main(int argc, char **argv)
{
    enum { O_SOCKET = 1, O_SIZE, O_BASE, O_BACKING, O_HUGETLB, O_FG, O_QUIET, O_HELP, O_VERSION,
           O_MEMLIMIT, O_HARDLIMIT, O_SCAVCPU, O_SOCKMODE, O_SOCKGROUP, O_ALLOWUID, O_ALLOWGID,
           O_PIDFILE, O_METRICS };
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
        {"pidfile", required_argument, 0, O_PIDFILE},      {"metrics-listen", required_argument, 0, O_METRICS},
        {0, 0, 0, 0},
    };
    const char *sock = NULL, *size_arg = NULL, *backing = NULL;
    uint64_t base = HD_DEFAULT_BASE, size = DEFAULT_SIZE;
    bool hugetlb = false, fg = false, quiet = false;
    uint64_t soft_limit = 0, hard_limit = 0;
    unsigned scav_cpu = 0;      /* daemon_opts_t: 0 = default */
    char sizebuf[32], defsock[PATH_MAX];
    const char *control = NULL, *pidfile = NULL, *metrics_addr = NULL;
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
                die_usage("bad --size '%s': " HD_SIZE_FORMS, optarg);
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
            if (hd_parse_limit(optarg, &soft_limit) < 0)
                die_usage("bad --memory-limit '%s': " HD_LIMIT_FORMS, optarg);
            break;
        case O_HARDLIMIT:
            if (hd_parse_limit(optarg, &hard_limit) < 0)
                die_usage("bad --hard-limit '%s': " HD_LIMIT_FORMS, optarg);
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
        case O_PIDFILE:
            if (!*optarg)
                die_usage("bad --pidfile '%s': give a file path", optarg);
            pidfile = optarg;
            break;
        case O_METRICS:
            metrics_addr = optarg;
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
            printf("heapd %s (protocol %u, layout %u)\n", HEAPD_VERSION, (unsigned)HD_PROTO_VERSION,
                   (unsigned)HD_LAYOUT_VERSION);
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
    /* systemd socket activation: the client and control sockets, told apart
     * by FileDescriptorName= (or by type when unnamed) */
    sd_fd_t sdfds[SD_MAX_LISTEN_FDS];
    char err[512];
    int nsd = sd_listen_fds_take(sdfds, err, sizeof(err));
    if (nsd < 0)
        die_usage("%s", err);
    int client_fd = -1, control_fd = -1;
    for (int i = 0; i < nsd; i++) {
        const char *n = sdfds[i].name;
        bool named = n[0] && strcmp(n, "unknown") != 0;
        if (named ? !strcmp(n, "client") : sock_is(sdfds[i].fd, SOCK_SEQPACKET)) {
            if (client_fd >= 0 || !sock_is(sdfds[i].fd, SOCK_SEQPACKET))
                die_usage("socket activation: fd '%s' must be one listening SOCK_SEQPACKET Unix socket "
                          "(ListenSequentialPacket=)", n[0] ? n : "client");
            client_fd = sdfds[i].fd;
        } else if (named ? !strcmp(n, "control") : sock_is(sdfds[i].fd, SOCK_STREAM)) {
            if (control_fd >= 0 || !sock_is(sdfds[i].fd, SOCK_STREAM))
                die_usage("socket activation: fd '%s' must be one listening SOCK_STREAM Unix socket "
                          "(ListenStream=)", n[0] ? n : "control");
            control_fd = sdfds[i].fd;
        } else {
            die_usage("socket activation: unknown socket '%s' (FileDescriptorName= must be client or control)", n);
        }
    }
    if (!sock && client_fd < 0) {
        int own = 0;
        if (hd_daemon_socket(defsock, sizeof(defsock), &own) < 0)
            die_usage("%s", "the default socket path is too long; give --socket");
        sock = defsock;
        if (own)
            make_own_dir(sock);
    } else if (sock && client_fd < 0) {
        check_parent("--socket", sock);
    }
    if (control && control_fd < 0)
        check_parent("--control", control);
    /* An absolute path: the daemon leaves its working directory, and must
     * still find the socket to unlink it. */
    char abspath[PATH_MAX], fdpath[sizeof(((struct sockaddr_un *)0)->sun_path) + 1] = "";
    if (!sock) {                /* activated: the socket's own name, for the log and the .ctl default */
        struct sockaddr_un sa;
        socklen_t sl = sizeof(sa);
        memset(&sa, 0, sizeof(sa));
        if (getsockname(client_fd, (struct sockaddr *)&sa, &sl) == 0 && sa.sun_path[0] == '/')
            snprintf(fdpath, sizeof(fdpath), "%s", sa.sun_path);
        sock = fdpath;
    }
    if (sock[0] && sock[0] != '/') {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof(cwd)) || snprintf(abspath, sizeof(abspath), "%s/%s", cwd, sock) >= (int)sizeof(abspath))
            die_usage("cannot make socket path '%s' absolute", sock);
        sock = abspath;
    }
    if (strlen(sock) >= sizeof(((daemon_t *)0)->sock_path))
        die_usage("socket path too long (at most 107 bytes): %s", sock);
    char ctlpath[PATH_MAX];     /* the control socket: absolute too */
    bool ctl_default = !control;
    if (control_fd >= 0) {
        ctlpath[0] = 0;         /* the inherited one */
    } else if (!control) {
        if (!sock[0] || snprintf(ctlpath, sizeof(ctlpath), "%s.ctl", sock) >= (int)sizeof(ctlpath))
            ctlpath[0] = 0;
    } else if (control[0] != '/') {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof(cwd)) || snprintf(ctlpath, sizeof(ctlpath), "%s/%s", cwd, control) >= (int)sizeof(ctlpath))
            die_usage("cannot make control socket path '%s' absolute", control);
    } else if (snprintf(ctlpath, sizeof(ctlpath), "%s", control) >= (int)sizeof(ctlpath)) {
        die_usage("control socket path too long: %s", control);
    }
    if (control_fd < 0 && (strlen(ctlpath) >= sizeof(((daemon_t *)0)->sock_path) || !ctlpath[0])) {
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
    if (client_fd >= 0 ? adopt_client(d, client_fd, err, sizeof(err)) : client_listen(d, sock, err, sizeof(err)) < 0) {
        fprintf(stderr, "heapd: %s\n", err);
        daemon_destroy(d);
        free(d);
        return 1;
    }
    if (control_fd >= 0 ? control_adopt(d, control_fd, err, sizeof(err)) < 0
                        : ctlpath[0] && control_listen(d, ctlpath, err, sizeof(err)) < 0) {
        fprintf(stderr, "heapd: %s\n", err);
        client_shutdown(d);     /* no loop yet: closes and unlinks the client socket */
        daemon_destroy(d);
        free(d);
        return 1;
    }
    int mr = metrics_addr ? metrics_http_listen(d, metrics_addr, err, sizeof(err)) : 0;
    if (mr < 0) {
        fprintf(stderr, "heapd: %s\n", err);
        client_shutdown(d);
        control_shutdown(d);
        daemon_destroy(d);
        free(d);
        return mr == -EINVAL ? 2 : 1;   /* a bad ADDR:PORT is a usage error */
    }
    daemon_log(d, "listening on %s%s (heap %s at 0x%llx), control %s", d->sock_path,
               client_fd >= 0 ? " (from systemd)" : "", fmt_size(size, sizebuf, sizeof(sizebuf)),
               (unsigned long long)base, control_fd >= 0 ? "from systemd" : ctlpath[0] ? ctlpath : "none");

    if (!fg) {
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "heapd: fork: %s\n", strerror(errno));
            client_shutdown(d);
            control_shutdown(d);
            daemon_destroy(d);
            free(d);
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
        openlog("heapd", LOG_PID, LOG_DAEMON);
        d->use_syslog = true;   /* stderr is /dev/null */
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    d->start_time_s = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
    if (pidfile && write_pidfile(pidfile) < 0) {
        daemon_log(d, "cannot write --pidfile %s: %s", pidfile, strerror(errno));
        client_shutdown(d);
        control_shutdown(d);
        daemon_destroy(d);
        free(d);
        return 1;
    }
    /* systemd (Type=notify): the sockets listen, clients may connect now */
    char status[256];
    snprintf(status, sizeof(status), "READY=1\nMAINPID=%d\nSTATUS=serving a %s heap on %s\n", (int)getpid(),
             fmt_size(size, sizebuf, sizeof(sizebuf)), d->sock_path);
    int nr = sd_notify_send(status);
    if (nr < 0)
        daemon_log(d, "cannot notify systemd ($NOTIFY_SOCKET): %s", strerror(-nr));

    int r = daemon_run(d);     /* on failure it has closed and unlinked the socket */
    sd_notify_send("STOPPING=1\nSTATUS=stopped\n");
    if (pidfile)
        unlink(pidfile);
    daemon_destroy(d);
    free(d);
    return r < 0 ? 1 : 0;
}
