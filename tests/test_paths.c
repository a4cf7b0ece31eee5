/* Unit tests of shm/paths.c: the default socket and the clients' search. The
 * environment is set per test and restored; the sockets live in a temp dir. */
#define _GNU_SOURCE
#include <CUnit/CUnit.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "paths.h"
#include "unit.h"

static char dir[64];
static char *saved_sock, *saved_xdg;

static char *dup_env(const char *n)
{
    const char *v = getenv(n);
    return v ? strdup(v) : NULL;
}

static void restore(const char *n, const char *v)
{
    if (v)
        setenv(n, v, 1);
    else
        unsetenv(n);
}

static int paths_init(void)
{
    saved_sock = dup_env("HEAPD_SOCKET");
    saved_xdg = dup_env("XDG_RUNTIME_DIR");
    snprintf(dir, sizeof(dir), "/tmp/heapd-paths-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int paths_clean(void)
{
    static const char *names[] = {"env.sock", "xdg/heapd.sock", "xdg/heapd.sock.ctl", "plain", "xdg"};
    char p[128];
    for (unsigned i = 0; i < 5; i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, names[i]);
        if (unlink(p) < 0)
            rmdir(p);
    }
    rmdir(dir);
    restore("HEAPD_SOCKET", saved_sock);
    restore("XDG_RUNTIME_DIR", saved_xdg);
    free(saved_sock);
    free(saved_xdg);
    return 0;
}

/* A socket file at dir/name (bound, then closed: the file stays). */
static void make_sock(const char *name)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/%s", dir, name);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_FATAL(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    close(fd);
}

static void set_env(void)
{
    char p[128];
    snprintf(p, sizeof(p), "%s/env.sock", dir);
    setenv("HEAPD_SOCKET", p, 1);
    snprintf(p, sizeof(p), "%s/xdg", dir);
    setenv("XDG_RUNTIME_DIR", p, 1);
    mkdir(p, 0700);
}

static bool exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISSOCK(st.st_mode);
}

static void test_candidates_order(void)
{
    char c[HD_MAX_CANDIDATES][HD_PATH_MAX], want[128], tmp[64];
    snprintf(tmp, sizeof(tmp), "/tmp/heapd-%u/heapd.sock", (unsigned)geteuid());
    set_env();
    CU_ASSERT_EQUAL_FATAL(hd_socket_candidates("", c), 4);
    snprintf(want, sizeof(want), "%s/env.sock", dir);
    CU_ASSERT_STRING_EQUAL(c[0], want);
    snprintf(want, sizeof(want), "%s/xdg/heapd.sock", dir);
    CU_ASSERT_STRING_EQUAL(c[1], want);
    CU_ASSERT_STRING_EQUAL(c[2], "/run/heapd/heapd.sock");
    CU_ASSERT_STRING_EQUAL(c[3], tmp);
    /* heapctl's suffix goes on every candidate */
    CU_ASSERT_EQUAL_FATAL(hd_socket_candidates(".ctl", c), 4);
    CU_ASSERT_STRING_EQUAL(c[2], "/run/heapd/heapd.sock.ctl");
    /* unset and empty variables are skipped */
    unsetenv("HEAPD_SOCKET");
    setenv("XDG_RUNTIME_DIR", "", 1);
    CU_ASSERT_EQUAL_FATAL(hd_socket_candidates("", c), 2);
    CU_ASSERT_STRING_EQUAL(c[0], "/run/heapd/heapd.sock");
    CU_ASSERT_STRING_EQUAL(c[1], tmp);
}

static void test_find_first_existing(void)
{
    char got[HD_PATH_MAX], want[128];
    set_env();
    /* nothing of ours exists: the first candidate, unless a system socket does */
    CU_ASSERT_EQUAL(hd_find_socket("", got, sizeof(got)), 0);
    snprintf(want, sizeof(want), "%s/env.sock", dir);
    char c[HD_MAX_CANDIDATES][HD_PATH_MAX];
    hd_socket_candidates("", c);
    if (!exists(c[2]) && !exists(c[3]))
        CU_ASSERT_STRING_EQUAL(got, want);
    /* $HEAPD_SOCKET missing, the XDG one there: the XDG one */
    make_sock("xdg/heapd.sock");
    CU_ASSERT_EQUAL(hd_default_socket(got, sizeof(got)), 0);
    snprintf(want, sizeof(want), "%s/xdg/heapd.sock", dir);
    CU_ASSERT_STRING_EQUAL(got, want);
    /* $HEAPD_SOCKET a plain file, not a socket: still the XDG one */
    char plain[128];
    snprintf(plain, sizeof(plain), "%s/plain", dir);
    FILE *f = fopen(plain, "w");
    CU_ASSERT_FATAL(f != NULL);
    fclose(f);
    setenv("HEAPD_SOCKET", plain, 1);
    CU_ASSERT_EQUAL(hd_default_socket(got, sizeof(got)), 0);
    CU_ASSERT_STRING_EQUAL(got, want);
    /* both there: $HEAPD_SOCKET wins */
    make_sock("env.sock");
    snprintf(want, sizeof(want), "%s/env.sock", dir);
    setenv("HEAPD_SOCKET", want, 1);
    CU_ASSERT_EQUAL(hd_default_socket(got, sizeof(got)), 0);
    CU_ASSERT_STRING_EQUAL(got, want);
    /* heapctl: the first candidate whose .ctl exists */
    make_sock("xdg/heapd.sock.ctl");
    CU_ASSERT_EQUAL(hd_find_socket(".ctl", got, sizeof(got)), 0);
    snprintf(want, sizeof(want), "%s/xdg/heapd.sock.ctl", dir);
    CU_ASSERT_STRING_EQUAL(got, want);
    /* too small a buffer */
    CU_ASSERT_EQUAL(hd_find_socket("", got, 8), -1);
}

static void test_daemon_default(void)
{
    char got[HD_PATH_MAX], want[128];
    int own = -1;
    set_env();
    CU_ASSERT_EQUAL(hd_daemon_socket(got, sizeof(got), &own), 0);
    snprintf(want, sizeof(want), "%s/env.sock", dir);
    CU_ASSERT_STRING_EQUAL(got, want);
    CU_ASSERT_EQUAL(own, 0);
    unsetenv("HEAPD_SOCKET");
    CU_ASSERT_EQUAL(hd_daemon_socket(got, sizeof(got), &own), 0);
    snprintf(want, sizeof(want), "%s/xdg/heapd.sock", dir);
    CU_ASSERT_STRING_EQUAL(got, want);
    CU_ASSERT_EQUAL(own, 0);
    unsetenv("XDG_RUNTIME_DIR");
    CU_ASSERT_EQUAL(hd_daemon_socket(got, sizeof(got), &own), 0);
    if (geteuid() == 0)
        snprintf(want, sizeof(want), "/run/heapd/heapd.sock");
    else
        snprintf(want, sizeof(want), "/tmp/heapd-%u/heapd.sock", (unsigned)geteuid());
    CU_ASSERT_STRING_EQUAL(got, want);
    CU_ASSERT_EQUAL(own, 1);
}

static void register_paths_suite(void)
{
    CU_pSuite s = CU_add_suite("paths", paths_init, paths_clean);
    CU_add_test(s, "socket candidates in search order", test_candidates_order);
    CU_add_test(s, "clients take the first that exists", test_find_first_existing);
    CU_add_test(s, "the daemon's default socket", test_daemon_default);
}
UNIT_SUITE(register_paths_suite)
