/*
 * Exercises libdmm's C ABI the way QEMU's memory backend uses it: create a VM,
 * map its memfd, attach, touch guest RAM, read statistics, and check error
 * paths. Prints one line per failed check and "dmm_c_test: ok" at the end.
 *
 *   dmm_c_test [CONTROL_SOCKET_PATH]
 *
 * Copyright 2026 The DMM Authors
 * SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dmm.h"

#define MiB (1024ull * 1024ull)
#define VM_SIZE (64 * MiB)
#define PAGE 4096ull
#define TOUCHED 1000ull /* pages written and checked */

static int failures;
static int checks;

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        checks++;                                                            \
        if (!(cond)) {                                                       \
            failures++;                                                      \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);  \
            fprintf(stderr, __VA_ARGS__);                                    \
            fprintf(stderr, "\n");                                           \
        }                                                                    \
    } while (0)

static const char *last_error(void)
{
    static char buf[512];
    dmm_last_error(buf, sizeof(buf));
    return buf;
}

/* Checks that `r` is `want` and the last error text contains `needle`. */
static void expect_err(dmm_result r, dmm_result want, const char *needle, const char *what)
{
    const char *err = last_error();
    CHECK(r == want, "%s: got %d (%s), want %d; last error '%s'", what, r, dmm_result_str(r), want, err);
    CHECK(strstr(err, needle) != NULL, "%s: last error '%s' does not name '%s'", what, err, needle);
}

static uint64_t file_bytes(int fd)
{
    struct stat st;
    if (fstat(fd, &st) != 0) {
        perror("fstat");
        exit(3);
    }
    return (uint64_t)st.st_blocks * 512;
}

static void error_paths(void)
{
    dmm_config cfg;
    dmm_vm *vm = NULL;
    dmm_stats stats;
    uint32_t bits = 0;
    int fd = -1;

    memset(&cfg, 0, sizeof(cfg));
    expect_err(dmm_vm_new(NULL, &vm, &fd), DMM_ERR_NULL, "cfg", "dmm_vm_new(NULL cfg)");
    expect_err(dmm_vm_new(&cfg, NULL, &fd), DMM_ERR_NULL, "vm_out", "dmm_vm_new(NULL vm_out)");
    expect_err(dmm_vm_new(&cfg, &vm, &fd), DMM_ERR_INVALID_ARGUMENT, "size 0", "dmm_vm_new(size 0)");
    CHECK(vm == NULL, "vm_out written on failure");
    cfg.size = VM_SIZE + 100;
    expect_err(dmm_vm_new(&cfg, &vm, &fd), DMM_ERR_INVALID_ARGUMENT, "67108964", "dmm_vm_new(unaligned)");
    cfg.size = VM_SIZE;
    cfg.pool_size = 2 * VM_SIZE;
    expect_err(dmm_vm_new(&cfg, &vm, &fd), DMM_ERR_INVALID_ARGUMENT, "pool_size 134217728",
               "dmm_vm_new(pool > size)");
    cfg.pool_size = 0;
    cfg.policies = 0x100;
    expect_err(dmm_vm_new(&cfg, &vm, &fd), DMM_ERR_INVALID_ARGUMENT, "0x100", "dmm_vm_new(bad policy bits)");

    expect_err(dmm_policies_parse("balloon,bogus", &bits), DMM_ERR_INVALID_ARGUMENT, "bogus",
               "dmm_policies_parse(bogus)");
    expect_err(dmm_policies_parse(NULL, &bits), DMM_ERR_NULL, "list", "dmm_policies_parse(NULL)");
    CHECK(dmm_policies_parse("balloon,zero", &bits) == DMM_OK, "%s", last_error());
    CHECK(bits == (DMM_POLICY_BALLOON | DMM_POLICY_ZERO), "bits 0x%x", bits);
    CHECK(dmm_last_error(NULL, 0) == 0, "last error not cleared by a success: '%s'", last_error());

    expect_err(dmm_vm_get_stats(NULL, &stats, sizeof(stats), NULL), DMM_ERR_NULL, "vm", "dmm_vm_get_stats(NULL)");
    expect_err(dmm_vm_set_pool_size(NULL, 0), DMM_ERR_NULL, "vm", "dmm_vm_set_pool_size(NULL)");
    expect_err(dmm_vm_attach(NULL, NULL, 0), DMM_ERR_NULL, "vm", "dmm_vm_attach(NULL)");
    dmm_vm_free(NULL);
    CHECK(strcmp(dmm_result_str(DMM_ERR_NULL), "NULL pointer") == 0, "%s", dmm_result_str(DMM_ERR_NULL));
    CHECK(dmm_version() != NULL && dmm_version()[0] != '\0', "no version");
}

/* The dmm_stats of a caller built against libdmm's first C ABI: the fields
 * up to host_allocated_bytes. */
typedef struct old_stats {
    uint64_t size, page_size, pool_size, resident_pages, unpopulated_pages, zero_pages, ballooned_pages,
        reported_pages, swapped_pages, inflight_pages, faults, demand_fills, swap_ins, swap_outs,
        reclaimed_balloon_bytes, reclaimed_report_bytes, reclaimed_zero_bytes, reclaimed_swap_bytes,
        balloon_target_pages, balloon_actual_pages, ignored_requests, host_allocated_bytes;
} old_stats;

#define GUARD 0xa5
#define GUARD_BYTES 64

/* True when the `n` bytes at `p` are all `b`. */
static int all_bytes(const void *p, size_t n, int b)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i] != b)
            return 0;
    return 1;
}

/* dmm_stats can grow: an older caller's shorter struct gets exactly its
 * fields and nothing past them; a newer caller's longer one gets libdmm's
 * fields and zeros; sizes no dmm_stats ever had are DMM_ERR_STRUCT_SIZE. */
static void stats_sizes(void)
{
    struct {
        old_stats s;
        unsigned char guard[GUARD_BYTES];
    } old;
    struct {
        dmm_stats s;
        uint64_t future[3];
        unsigned char guard[GUARD_BYTES];
    } newer;
    _Static_assert(sizeof(old_stats) == DMM_STATS_MIN_SIZE, "the first dmm_stats");
    _Static_assert(offsetof(dmm_stats, host_allocated_bytes) + 8 == DMM_STATS_MIN_SIZE, "fields moved");
    dmm_config cfg;
    dmm_vm *vm = NULL;
    dmm_stats full;
    size_t written = 0;
    int fd = -1;

    memset(&cfg, 0, sizeof(cfg));
    cfg.size = 16 * MiB;
    cfg.pool_size = 8 * MiB;
    if (dmm_vm_new(&cfg, &vm, &fd) != DMM_OK) {
        CHECK(0, "dmm_vm_new: %s", last_error());
        return;
    }
    /* Not attached: nothing changes between the calls. */
    CHECK(dmm_vm_get_stats(vm, &full, sizeof(full), &written) == DMM_OK, "%s", last_error());
    CHECK(written == sizeof(dmm_stats), "written %zu of %zu", written, sizeof(dmm_stats));

    memset(&old, GUARD, sizeof(old));
    written = 0;
    CHECK(dmm_vm_get_stats(vm, (dmm_stats *)&old.s, sizeof(old.s), &written) == DMM_OK, "%s", last_error());
    CHECK(written == sizeof(old.s), "old caller: written %zu, its struct %zu", written, sizeof(old.s));
    CHECK(memcmp(&old.s, &full, sizeof(old.s)) == 0, "old caller: its fields differ from the full struct");
    CHECK(old.s.size == 16 * MiB && old.s.pool_size == 8 * MiB && old.s.page_size == PAGE,
          "old caller: size %llu pool %llu", (unsigned long long)old.s.size, (unsigned long long)old.s.pool_size);
    CHECK(all_bytes(old.guard, sizeof(old.guard), GUARD), "old caller: bytes written past its struct");

    memset(&newer, GUARD, sizeof(newer));
    written = 0;
    CHECK(dmm_vm_get_stats(vm, &newer.s, sizeof(newer.s) + sizeof(newer.future), &written) == DMM_OK, "%s",
          last_error());
    CHECK(written == sizeof(dmm_stats), "newer caller: written %zu", written);
    CHECK(memcmp(&newer.s, &full, sizeof(full)) == 0, "newer caller: fields differ");
    CHECK(all_bytes(newer.future, sizeof(newer.future), 0), "newer caller: unknown fields not zeroed");
    CHECK(all_bytes(newer.guard, sizeof(newer.guard), GUARD), "newer caller: bytes written past its struct");

    const size_t bad[] = {0, 7, 8, DMM_STATS_MIN_SIZE - 8, DMM_STATS_MIN_SIZE + 4, DMM_STATS_MAX_SIZE + 8};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char needle[64];
        snprintf(needle, sizeof(needle), "size %zu is not a dmm_stats size", bad[i]);
        memset(&old, GUARD, sizeof(old));
        expect_err(dmm_vm_get_stats(vm, (dmm_stats *)&old.s, bad[i], NULL), DMM_ERR_STRUCT_SIZE, needle,
                   "dmm_vm_get_stats(bad size)");
        CHECK(all_bytes(&old, sizeof(old), GUARD), "size %zu: written on error", bad[i]);
    }
    CHECK(strcmp(dmm_result_str(DMM_ERR_STRUCT_SIZE), "unknown struct size") == 0, "%s",
          dmm_result_str(DMM_ERR_STRUCT_SIZE));
    dmm_vm_free(vm);
}

/* Swapping into a compressed store, as QEMU's swap-compress=on sets it up:
 * compressible pages go out when the pool shrinks to 0, are stored
 * compressed, and come back intact. */
static void swap_compressed(void)
{
    enum { PAGES = 256 };
    char dir[] = "/tmp/dmm-c-test-XXXXXX";
    char swap[64];
    dmm_config cfg;
    dmm_vm *vm = NULL;
    dmm_stats s;
    int fd = -1;

    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(swap, sizeof(swap), "%s/swap", dir);
    memset(&cfg, 0, sizeof(cfg));
    cfg.size = PAGES * PAGE;
    cfg.swap_path = swap;
    cfg.policies = DMM_POLICY_SWAP;
    cfg.swap_compress = 1;
    if (dmm_vm_new(&cfg, &vm, &fd) != DMM_OK) {
        CHECK(0, "dmm_vm_new(swap_compress): %s", last_error());
        return;
    }
    uint64_t *ram = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    CHECK(ram != MAP_FAILED, "mmap");
    if (ram == MAP_FAILED || dmm_vm_attach(vm, ram, PAGES * PAGE) != DMM_OK) {
        CHECK(0, "attach: %s", last_error());
        dmm_vm_free(vm);
        return;
    }
    for (uint64_t i = 0; i < PAGES * PAGE / 8; i++)
        ram[i] = (i / 512) << 32 | i % 5 | 1;
    CHECK(dmm_vm_set_pool_size(vm, 0) == DMM_OK, "%s", last_error());
    for (int tries = 0; tries < 500; tries++) {
        CHECK(dmm_vm_get_stats(vm, &s, sizeof(s), NULL) == DMM_OK, "%s", last_error());
        if (s.swapped_pages == PAGES)
            break;
        usleep(10000);
    }
    CHECK(s.swapped_pages == PAGES, "swapped %llu of %d pages", (unsigned long long)s.swapped_pages, PAGES);
    CHECK(s.swap_compressed_slots == s.swap_slots_used && s.swap_slots_used > 0, "compressed %llu of %llu slots",
          (unsigned long long)s.swap_compressed_slots, (unsigned long long)s.swap_slots_used);
    CHECK(s.swap_stored_bytes < s.swap_slots_used * PAGE / 4, "%llu bytes in slots",
          (unsigned long long)s.swap_stored_bytes);
    CHECK(dmm_vm_set_pool_size(vm, PAGES * PAGE) == DMM_OK, "%s", last_error());
    uint64_t bad = 0;
    for (uint64_t i = 0; i < PAGES * PAGE / 8; i++)
        bad += ram[i] != ((i / 512) << 32 | i % 5 | 1);
    CHECK(bad == 0, "%llu words differ after swap-in", (unsigned long long)bad);
    CHECK(dmm_vm_get_stats(vm, &s, sizeof(s), NULL) == DMM_OK && s.swap_ins > 0 && s.swap_corrupt == 0, "swap-ins %llu corrupt %llu",
          (unsigned long long)s.swap_ins, (unsigned long long)s.swap_corrupt);
    dmm_vm_free(vm);
    munmap(ram, PAGES * PAGE);
    rmdir(dir);
}

/* Events: the callback runs on a libdmm thread; keep the last one. */
static dmm_event last_event;
static int n_events;

static void on_event(void *opaque, const dmm_event *ev)
{
    int *calls = opaque;

    if (ev->kind == DMM_EVENT_POOL_SIZE_CHANGED) {
        last_event = *ev;
    }
    __atomic_add_fetch(calls, 1, __ATOMIC_SEQ_CST);
}

static int events_seen(void)
{
    return __atomic_load_n(&n_events, __ATOMIC_SEQ_CST);
}

int main(int argc, char **argv)
{
    const char *control = argc > 1 ? argv[1] : NULL;
    dmm_config cfg;
    dmm_vm *vm = NULL;
    dmm_stats s;
    int fd = -1;
    struct stat st;

    error_paths();
    stats_sizes();
    swap_compressed();

    memset(&cfg, 0, sizeof(cfg));
    cfg.size = VM_SIZE;
    cfg.name = "dmm-c-test";
    cfg.control_path = control;
    cfg.policies = DMM_POLICY_BALLOON | DMM_POLICY_REPORT;
    if (dmm_vm_new(&cfg, &vm, &fd) != DMM_OK) {
        fprintf(stderr, "dmm_vm_new: %s\n", last_error());
        return 1;
    }
    CHECK(fd >= 0, "memfd %d", fd);
    if (control) {
        CHECK(stat(control, &st) == 0 && S_ISSOCK(st.st_mode), "%s is not a socket", control);
        CHECK((st.st_mode & 0777) == 0600, "socket mode %o", st.st_mode & 0777);
    }

    uint8_t *ram = mmap(NULL, VM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (ram == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    expect_err(dmm_vm_attach(vm, NULL, VM_SIZE), DMM_ERR_NULL, "host_addr", "dmm_vm_attach(NULL addr)");
    if (dmm_vm_attach(vm, ram, VM_SIZE) != DMM_OK) {
        fprintf(stderr, "dmm_vm_attach: %s\n", last_error());
        return 1;
    }
    CHECK(dmm_vm_get_stats(vm, &s, sizeof(s), NULL) == DMM_OK, "%s", last_error());
    CHECK(s.size == VM_SIZE && s.page_size == PAGE && s.pool_size == VM_SIZE, "size %llu page %llu pool %llu",
          (unsigned long long)s.size, (unsigned long long)s.page_size, (unsigned long long)s.pool_size);
    CHECK(s.resident_pages == 0, "resident before any touch: %llu", (unsigned long long)s.resident_pages);

    /* Touch every 4th page of the first 4000 pages (demand paging through the
     * fault thread), then check content. */
    for (uint64_t i = 0; i < TOUCHED; i++)
        memset(ram + i * 4 * PAGE, (int)(i & 0xff) | 1, PAGE);
    uint64_t bad = 0;
    for (uint64_t i = 0; i < TOUCHED; i++) {
        const uint8_t *p = ram + i * 4 * PAGE;
        for (uint64_t b = 0; b < PAGE; b++)
            bad += p[b] != ((i & 0xff) | 1);
        bad += ram[i * 4 * PAGE + PAGE] != 0; /* the untouched page after reads as zero */
    }
    CHECK(bad == 0, "%llu bytes differ", (unsigned long long)bad);

    /* The fault thread may count the last fill just after waking us: give
     * the counters up to a second to agree with the file. */
    uint64_t held = 0;
    for (int tries = 0; tries < 100; tries++) {
        CHECK(dmm_vm_get_stats(vm, &s, sizeof(s), NULL) == DMM_OK, "%s", last_error());
        held = file_bytes(fd);
        if (s.resident_pages * PAGE == held && s.host_allocated_bytes == held)
            break;
        usleep(10000);
    }
    CHECK(s.resident_pages >= TOUCHED, "resident %llu < touched %llu", (unsigned long long)s.resident_pages,
          TOUCHED);
    CHECK(s.resident_pages * PAGE == held, "resident %llu pages but the memfd holds %llu bytes",
          (unsigned long long)s.resident_pages, (unsigned long long)held);
    CHECK(s.host_allocated_bytes == held, "host_allocated_bytes %llu, fstat %llu",
          (unsigned long long)s.host_allocated_bytes, (unsigned long long)held);
    CHECK(s.faults > 0, "no faults counted");

    /* Pool and balloon; a pool change is an event. */
    expect_err(dmm_vm_set_event_callback(NULL, on_event, &n_events), DMM_ERR_NULL, "vm",
               "dmm_vm_set_event_callback(NULL)");
    CHECK(dmm_vm_set_event_callback(vm, on_event, &n_events) == DMM_OK, "%s", last_error());
    CHECK(dmm_vm_set_pool_size(vm, 32 * MiB) == DMM_OK, "%s", last_error());
    for (int tries = 0; tries < 200 && events_seen() == 0; tries++)
        usleep(10000);
    CHECK(events_seen() >= 1, "no event after a pool change");
    CHECK(last_event.kind == DMM_EVENT_POOL_SIZE_CHANGED && last_event.pool_size == 32 * MiB &&
              last_event.previous_pool_size == VM_SIZE && last_event.resident >= TOUCHED * PAGE,
          "event kind %u pool %llu previous %llu resident %llu", last_event.kind,
          (unsigned long long)last_event.pool_size, (unsigned long long)last_event.previous_pool_size,
          (unsigned long long)last_event.resident);
    CHECK(dmm_vm_get_stats(vm, &s, sizeof(s), NULL) == DMM_OK && s.pool_size == 32 * MiB, "pool %llu",
          (unsigned long long)s.pool_size);
    expect_err(dmm_vm_set_pool_size(vm, 2 * VM_SIZE), DMM_ERR_INVALID_ARGUMENT, "134217728",
               "dmm_vm_set_pool_size(too big)");
    CHECK(dmm_vm_get_stats(vm, &s, sizeof(s), NULL) == DMM_OK && s.pool_size == 32 * MiB, "pool changed by a failed call: %llu",
          (unsigned long long)s.pool_size);
    CHECK(dmm_vm_set_balloon_target(vm, 48 * MiB) == DMM_OK, "%s", last_error());
    CHECK(dmm_vm_get_stats(vm, &s, sizeof(s), NULL) == DMM_OK && s.balloon_target_pages == 16 * MiB / PAGE, "target %llu",
          (unsigned long long)s.balloon_target_pages);
    /* Without a callback, nothing more is delivered. */
    CHECK(dmm_vm_set_event_callback(vm, NULL, NULL) == DMM_OK, "%s", last_error());
    int before = events_seen();
    CHECK(dmm_vm_set_pool_size(vm, 40 * MiB) == DMM_OK, "%s", last_error());
    CHECK(dmm_vm_set_pool_size(vm, 32 * MiB) == DMM_OK, "%s", last_error());
    usleep(100000);
    CHECK(events_seen() == before, "%d events after the callback was removed", events_seen() - before);
    CHECK(dmm_vm_set_event_callback(vm, on_event, &n_events) == DMM_OK, "%s", last_error());
    expect_err(dmm_vm_set_balloon_target(vm, 0), DMM_ERR_INVALID_ARGUMENT, "0", "balloon 0");
    expect_err(dmm_vm_set_balloon_target(vm, VM_SIZE + PAGE), DMM_ERR_INVALID_ARGUMENT, "67112960",
               "balloon > size");

    /* Stats as JSON: ask the length, then read. */
    size_t need = 0;
    char small[4];
    expect_err(dmm_vm_stats_json(vm, small, sizeof(small), &need), DMM_ERR_INVALID_ARGUMENT, "len 4",
               "stats_json(small buffer)");
    CHECK(need > 100, "needed length %zu", need);
    char *json = malloc(need + 1);
    size_t written = 0;
    CHECK(json && dmm_vm_stats_json(vm, json, need + 1, &written) == DMM_OK, "%s", last_error());
    if (json) {
        CHECK(written == need && strlen(json) == need, "written %zu need %zu strlen %zu", written, need,
              strlen(json));
        CHECK(strstr(json, "\"pool_size\":33554432") != NULL, "json: %s", json);
        CHECK(strstr(json, "\"resident_pages\":") != NULL && strstr(json, "\"guest\":") != NULL, "json: %s",
              json);
    }
    free(json);

    dmm_vm_free(vm);
    if (control)
        CHECK(stat(control, &st) != 0, "control socket %s still there after dmm_vm_free", control);
    munmap(ram, VM_SIZE);

    if (failures) {
        fprintf(stderr, "dmm_c_test: %d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("dmm_c_test: ok (%d checks)\n", checks);
    return 0;
}
