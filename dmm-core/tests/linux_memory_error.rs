// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Memory errors on real memory (memfd + userfaultfd, no QEMU): a swapped
//! page whose slot is corrupt is poisoned (`UFFDIO_POISON`): the thread
//! that reads it gets SIGBUS at that page, the other pages are intact, and
//! the page is usable again once released or cleared. With an embedder's
//! handler, the handler is told the reading thread's id.
//!
//! Reads go through [`probe`]: a load whose SIGBUS the handler turns into
//! an error (it moves the saved instruction pointer to a resume label).

#![allow(clippy::unwrap_used)]
#![cfg(target_arch = "x86_64")]

#[path = "common/mod.rs"]
mod common;

use std::arch::asm;
use std::cell::Cell;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};

use common::{st_blocks_bytes, swap_guest, Mapped};
use dmm::model::PageState;
use dmm::vm::{
    GuestRange, HandlerAnswer, MemoryError, MemoryErrorHandler, MemoryErrorReason, PageSize,
    PolicySet, ReleaseReason, Vm, VmConfig,
};

const PS: u64 = 4096;
const MIB: u64 = 1 << 20;

thread_local! {
    /// Where the SIGBUS handler resumes a [`probe`] of this thread (0: none).
    static RESUME: Cell<usize> = const { Cell::new(0) };
}
static SIGBUS_CODE: AtomicI32 = AtomicI32::new(0);
static SIGBUS_ADDR: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let resume = RESUME.with(Cell::get);
    // SAFETY: the kernel passes a valid siginfo and ucontext to an
    // SA_SIGINFO handler.
    unsafe {
        if resume == 0 {
            // Not a probe: die of it, as without a handler.
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
            return;
        }
        SIGBUS_CODE.store((*info).si_code, Ordering::SeqCst);
        SIGBUS_ADDR.store((*info).si_addr() as usize, Ordering::SeqCst);
        let uc = ctx.cast::<libc::ucontext_t>();
        (*uc).uc_mcontext.gregs[libc::REG_RIP as usize] = resume as i64;
    }
}

fn install_sigbus_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a plain sigaction with an SA_SIGINFO handler.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            assert_eq!(libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()), 0);
        }
    });
}

/// Reads the word at `p`; a SIGBUS there is `Err((si_code, si_addr))`.
fn probe(p: *const u64) -> Result<u64, (i32, usize)> {
    install_sigbus_handler();
    let slot = RESUME.with(Cell::as_ptr);
    let value: u64;
    let failed: u64;
    // SAFETY: `p` points into a live mapping; a SIGBUS on the load resumes
    // at label 2 (the handler sets RIP), which reports the failure.
    unsafe {
        asm!(
            "lea {t}, [rip + 2f]",
            "mov qword ptr [{slot}], {t}",
            "xor {f:e}, {f:e}",
            "mov {v}, qword ptr [{p}]",
            "jmp 3f",
            "2:",
            "mov {f:e}, 1",
            "xor {v:e}, {v:e}",
            "3:",
            "mov qword ptr [{slot}], 0",
            t = out(reg) _,
            slot = in(reg) slot,
            p = in(reg) p,
            v = out(reg) value,
            f = out(reg) failed,
            options(nostack),
        );
    }
    if failed != 0 {
        return Err((
            SIGBUS_CODE.load(Ordering::SeqCst),
            SIGBUS_ADDR.load(Ordering::SeqCst),
        ));
    }
    Ok(value)
}

/// A memory error's SIGBUS: `BUS_MCEERR_AR`, or `BUS_ADRERR` where the host
/// kernel has no `CONFIG_MEMORY_FAILURE` (this machine's: measured).
fn is_memory_error(code: i32) -> bool {
    const BUS_ADRERR: i32 = 2;
    const BUS_MCEERR_AR: i32 = 4;
    code == BUS_MCEERR_AR || code == BUS_ADRERR
}

fn pattern(pfn: u64, i: u64) -> u64 {
    (pfn << 32) | (i * 0x9E37) | 1
}

fn fill(map: &Mapped, pages: u64, ps: u64) {
    for pfn in 0..pages {
        let p = map.page_ptr(pfn, ps);
        for i in 0..ps / 8 {
            // SAFETY: inside the mapping.
            unsafe { p.add(i as usize).write_volatile(pattern(pfn, i)) };
        }
    }
}

fn intact(map: &Mapped, pfn: u64, ps: u64) -> bool {
    let p = map.page_ptr(pfn, ps);
    (0..ps / 8).all(|i| probe(p.wrapping_add(i as usize)) == Ok(pattern(pfn, i)))
}

/// Overwrites the swap slot of the page at `gpa` through the unlinked file.
fn corrupt(vm: &Vm, dir: &std::path::Path, gpa: u64) {
    let info = vm.page_info(gpa).unwrap();
    assert_eq!(info.state, PageState::Swapped, "{info:?}");
    let slot = info.slot.unwrap().location;
    let want = format!("{} (deleted)", dir.join("swap").display());
    let fd = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == want))
        .unwrap_or_else(|| panic!("{want} is not open"));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(fd.path())
        .unwrap();
    f.write_all_at(&vec![0xee; slot.len as usize], slot.offset)
        .unwrap();
}

fn swap_all(vm: &Vm, pages: u64) {
    vm.set_pool_size(0).unwrap();
    vm.run_policies();
    assert_eq!(vm.stats().swapped_pages, pages, "{:?}", vm.stats());
}

#[test]
fn corrupt_slot_sigbuses_the_reader_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let pages = 256;
    let map = swap_guest(dir.path(), pages * PS, "swap", false, "memerr-linux");
    let vm = map.vm.clone();
    let (offered, enabled) = vm.uffd_features().unwrap();
    if offered & (1 << 14) == 0 {
        eprintln!("skipped: no UFFD_FEATURE_POISON (Linux 6.6+) on this host");
        return;
    }
    assert_ne!(enabled & (1 << 14), 0, "POISON offered but not enabled");
    fill(&map, pages, PS);
    swap_all(&vm, pages);
    corrupt(&vm, dir.path(), 17 * PS);
    let p17 = map.page_ptr(17, PS);
    let (code, addr) = probe(p17.wrapping_add(3)).unwrap_err();
    assert!(is_memory_error(code), "si_code {code}");
    assert_eq!(
        addr & !(PS as usize - 1),
        p17 as usize,
        "SIGBUS names the page"
    );
    // Every access of it, write too, is the error again; no zero page.
    assert!(probe(p17).is_err());
    let s = vm.stats();
    assert_eq!(
        (s.memory_errors, s.poisoned_pages, s.swap_corrupt),
        (1, 1, 1),
        "{s:?}"
    );
    assert_eq!(vm.page_states(17, 1).unwrap()[0], PageState::Poisoned);
    for pfn in (0..pages).filter(|&p| p != 17) {
        assert!(intact(&map, pfn, PS), "pfn {pfn}");
    }
    // Released by the guest: usable again, through userfaultfd.
    vm.set_pool_size(pages * PS).unwrap();
    let out = vm
        .release(
            &[GuestRange {
                gpa: 17 * PS,
                len: PS,
            }],
            ReleaseReason::Balloon,
        )
        .unwrap();
    assert_eq!(out.pages, 1);
    let faults = vm.stats().faults;
    assert_eq!(probe(p17), Ok(0));
    // SAFETY: inside the mapping.
    unsafe { p17.write_volatile(42) };
    assert_eq!(probe(p17), Ok(42));
    assert!(
        vm.stats().faults > faults,
        "the page faulted through DMM again"
    );
}

#[test]
fn reset_clears_poisoned_pages() {
    let dir = tempfile::tempdir().unwrap();
    let pages = 64;
    let map = swap_guest(dir.path(), pages * PS, "swap", false, "memerr-reset");
    let vm = map.vm.clone();
    if vm.uffd_features().unwrap().0 & (1 << 14) == 0 {
        eprintln!("skipped: no UFFD_FEATURE_POISON");
        return;
    }
    fill(&map, pages, PS);
    swap_all(&vm, pages);
    for pfn in [2, 40] {
        corrupt(&vm, dir.path(), pfn * PS);
        assert!(probe(map.page_ptr(pfn, PS)).is_err());
    }
    vm.set_pool_size(pages * PS).unwrap();
    assert_eq!(vm.clear_memory_errors().unwrap(), 2);
    for pfn in [2, 40] {
        assert_eq!(vm.page_states(pfn, 1).unwrap()[0], PageState::Unpopulated);
        assert_eq!(probe(map.page_ptr(pfn, PS)), Ok(0), "pfn {pfn}");
    }
    assert!(intact(&map, 3, PS));
    let s = vm.stats();
    assert_eq!((s.memory_errors, s.poisoned_pages), (2, 0), "{s:?}");
}

/// Records the memory errors it is asked about; answers `Injected`.
struct Injector(Mutex<Vec<MemoryError>>);

impl MemoryErrorHandler for Injector {
    fn memory_error(&self, err: &MemoryError) -> HandlerAnswer {
        self.0.lock().unwrap().push(*err);
        HandlerAnswer::Injected
    }
}

#[test]
fn handler_is_told_the_faulting_thread() {
    let dir = tempfile::tempdir().unwrap();
    let pages = 64;
    let map = swap_guest(dir.path(), pages * PS, "swap", false, "memerr-handler");
    let vm = map.vm.clone();
    let rec = Arc::new(Injector(Mutex::new(Vec::new())));
    vm.set_memory_error_handler(Some(rec.clone()));
    fill(&map, pages, PS);
    swap_all(&vm, pages);
    corrupt(&vm, dir.path(), 9 * PS);
    let addr = map.page_ptr(9, PS) as usize;
    let (tid, word) = std::thread::spawn(move || {
        // SAFETY: gettid has no arguments.
        let tid = unsafe { libc::gettid() } as u32;
        (tid, probe(addr as *const u64))
    })
    .join()
    .unwrap();
    // The handler said it told the guest: the reader gets zeros.
    assert_eq!(word, Ok(0));
    let seen = rec.0.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].offset, seen[0].len, seen[0].reason),
        (9 * PS, PS, MemoryErrorReason::SlotCorrupt)
    );
    let threads_offered = vm.uffd_features().unwrap().0 & (1 << 8) != 0;
    if threads_offered {
        assert_eq!(seen[0].thread_id, tid, "the reader's thread id");
    }
    assert_eq!(vm.page_states(9, 1).unwrap()[0], PageState::Poisoned);
    assert_eq!(vm.stats().memory_errors, 1);
}

/// 2 MiB pages: the same, where free hugepages exist
/// (`echo 8 > /proc/sys/vm/nr_hugepages`).
#[test]
fn hugetlb_corrupt_slot_sigbuses_the_reader() {
    let free: u64 =
        std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
            .map(|s| s.trim().parse().unwrap_or(0))
            .unwrap_or(0);
    if free < 8 {
        eprintln!("skipped: {free} free 2 MiB hugepages (need 8)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let huge = 2 * MIB;
    let pages = 4;
    let vm = Vm::new_linux(VmConfig {
        page_size: PageSize::Huge2M,
        swap_path: Some(dir.path().join("swap")),
        policies: PolicySet::parse("swap").unwrap(),
        ..VmConfig::new("memerr-huge", pages * huge)
    })
    .unwrap();
    let map = Mapped::new(vm.clone());
    if vm.uffd_features().unwrap().0 & (1 << 14) == 0 {
        eprintln!("skipped: no UFFD_FEATURE_POISON");
        return;
    }
    fill(&map, pages, huge);
    swap_all(&vm, pages);
    corrupt(&vm, dir.path(), huge);
    let p1 = map.page_ptr(1, huge);
    let (code, addr) = probe(p1.wrapping_add(1000)).unwrap_err();
    assert!(is_memory_error(code), "si_code {code}");
    assert_eq!(addr & !(huge as usize - 1), p1 as usize);
    for pfn in [0, 2, 3] {
        assert!(intact(&map, pfn, huge), "pfn {pfn}");
    }
    vm.set_pool_size(pages * huge).unwrap();
    assert_eq!(vm.clear_memory_errors().unwrap(), 1);
    assert_eq!(probe(p1), Ok(0));
    assert_eq!(st_blocks_bytes(vm.memfd().unwrap()) % huge, 0);
}
