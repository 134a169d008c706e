/*
 * A test-only LD_PRELOAD library that removes ONE sync from a real run of
 * the daemon, to show that the durability proof (tests/durability.rs)
 * fails when a single fsync is missing. The daemon itself is unchanged:
 * its call to fsync(2)/fdatasync(2) on the file named by
 * DOCFETCH_SKIP_SYNC_OF (an absolute path, compared with
 * /proc/self/fd/N) returns 0 without syncing, the DOCFETCH_SKIP_SYNC_NTH-th
 * time (1 by default) and only then. Every other call goes to libc.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int seen;

static int skip(int fd) {
    const char *want = getenv("DOCFETCH_SKIP_SYNC_OF");
    if (want == NULL || *want == '\0') return 0;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = '\0';
    if (strcmp(path, want) != 0) return 0;
    const char *nth = getenv("DOCFETCH_SKIP_SYNC_NTH");
    int wanted = nth != NULL ? atoi(nth) : 1;
    return __atomic_add_fetch(&seen, 1, __ATOMIC_SEQ_CST) == wanted;
}

int fsync(int fd) {
    if (skip(fd)) return 0;
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}

int fdatasync(int fd) {
    if (skip(fd)) return 0;
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
