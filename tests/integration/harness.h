/* Integration-test harness: start and stop a real heapd, run test bodies in
 * child processes, and observe the daemon's books from outside.
 *
 * Every daemon gets a unique socket under a fresh temp dir and a unique base
 * address; every daemon and child a test starts is stopped, also when the
 * test fails (harness_cleanup runs at exit and on fatal signals). */
#ifndef HEAPD_ITEST_HARNESS_H
#define HEAPD_ITEST_HARNESS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "segment.h"

typedef struct daemon_proc {
    pid_t pid;
    char dir[128];
    char sock[192];
    char log[192];
    uint64_t base;
} daemon_proc_t;

/* Start heapd with `--size size` plus extra arguments (NULL-terminated list,
 * may be NULL). Waits until it accepts connections. Returns 0 or -1. */
int daemon_start(daemon_proc_t *d, const char *size, const char *const *extra);
/* SIGTERM, wait (5 s), then SIGKILL. Returns the daemon's exit status as
 * waitpid reports it, or -1. */
int daemon_stop(daemon_proc_t *d);

/* Run fn(arg) in a child process with a time limit; returns its exit code,
 * 128+signal if killed, or 124 on time-out. */
int run_child(int (*fn)(void *), void *arg, unsigned timeout_s);
/* Wait for a child with a time limit (kills it on time-out): like run_child. */
int wait_child(pid_t pid, unsigned timeout_s);

/* The daemon's books, read from the header of its meta memfd through a
 * separate raw connection (Hello/Welcome, fds mapped read-only anywhere). */
int books_read(const char *sock, hd_header_t *out);   /* a consistent copy (hd_books_snapshot) */
/* Poll the books until pred holds or timeout_ms passes; returns pred's last
 * value and leaves the last books in *out. */
bool books_wait(const char *sock, hd_header_t *out, bool (*pred)(const hd_header_t *), unsigned timeout_ms);
/* The books live: the header mapped read-only (its raw connection is closed
 * again, so wait for clients to drop by one before counting on it), or NULL.
 * Wait on its fields with TEST_WAIT (unit.h); books_unmap when done. */
const hd_header_t *books_map(const char *sock);
void books_unmap(const hd_header_t *h);

/* Say Hello (version HD_PROTO_VERSION, this name) on a raw connection and read
 * the reply with its fds. Returns 0 for a Welcome with both fds in fds[], the
 * daemon's errno for an Error, or -1. fds[] keeps at most 2 (more are closed;
 * *nfds counts all received). The connection goes to *connp if given, else it
 * is closed. */
int raw_hello_fds(const char *sock, const char *name, int fds[2], int *nfds, int *connp);

/* A raw exchange for protocol tests: connect, send one packed ClientMsg,
 * receive one packet into buf. Returns bytes received, 0 on EOF, -1 on error. */
int raw_connect(const char *sock);
ssize_t raw_call(int fd, const void *msg, size_t len, void *buf, size_t buflen, unsigned timeout_ms);

/* The control socket (the daemon's socket path + ".ctl"): connect (-1 on
 * failure); send one request without a body of its own (Stats, Clients,
 * Flush: body_case is a HEAPDCTL__CONTROL_REQUEST__BODY_ value); read one
 * reply frame (NULL on time-out or a bad frame; free it with
 * heapdctl__control_reply__free_unpacked). Requests may be pipelined. */
struct Heapdctl__ControlReply;
int ctl_open(const char *sock);
int ctl_send(int fd, uint64_t seq, int body_case);
struct Heapdctl__ControlReply *ctl_recv(int fd, unsigned timeout_ms);

/* In a child: drop every privilege and become nobody (uid/gid NOBODY, no
 * supplementary groups). Needs root. 0, or -1. */
#define NOBODY 65534u
int become_nobody(void);

/* One request on an attached raw connection (a packed Heapd__ClientMsg):
 * 0 for Ack, the daemon's errno for an Error, -1 for no reply or another. */
struct Heapd__ClientMsg;
int raw_request(int conn, struct Heapd__ClientMsg *m, unsigned timeout_ms);

/* The fields of /proc/pid/stat after the command name (from the state
 * letter on), read into buf; NULL when the process is gone. */
const char *proc_stat_fields(pid_t pid, char *buf, size_t len);

void harness_cleanup(void);

#endif
