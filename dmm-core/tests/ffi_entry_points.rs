// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Every C entry point's error paths, called from Rust: result codes, the
//! last-error text naming the bad value, and nothing changed on failure.
// SAFETY (every unsafe block of this file): the calls pass live pointers to
// local values of the right type, or NULL on purpose, as the C contract allows.
#![allow(clippy::undocumented_unsafe_blocks, clippy::unwrap_used)]

use std::ffi::{c_char, CStr, CString};
use std::ptr;

use dmm::ffi::*;

const MIB: u64 = 1 << 20;

fn last_error() -> String {
    let mut buf = [0 as c_char; 1024];
    unsafe { dmm_last_error(buf.as_mut_ptr(), buf.len()) };
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

#[track_caller]
fn expect(r: dmm_result, want: dmm_result, needle: &str) {
    let err = last_error();
    assert_eq!(r, want, "last error: {err}");
    assert!(
        err.contains(needle),
        "last error '{err}' does not name '{needle}'"
    );
}

fn config(size: u64) -> dmm_config {
    dmm_config {
        size,
        page_size: 0,
        pool_size: 0,
        control_path: ptr::null(),
        swap_path: ptr::null(),
        name: ptr::null(),
        policies: 0,
        swap_compress: 0,
        uffd_user_mode_only: 0,
    }
}

fn new_vm(cfg: &dmm_config) -> (*mut dmm_vm, i32) {
    let mut vm = ptr::null_mut();
    let mut fd = -1;
    let r = unsafe { dmm_vm_new(cfg, CFG_SIZE, &mut vm, &mut fd) };
    assert_eq!(r, dmm_result::DMM_OK, "dmm_vm_new: {}", last_error());
    (vm, fd)
}

const STATS_SIZE: usize = std::mem::size_of::<dmm_stats>();
const CFG_SIZE: usize = std::mem::size_of::<dmm_config>();

fn stats(vm: *const dmm_vm) -> dmm_stats {
    let mut s = dmm_stats::default();
    let mut written = 0;
    assert_eq!(
        unsafe { dmm_vm_get_stats(vm, &mut s, STATS_SIZE, &mut written) },
        dmm_result::DMM_OK,
        "{}",
        last_error()
    );
    assert_eq!(written, STATS_SIZE);
    s
}

#[test]
fn policies_parse() {
    let mut bits = 0u32;
    let list = CString::new("balloon, swap,zero,report").unwrap();
    assert_eq!(
        unsafe { dmm_policies_parse(list.as_ptr(), &mut bits) },
        dmm_result::DMM_OK
    );
    assert_eq!(
        bits,
        DMM_POLICY_BALLOON | DMM_POLICY_SWAP | DMM_POLICY_ZERO | DMM_POLICY_REPORT
    );
    let none = CString::new("").unwrap();
    assert_eq!(
        unsafe { dmm_policies_parse(none.as_ptr(), &mut bits) },
        dmm_result::DMM_OK
    );
    assert_eq!(bits, 0);

    bits = 77;
    let bad = CString::new("balloon,telepathy").unwrap();
    expect(
        unsafe { dmm_policies_parse(bad.as_ptr(), &mut bits) },
        dmm_result::DMM_ERR_INVALID_ARGUMENT,
        "telepathy",
    );
    assert_eq!(bits, 77, "out written on failure");
    let not_utf8 = CString::new(vec![b'b', 0xff]).unwrap();
    expect(
        unsafe { dmm_policies_parse(not_utf8.as_ptr(), &mut bits) },
        dmm_result::DMM_ERR_INVALID_ARGUMENT,
        "list",
    );
    expect(
        unsafe { dmm_policies_parse(ptr::null(), &mut bits) },
        dmm_result::DMM_ERR_NULL,
        "list",
    );
    expect(
        unsafe { dmm_policies_parse(list.as_ptr(), ptr::null_mut()) },
        dmm_result::DMM_ERR_NULL,
        "out",
    );
}

#[test]
fn vm_new_rejects_bad_configs() {
    let mut vm = ptr::null_mut();
    let mut fd = -1;
    let cfg = config(64 * MIB);
    expect(
        unsafe { dmm_vm_new(ptr::null(), CFG_SIZE, &mut vm, &mut fd) },
        dmm_result::DMM_ERR_NULL,
        "cfg",
    );
    expect(
        unsafe { dmm_vm_new(&cfg, CFG_SIZE, ptr::null_mut(), &mut fd) },
        dmm_result::DMM_ERR_NULL,
        "vm_out",
    );

    let bad_utf8 = CString::new(vec![b'/', 0xfe]).unwrap();
    let empty = CString::new("").unwrap();
    let cases: Vec<(dmm_config, &str)> = vec![
        (config(0), "size 0"),
        (config(64 * MIB + 1), "size 67108865"),
        (
            dmm_config {
                page_size: 8192,
                ..cfg
            },
            "page_size 8192",
        ),
        (
            dmm_config {
                pool_size: 128 * MIB,
                ..cfg
            },
            "pool_size 134217728",
        ),
        (
            dmm_config {
                policies: 0x30,
                ..cfg
            },
            "0x30",
        ),
        (
            dmm_config {
                control_path: bad_utf8.as_ptr(),
                ..cfg
            },
            "control_path",
        ),
        (
            dmm_config {
                swap_path: bad_utf8.as_ptr(),
                ..cfg
            },
            "swap_path",
        ),
        (
            dmm_config {
                name: bad_utf8.as_ptr(),
                ..cfg
            },
            "name",
        ),
        (
            dmm_config {
                control_path: empty.as_ptr(),
                ..cfg
            },
            "control_path",
        ),
        (
            dmm_config {
                policies: DMM_POLICY_SWAP,
                ..cfg
            },
            "swap",
        ),
    ];
    for (cfg, needle) in cases {
        let r = unsafe { dmm_vm_new(&cfg, CFG_SIZE, &mut vm, &mut fd) };
        expect(r, dmm_result::DMM_ERR_INVALID_ARGUMENT, needle);
        assert!(vm.is_null(), "vm_out written on failure ({needle})");
        assert_eq!(fd, -1, "memfd_out written on failure ({needle})");
    }
}

#[test]
fn vm_lifecycle_and_error_paths() {
    let name = CString::new("ffi-test").unwrap();
    let cfg = dmm_config {
        name: name.as_ptr(),
        ..config(16 * MIB)
    };
    // memfd_out is optional.
    let mut vm = ptr::null_mut();
    assert_eq!(
        unsafe { dmm_vm_new(&cfg, CFG_SIZE, &mut vm, ptr::null_mut()) },
        dmm_result::DMM_OK
    );
    assert_eq!(last_error(), "", "success leaves no error");
    unsafe { dmm_vm_free(vm) };

    let (vm, fd) = new_vm(&cfg);
    assert!(fd >= 0);
    let before = stats(vm);
    assert_eq!(
        (before.size, before.page_size, before.pool_size),
        (16 * MIB, 4096, 16 * MIB)
    );

    // attach
    expect(
        unsafe { dmm_vm_attach(ptr::null_mut(), ptr::null_mut(), 0) },
        dmm_result::DMM_ERR_NULL,
        "vm",
    );
    expect(
        unsafe { dmm_vm_attach(vm, ptr::null_mut(), 16 * MIB) },
        dmm_result::DMM_ERR_NULL,
        "host_addr",
    );

    // pool
    expect(
        unsafe { dmm_vm_set_pool_size(ptr::null_mut(), MIB) },
        dmm_result::DMM_ERR_NULL,
        "vm",
    );
    expect(
        unsafe { dmm_vm_set_pool_size(vm, 32 * MIB) },
        dmm_result::DMM_ERR_INVALID_ARGUMENT,
        "33554432",
    );
    expect(
        unsafe { dmm_vm_set_pool_size(vm, MIB + 1) },
        dmm_result::DMM_ERR_INVALID_ARGUMENT,
        "1048577",
    );
    assert_eq!(
        stats(vm).pool_size,
        16 * MIB,
        "pool changed by failed calls"
    );
    assert_eq!(
        unsafe { dmm_vm_set_pool_size(vm, 8 * MIB) },
        dmm_result::DMM_OK,
        "{}",
        last_error()
    );
    assert_eq!(stats(vm).pool_size, 8 * MIB);

    // stats
    let mut s = dmm_stats::default();
    expect(
        unsafe { dmm_vm_get_stats(ptr::null(), &mut s, STATS_SIZE, ptr::null_mut()) },
        dmm_result::DMM_ERR_NULL,
        "vm",
    );
    expect(
        unsafe { dmm_vm_get_stats(vm, ptr::null_mut(), STATS_SIZE, ptr::null_mut()) },
        dmm_result::DMM_ERR_NULL,
        "out",
    );
    stats_sizes(vm);

    // balloon: the guest keeps the given size
    expect(
        unsafe { dmm_vm_set_balloon_target(ptr::null_mut(), MIB) },
        dmm_result::DMM_ERR_NULL,
        "vm",
    );
    expect(
        unsafe { dmm_vm_set_balloon_target(vm, 0) },
        dmm_result::DMM_ERR_INVALID_ARGUMENT,
        "balloon size 0",
    );
    expect(
        unsafe { dmm_vm_set_balloon_target(vm, 16 * MIB + 4096) },
        dmm_result::DMM_ERR_INVALID_ARGUMENT,
        "16781312",
    );
    assert_eq!(
        stats(vm).balloon_target_pages,
        0,
        "target changed by failed calls"
    );
    assert_eq!(
        unsafe { dmm_vm_set_balloon_target(vm, 12 * MIB) },
        dmm_result::DMM_OK,
        "{}",
        last_error()
    );
    assert_eq!(stats(vm).balloon_target_pages, 1024);
    assert_eq!(
        unsafe { dmm_vm_set_balloon_target(vm, 16 * MIB) },
        dmm_result::DMM_OK
    );
    assert_eq!(stats(vm).balloon_target_pages, 0);

    // stats JSON
    let mut written = 0usize;
    expect(
        unsafe { dmm_vm_stats_json(ptr::null(), ptr::null_mut(), 0, &mut written) },
        dmm_result::DMM_ERR_NULL,
        "vm",
    );
    expect(
        unsafe { dmm_vm_stats_json(vm, ptr::null_mut(), 0, &mut written) },
        dmm_result::DMM_ERR_INVALID_ARGUMENT,
        "len 0",
    );
    let need = written;
    let mut buf = vec![0x55 as c_char; need];
    expect(
        unsafe { dmm_vm_stats_json(vm, buf.as_mut_ptr(), need, &mut written) },
        dmm_result::DMM_ERR_INVALID_ARGUMENT,
        &format!("need {}", need + 1),
    );
    assert!(
        buf.iter().all(|&c| c == 0x55),
        "buffer written although too small"
    );
    let mut buf = vec![0 as c_char; need + 1];
    assert_eq!(
        unsafe { dmm_vm_stats_json(vm, buf.as_mut_ptr(), need + 1, ptr::null_mut()) },
        dmm_result::DMM_OK
    );
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap();
    assert_eq!(text.len(), need);
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(v["stats"]["pool_size"], 8 * MIB);
    assert_eq!(v["stats"]["size"], 16 * MIB);
    assert!(v["guest"].is_object(), "{text}");

    unsafe { dmm_vm_free(vm) };
    unsafe { dmm_vm_free(ptr::null_mut()) };
}

#[test]
fn last_error_is_truncated_terminated_and_per_thread() {
    let cfg = config(0);
    let mut vm = ptr::null_mut();
    assert_eq!(
        unsafe { dmm_vm_new(&cfg, CFG_SIZE, &mut vm, ptr::null_mut()) },
        dmm_result::DMM_ERR_INVALID_ARGUMENT
    );
    let full = last_error();
    let len = unsafe { dmm_last_error(ptr::null_mut(), 0) };
    assert_eq!(len, full.len());
    assert!(len > 8);

    let mut small = [0x7f as c_char; 8];
    assert_eq!(
        unsafe { dmm_last_error(small.as_mut_ptr(), small.len()) },
        len
    );
    let got = unsafe { CStr::from_ptr(small.as_ptr()) }.to_str().unwrap();
    assert_eq!(got, &full[..7]);

    let other = std::thread::spawn(|| unsafe { dmm_last_error(ptr::null_mut(), 0) })
        .join()
        .unwrap();
    assert_eq!(other, 0, "another thread sees this thread's error");
}

#[test]
fn static_strings() {
    let codes = [
        dmm_result::DMM_OK,
        dmm_result::DMM_ERR_INVALID_ARGUMENT,
        dmm_result::DMM_ERR_UNSUPPORTED,
        dmm_result::DMM_ERR_OS,
        dmm_result::DMM_ERR_STATE,
        dmm_result::DMM_ERR_NULL,
        dmm_result::DMM_ERR_SWAP_FULL,
        dmm_result::DMM_ERR_ILLEGAL_TRANSITION,
        dmm_result::DMM_ERR_STRUCT_SIZE,
        dmm_result::DMM_ERR_PANIC,
    ];
    let texts: std::collections::BTreeSet<String> = codes
        .iter()
        .map(|&c| {
            unsafe { CStr::from_ptr(dmm_result_str(c)) }
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        texts.len(),
        codes.len(),
        "descriptions are not distinct: {texts:?}"
    );
    assert_eq!(
        codes.map(|c| c as i32),
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 99],
        "codes are stable"
    );
    let v = unsafe { CStr::from_ptr(dmm_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
}

/// `dmm_config.swap_compress` reaches the swap store: compressible pages
/// swapped out are stored compressed (and come back intact) only when set.
#[test]
fn swap_compress_field_reaches_the_store() {
    const PAGES: u64 = 512;
    for on in [1u32, 0] {
        let dir = tempfile::tempdir().unwrap();
        let swap = CString::new(dir.path().join("swap").to_str().unwrap()).unwrap();
        let cfg = dmm_config {
            swap_path: swap.as_ptr(),
            policies: DMM_POLICY_SWAP,
            swap_compress: on,
            ..config(PAGES * 4096)
        };
        let (vm, fd) = new_vm(&cfg);
        let len = (PAGES * 4096) as usize;
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        assert_eq!(
            unsafe { dmm_vm_attach(vm, p, PAGES * 4096) },
            dmm_result::DMM_OK,
            "{}",
            last_error()
        );
        let ram = unsafe { std::slice::from_raw_parts_mut(p.cast::<u64>(), len / 8) };
        let word = |i: usize| (i as u64 / 512) << 32 | (i as u64 % 7);
        for (i, w) in ram.iter_mut().enumerate() {
            *w = word(i);
        }
        assert_eq!(unsafe { dmm_vm_set_pool_size(vm, 0) }, dmm_result::DMM_OK);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while stats(vm).swapped_pages < PAGES {
            assert!(std::time::Instant::now() < deadline, "{:?}", stats(vm));
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let s = stats(vm);
        if on == 1 {
            assert_eq!(s.swap_compressed_slots, s.swap_slots_used, "{s:?}");
            assert!(s.swap_stored_bytes <= s.swap_slots_used * 512, "{s:?}");
        } else {
            assert_eq!(s.swap_compressed_slots, 0, "{s:?}");
            assert_eq!(s.swap_stored_bytes, s.swap_slots_used * 4096, "{s:?}");
        }
        assert_eq!(
            unsafe { dmm_vm_set_pool_size(vm, PAGES * 4096) },
            dmm_result::DMM_OK
        );
        assert!(ram.iter().enumerate().all(|(i, &w)| w == word(i)));
        assert_eq!(stats(vm).swap_corrupt, 0);
        unsafe { dmm_vm_free(vm) };
        unsafe { libc::munmap(p, len) };
    }
}

/// What the C memory-error handler below was told.
static SEEN: std::sync::Mutex<Vec<dmm_memory_error>> = std::sync::Mutex::new(Vec::new());

unsafe extern "C" fn inject_handler(_: *mut std::ffi::c_void, e: *const dmm_memory_error) -> u32 {
    SEEN.lock().unwrap().push(unsafe { *e });
    DMM_MEMORY_ERROR_INJECTED
}

/// `dmm_vm_set_memory_error_handler`: a corrupt slot reaches the C handler
/// with the page, the reason and the reading thread; its "injected" answer
/// gets the page zero-filled; the event and the counters follow;
/// `dmm_vm_clear_memory_errors` clears the page.
#[test]
fn memory_error_handler_and_clear() {
    use std::os::unix::fs::FileExt;
    const PAGES: u64 = 64;
    let dir = tempfile::tempdir().unwrap();
    let swap = CString::new(dir.path().join("swap").to_str().unwrap()).unwrap();
    let cfg = dmm_config {
        swap_path: swap.as_ptr(),
        policies: DMM_POLICY_SWAP,
        ..config(PAGES * 4096)
    };
    let (vm, fd) = new_vm(&cfg);
    expect(
        unsafe { dmm_vm_set_memory_error_handler(ptr::null_mut(), None, ptr::null_mut()) },
        dmm_result::DMM_ERR_NULL,
        "vm",
    );
    expect(
        unsafe { dmm_vm_clear_memory_errors(ptr::null_mut(), ptr::null_mut()) },
        dmm_result::DMM_ERR_NULL,
        "vm",
    );
    let r = unsafe { dmm_vm_set_memory_error_handler(vm, Some(inject_handler), ptr::null_mut()) };
    assert_eq!(r, dmm_result::DMM_OK);
    let len = (PAGES * 4096) as usize;
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    assert_eq!(
        unsafe { dmm_vm_attach(vm, p, PAGES * 4096) },
        dmm_result::DMM_OK
    );
    let ram = unsafe { std::slice::from_raw_parts_mut(p.cast::<u64>(), len / 8) };
    for (i, w) in ram.iter_mut().enumerate() {
        *w = i as u64 + 1;
    }
    assert_eq!(unsafe { dmm_vm_set_pool_size(vm, 0) }, dmm_result::DMM_OK);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stats(vm).swapped_pages < PAGES {
        assert!(std::time::Instant::now() < deadline, "{:?}", stats(vm));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Every slot becomes garbage (the store's file, unlinked, through /proc),
    // then the pool grows: bringing pages home finds every copy bad and
    // leaves them for the touch that tells the guest.
    let want = format!("{} (deleted)", dir.path().join("swap").display());
    let f = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == want))
        .map(|e| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(e.path())
                .unwrap()
        })
        .unwrap();
    f.write_all_at(&vec![0x77; len], 0).unwrap();
    assert_eq!(
        unsafe { dmm_vm_set_pool_size(vm, PAGES * 4096) },
        dmm_result::DMM_OK
    );
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(stats(vm).swapped_pages, PAGES, "{:?}", stats(vm));
    let word = unsafe { ptr::read_volatile(ram.as_ptr().add(3 * 512)) };
    assert_eq!(word, 0, "the handler injected: the page reads zeros");
    let seen = SEEN.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].offset, seen[0].length, seen[0].reason),
        (3 * 4096, 4096, DMM_MEMORY_ERROR_REASON_SLOT_CORRUPT)
    );
    assert_eq!(seen[0].thread_id, unsafe { libc::gettid() } as u32);
    let s = stats(vm);
    assert_eq!(
        (s.memory_errors, s.poisoned_pages, s.swap_corrupt),
        (1, 1, 1)
    );
    let mut cleared = 0;
    assert_eq!(
        unsafe { dmm_vm_clear_memory_errors(vm, &mut cleared) },
        dmm_result::DMM_OK
    );
    assert_eq!((cleared, stats(vm).poisoned_pages), (1, 0));
    unsafe { dmm_vm_free(vm) };
    unsafe { libc::munmap(p, len) };
}

/// `dmm_vm_get_stats` with the sizes of older and newer callers: a prefix of
/// whole fields, nothing past `size`, zeros past what libdmm knows, and a
/// clear error (nothing written) for sizes no `dmm_stats` ever had.
fn stats_sizes(vm: *const dmm_vm) {
    let full = stats(vm);
    // SAFETY of the casts: `dmm_stats` is repr(C) of u64s only.
    let full_words: Vec<u64> = unsafe {
        std::slice::from_raw_parts((&full as *const dmm_stats).cast::<u64>(), STATS_SIZE / 8)
    }
    .to_vec();
    const GUARD: u64 = 0xa5a5_a5a5_a5a5_a5a5;
    let words = DMM_STATS_MAX_SIZE / 8 + 4;
    for size in [
        DMM_STATS_MIN_SIZE,
        DMM_STATS_MIN_SIZE + 8,
        STATS_SIZE - 8,
        STATS_SIZE,
        STATS_SIZE + 24,
    ] {
        let mut buf = vec![GUARD; words];
        let mut written = 0;
        let r = unsafe { dmm_vm_get_stats(vm, buf.as_mut_ptr().cast(), size, &mut written) };
        assert_eq!(r, dmm_result::DMM_OK, "size {size}: {}", last_error());
        let filled = size.min(STATS_SIZE);
        assert_eq!(written, filled, "size {size}");
        assert_eq!(&buf[..filled / 8], &full_words[..filled / 8], "size {size}");
        assert!(
            buf[filled / 8..size / 8].iter().all(|&w| w == 0),
            "size {size}: tail not zeroed"
        );
        assert!(
            buf[size / 8..].iter().all(|&w| w == GUARD),
            "size {size}: written past size"
        );
    }
    for size in [
        0,
        7,
        8,
        DMM_STATS_MIN_SIZE - 8,
        DMM_STATS_MIN_SIZE + 4,
        DMM_STATS_MAX_SIZE + 8,
    ] {
        let mut buf = vec![GUARD; words];
        let mut written = 12345;
        expect(
            unsafe { dmm_vm_get_stats(vm, buf.as_mut_ptr().cast(), size, &mut written) },
            dmm_result::DMM_ERR_STRUCT_SIZE,
            &format!("size {size} is not a dmm_stats size"),
        );
        assert!(
            buf.iter().all(|&w| w == GUARD),
            "size {size}: written on error"
        );
        assert_eq!(written, 12345, "size {size}");
    }
}

/// `dmm_vm_new` with the config sizes of older callers: the fields past
/// their size are never read (here: bytes of 0xff after the first
/// release's `dmm_config`), and a size no `dmm_config` had is a clear error.
#[test]
fn config_sizes() {
    #[repr(C)]
    struct Old {
        cfg: dmm_config,
        guard: [u8; 64],
    }
    let mut old = Old {
        cfg: config(16 << 20),
        guard: [0xff; 64],
    };
    // What an older caller's struct ends with is not its to define: make
    // every byte past the first release's config garbage.
    // SAFETY: `old` is plain data of at least CFG_SIZE + 64 bytes.
    unsafe {
        std::ptr::write_bytes(
            (&mut old as *mut Old).cast::<u8>().add(DMM_CONFIG_MIN_SIZE),
            0xff,
            CFG_SIZE - DMM_CONFIG_MIN_SIZE,
        )
    };
    let mut vm = ptr::null_mut();
    let r = unsafe { dmm_vm_new(&old.cfg, DMM_CONFIG_MIN_SIZE, &mut vm, ptr::null_mut()) };
    assert_eq!(r, dmm_result::DMM_OK, "{}", last_error());
    unsafe { dmm_vm_free(vm) };
    for size in [
        0,
        DMM_CONFIG_MIN_SIZE - 4,
        DMM_CONFIG_MIN_SIZE + 2,
        DMM_CONFIG_MAX_SIZE + 4,
    ] {
        let mut vm = ptr::null_mut();
        let r = unsafe { dmm_vm_new(&old.cfg, size, &mut vm, ptr::null_mut()) };
        assert_eq!(r, dmm_result::DMM_ERR_STRUCT_SIZE, "size {size}");
        assert!(vm.is_null());
        assert!(last_error().contains(&size.to_string()), "{}", last_error());
    }
}

/// `dmm_vm_attach_device` / `dmm_vm_detach_device`: NULL handle or regions,
/// a bad fd, a region outside guest RAM (named), before `dmm_vm_attach`, an
/// unknown id; then a real device uffd attaches and detaches.
#[test]
fn attach_device_error_paths() {
    let (vm, fd) = new_vm(&config(4 * MIB));
    let name = CString::new("disk1").unwrap();
    let region = dmm_device_region {
        client_addr: 0x7f00_0000_0000,
        offset: 0,
        len: 4 * MIB,
        flags: 0,
    };
    let mut id = 0u32;
    expect(
        unsafe { dmm_vm_attach_device(ptr::null_mut(), name.as_ptr(), 0, &region, 1, &mut id) },
        dmm_result::DMM_ERR_NULL,
        "vm",
    );
    expect(
        unsafe { dmm_vm_attach_device(vm, name.as_ptr(), 0, ptr::null(), 0, &mut id) },
        dmm_result::DMM_ERR_NULL,
        "regions",
    );
    expect(
        unsafe { dmm_vm_attach_device(vm, name.as_ptr(), -1, &region, 1, &mut id) },
        dmm_result::DMM_ERR_INVALID_ARGUMENT,
        "uffd -1",
    );
    let outside = dmm_device_region {
        len: 8 * MIB,
        ..region
    };
    expect(
        unsafe { dmm_vm_attach_device(vm, name.as_ptr(), fd, &outside, 1, &mut id) },
        dmm_result::DMM_ERR_INVALID_ARGUMENT,
        "disk1",
    );
    // Guest RAM not attached yet: no fault sink.
    expect(
        unsafe { dmm_vm_attach_device(vm, name.as_ptr(), fd, &region, 1, &mut id) },
        dmm_result::DMM_ERR_STATE,
        "disk1",
    );
    expect(
        unsafe { dmm_vm_detach_device(vm, 7) },
        dmm_result::DMM_ERR_INVALID_ARGUMENT,
        "7",
    );
    expect(
        unsafe { dmm_vm_detach_device(ptr::null_mut(), 7) },
        dmm_result::DMM_ERR_NULL,
        "vm",
    );
    assert_eq!(id, 0, "nothing written on failure");
    assert_eq!(stats(vm).devices, 0);
    unsafe { dmm_vm_free(vm) };
}
