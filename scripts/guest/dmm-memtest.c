// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//
// dmm-memtest: the guest side of the memory-error tests (built statically
// into the test guest by scripts/make-guest.sh).
//
//   dmm-memtest fill FILE MIB SEED   writes MIB MiB of seeded data; "fill pages=N"
//   dmm-memtest gpa FILE INDEX...    guest-physical address of those pages
//                                    (/proc/self/pagemap, root); "gpa I 0xADDR"
//   dmm-memtest check FILE SEED      reads every page through mmap, catching
//                                    SIGBUS (a memory error: the page is lost
//                                    and the kernel says so) and going on;
//                                    "memory_error page=I addr=0x.. code=C" per
//                                    error, then "check pages=N ok=M
//                                    memory_errors=K mismatches=L"
//
// Exit status: 0 when mismatches is 0 (memory errors are not a failure:
// they are the guest being told), 1 otherwise, 2 for bad usage.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define PAGE 4096u

static sigjmp_buf jump;
static volatile sig_atomic_t fault_code;
static void *volatile fault_addr;

static void on_sigbus(int sig, siginfo_t *si, void *ctx)
{
    (void)sig;
    (void)ctx;
    fault_code = si->si_code;
    fault_addr = si->si_addr;
    siglongjmp(jump, 1);
}

static void die(const char *what)
{
    fprintf(stderr, "dmm-memtest: %s: %s\n", what, strerror(errno));
    exit(1);
}

// The content of page `index` for `seed`: xorshift64 words.
static void expected(uint64_t seed, uint64_t index, uint64_t *out)
{
    uint64_t x = (seed + 1) * 0x9E3779B97F4A7C15ull ^ (index + 1) * 0xC2B2AE3D27D4EB4Full;
    for (unsigned i = 0; i < PAGE / 8; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out[i] = x;
    }
}

static uint64_t number(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end || end == s) {
        fprintf(stderr, "dmm-memtest: bad number '%s'\n", s);
        exit(2);
    }
    return v;
}

static int fill(const char *path, uint64_t mib, uint64_t seed)
{
    uint64_t pages = mib * (1u << 20) / PAGE;
    uint64_t buf[PAGE / 8];
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    if (fd < 0) {
        die(path);
    }
    for (uint64_t i = 0; i < pages; i++) {
        expected(seed, i, buf);
        if (write(fd, buf, PAGE) != PAGE) {
            die("write");
        }
    }
    close(fd);
    printf("fill pages=%" PRIu64 "\n", pages);
    return 0;
}

static int gpa(const char *path, int n, char **idx)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        die(path);
    }
    volatile uint8_t *m = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    int pm = open("/proc/self/pagemap", O_RDONLY);
    if (m == MAP_FAILED || pm < 0) {
        die("mmap/pagemap");
    }
    for (int i = 0; i < n; i++) {
        uint64_t index = number(idx[i]), entry = 0;
        if (index * PAGE >= (uint64_t)st.st_size) {
            fprintf(stderr, "dmm-memtest: page %" PRIu64 " past the file\n", index);
            return 2;
        }
        (void)m[index * PAGE]; // map it
        uint64_t vpage = ((uintptr_t)m + index * PAGE) / PAGE;
        if (pread(pm, &entry, 8, vpage * 8) != 8) {
            die("pread(pagemap)");
        }
        if (!(entry >> 63) || !(entry & ((1ull << 55) - 1))) {
            fprintf(stderr, "dmm-memtest: page %" PRIu64 ": no frame (pagemap 0x%" PRIx64 ")\n",
                    index, entry);
            return 1;
        }
        printf("gpa %" PRIu64 " 0x%" PRIx64 "\n", index, (uint64_t)((entry & ((1ull << 55) - 1)) * PAGE));
    }
    return 0;
}

static int check(const char *path, uint64_t seed)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        die(path);
    }
    uint64_t pages = st.st_size / PAGE;
    const uint8_t *m = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        die("mmap");
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, NULL) < 0) {
        die("sigaction");
    }
    static uint64_t want[PAGE / 8];
    volatile uint64_t ok = 0, errors = 0, mismatches = 0;
    for (volatile uint64_t i = 0; i < pages; i++) {
        if (sigsetjmp(jump, 1)) {
            errors++;
            printf("memory_error page=%" PRIu64 " addr=%p code=%d\n", (uint64_t)i, fault_addr,
                   (int)fault_code);
            continue;
        }
        expected(seed, i, want);
        if (memcmp(m + i * PAGE, want, PAGE) == 0) {
            ok++;
        } else {
            if (mismatches++ < 16) {
                printf("mismatch page=%" PRIu64 "\n", (uint64_t)i);
            }
        }
    }
    printf("check pages=%" PRIu64 " ok=%" PRIu64 " memory_errors=%" PRIu64
           " mismatches=%" PRIu64 "\n",
           pages, (uint64_t)ok, (uint64_t)errors, (uint64_t)mismatches);
    return mismatches ? 1 : 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 5 && !strcmp(argv[1], "fill")) {
        return fill(argv[2], number(argv[3]), number(argv[4]));
    }
    if (argc >= 4 && !strcmp(argv[1], "gpa")) {
        return gpa(argv[2], argc - 3, argv + 3);
    }
    if (argc == 4 && !strcmp(argv[1], "check")) {
        return check(argv[2], number(argv[3]));
    }
    fprintf(stderr, "usage: dmm-memtest fill FILE MIB SEED | gpa FILE INDEX... | check FILE SEED\n");
    return 2;
}
