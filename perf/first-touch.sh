#!/usr/bin/env bash
# What fresh memory costs on this machine: the rate at which a process can fault in and zero
# memory it never touched, with 4 KiB pages, with transparent huge pages (MADV_HUGEPAGE), and
# with MADV_POPULATE_WRITE in 8 MiB steps (as the tail cache takes a new chunk), beside the
# rate of writing the same memory again. The tail cache takes its memory as records arrive, so
# a fresh broker pays these rates until its cache has filled once; on a VM whose host takes
# free guest memory back (virtio-balloon free page reporting: whole free 2 MiB blocks go back)
# huge pages measured 7x slower than 4 KiB pages, which the kernel first takes from fragmented
# memory the host still backs (past a few GiB they are as slow): why `log.tail.cache.huge.pages`
# is off by default. Run it twice, some seconds apart: memory freed a moment ago may still be
# backed by the host; and with a larger MIB to see where 4 KiB pages slow down.
#
# Usage: perf/first-touch.sh [MIB]     (default 1024; needs gcc)
set -euo pipefail
MIB="${1:-1024}"
[[ "$MIB" =~ ^[0-9]+$ && "$MIB" -ge 8 ]] || { echo "usage: $0 [MIB >= 8]" >&2; exit 2; }
command -v gcc >/dev/null || { echo "first-touch.sh needs gcc" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat >"$work/first_touch.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static void run(const char *name, size_t bytes, int advice, int populate) {
    char *p = mmap(0, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(1); }
    madvise(p, bytes, advice);
    double start = now();
    if (populate) {
        for (size_t at = 0; at < bytes; at += 8 << 20)
            if (madvise(p + at, 8 << 20, MADV_POPULATE_WRITE) != 0) { printf("%-34s refused by this kernel\n", name); munmap(p, bytes); return; }
    } else {
        for (size_t at = 0; at < bytes; at += 4096) p[at] = 1;
    }
    double first = now() - start;
    start = now();
    memset(p, 2, bytes);
    double again = now() - start;
    printf("%-34s first touch %6.2f GB/s, written again %6.2f GB/s\n", name, bytes / first / 1e9, bytes / again / 1e9);
    munmap(p, bytes);
}
int main(int argc, char **argv) {
    size_t bytes = (size_t)atol(argv[1]) << 20;
    run("4 KiB pages", bytes, MADV_NOHUGEPAGE, 0);
    run("4 KiB pages, MADV_POPULATE_WRITE", bytes, MADV_NOHUGEPAGE, 1);
    run("huge pages (MADV_HUGEPAGE)", bytes, MADV_HUGEPAGE, 0);
    return 0;
}
C
gcc -O2 -o "$work/first_touch" "$work/first_touch.c"
echo "fresh memory, $MIB MiB each ($(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo 'no THP'))"
"$work/first_touch" "$MIB"
