// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The Linux mechanism: guest RAM is a memfd ([`memfd`]), the caller's
//! `MAP_SHARED` mapping of it is registered with userfaultfd ([`uffd`]), and a
//! fault thread turns `UFFD_EVENT_PAGEFAULT`/`UFFD_EVENT_REMOVE` into calls of
//! a [`FaultSink`]. Fills are `UFFDIO_ZEROPAGE` (4 KiB shmem) or `UFFDIO_COPY`
//! from a zero buffer (hugetlb, where ZEROPAGE is not supported); release is
//! `fallocate(PUNCH_HOLE)`; a page whose content is lost is `UFFDIO_POISON`ed.
//!
//! A fault the sink cannot resolve is retried for about a second, then the
//! process stops ([`crate::error::fail_stop`]): a page is never filled behind
//! the model's back, and a faulting thread never hangs.
//!
//! The fault thread polls the uffd and an eventfd (shutdown). It takes no lock
//! another thread holds while blocking: the attached state is behind a mutex
//! held only to clone an `Arc`.

mod device;
pub mod memfd;
pub mod uffd;

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use self::device::{DeviceThread, DeviceView};
use self::memfd::Memfd;
use self::uffd::{Uffd, UffdError, UffdMsg};
use super::{with_faulter, DeviceRegion, FaultSink, Mechanism};
use crate::vm::PageSize;
use crate::{Error, Result};

/// The registered mapping and its userfaultfd.
#[derive(Debug)]
struct Attached {
    uffd: Uffd,
    /// Registered for write-protect faults too.
    wp: bool,
    host_addr: u64,
    len: u64,
}

#[derive(Debug)]
struct FaultThread {
    stop: OwnedFd,
    handle: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    attached: Option<Arc<Attached>>,
    thread: Option<FaultThread>,
    /// Where faults go (set by attach; device threads deliver there too).
    sink: Option<Arc<dyn FaultSink>>,
    devices: Vec<DeviceThread>,
    last_device: u32,
    shut_down: bool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("attached", &self.attached)
            .field("devices", &self.devices)
            .field("shut_down", &self.shut_down)
            .finish_non_exhaustive()
    }
}

/// memfd + userfaultfd mechanism of one VM.
#[derive(Debug)]
pub struct LinuxMech {
    memfd: Memfd,
    page_size: u64,
    state: Mutex<State>,
    /// Zeros for `UFFDIO_COPY` on hugetlb (one huge page), allocated on attach.
    zeros: Mutex<Option<Arc<Vec<u8>>>>,
    /// Accept a userfaultfd that takes user-mode faults only.
    user_mode_only: bool,
}

impl LinuxMech {
    /// Creates the memfd (`size` checked by the caller). With
    /// `user_mode_only`, a host that refuses kernel-mode userfaultfd faults
    /// is accepted (with a warning) instead of failing [`Mechanism::attach`].
    pub fn new(name: &str, size: u64, page_size: PageSize, user_mode_only: bool) -> Result<Self> {
        Ok(LinuxMech {
            memfd: Memfd::create(name, size, page_size)?,
            page_size: page_size.bytes(),
            state: Mutex::new(State::default()),
            zeros: Mutex::new(None),
            user_mode_only,
        })
    }

    /// Checks that `first..first+count` is inside guest RAM.
    fn check_range(&self, op: &str, first: u64, count: u64) -> Result<()> {
        if first.checked_add(count).map_or(true, |e| e > self.pages()) {
            return Err(Error::InvalidArgument(format!(
                "{op} of pages {first}+{count} outside guest RAM ({} pages)",
                self.pages()
            )));
        }
        Ok(())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attached(&self) -> Result<Arc<Attached>> {
        self.state()
            .attached
            .clone()
            .ok_or_else(|| Error::State("guest RAM is not attached (no userfaultfd)".into()))
    }

    /// Userfaultfd features (offered, enabled) once attached.
    pub fn uffd_features(&self) -> Option<(u64, u64)> {
        self.state()
            .attached
            .as_ref()
            .map(|a| (a.uffd.offered_features(), a.uffd.features()))
    }

    fn fill_range(&self, a: &Attached, start: u64, len: u64) -> std::result::Result<(), UffdError> {
        let ps = self.page_size;
        let end = start + len;
        let mut pos = start;
        if ps == PageSize::Small.bytes() {
            while pos < end {
                match a.uffd.zeropage(pos, end - pos, true) {
                    Ok(()) => return Ok(()),
                    Err(UffdError::Again { done }) if done > 0 => pos += done,
                    // Populated by someone else: keep it.
                    Err(UffdError::Exists { .. }) => pos += ps,
                    Err(e) => return Err(e),
                }
            }
            return Ok(());
        }
        let zeros = self.zeros.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let zeros = zeros.ok_or(UffdError::Gone)?;
        while pos < end {
            // SAFETY: `zeros` is a live buffer of one huge page, and we copy one page.
            match unsafe { a.uffd.copy(pos, zeros.as_ptr(), ps, true) } {
                Ok(()) | Err(UffdError::Exists { .. }) => pos += ps,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Mechanism for LinuxMech {
    fn page_size(&self) -> u64 {
        self.page_size
    }

    fn pages(&self) -> u64 {
        self.memfd.size() / self.page_size
    }

    fn memfd(&self) -> Option<RawFd> {
        Some(self.memfd.raw())
    }

    fn fill_zero(&self, first: u64, count: u64) -> Result<()> {
        let a = self.attached()?;
        if first.checked_add(count).map_or(true, |e| e > self.pages()) {
            return Err(Error::InvalidArgument(format!(
                "fill of pages {first}+{count} outside guest RAM ({} pages)",
                self.pages()
            )));
        }
        let start = a.host_addr + first * self.page_size;
        Ok(self.fill_range(&a, start, count * self.page_size)?)
    }

    fn wake(&self, first: u64, count: u64) -> Result<()> {
        let a = self.attached()?;
        let start = a.host_addr + first.min(self.pages()) * self.page_size;
        let len = count.min(self.pages() - first.min(self.pages())) * self.page_size;
        if len > 0 {
            a.uffd.wake(start, len)?;
        }
        Ok(())
    }

    fn punch(&self, first: u64, count: u64) -> Result<()> {
        self.memfd.punch(first, count)
    }

    fn host_allocated_bytes(&self) -> u64 {
        self.memfd.allocated_bytes().unwrap_or(0)
    }

    fn read_pages(&self, first: u64, count: u64, buf: &mut [u8]) -> Result<()> {
        if buf.len() as u64 != count * self.page_size {
            return Err(Error::InvalidArgument(format!(
                "read of {count} pages into {} bytes",
                buf.len()
            )));
        }
        self.memfd.read_at(first * self.page_size, buf)
    }

    fn can_write_protect(&self) -> bool {
        self.state().attached.as_ref().is_some_and(|a| a.wp)
    }

    fn write_protect(&self, first: u64, count: u64, on: bool) -> Result<()> {
        let a = self.attached()?;
        if !a.wp {
            return Err(Error::Unsupported(
                "userfaultfd write-protect is not available on this host".into(),
            ));
        }
        if first.checked_add(count).map_or(true, |e| e > self.pages()) {
            return Err(Error::InvalidArgument(format!(
                "write-protect of pages {first}+{count} outside guest RAM ({} pages)",
                self.pages()
            )));
        }
        let start = a.host_addr + first * self.page_size;
        let len = count * self.page_size;
        let mut tries = 0;
        loop {
            match a.uffd.writeprotect(start, len, on) {
                // The mappings are changing (a fork, a remap): try again.
                Err(UffdError::Again { .. }) if tries < 1000 => {
                    tries += 1;
                    std::thread::yield_now();
                }
                r => return Ok(r?),
            }
        }
    }

    fn install(&self, pfn: u64, data: &[u8]) -> Result<bool> {
        let a = self.attached()?;
        if pfn >= self.pages() || data.len() as u64 != self.page_size {
            return Err(Error::InvalidArgument(format!(
                "install of {} bytes at pfn {pfn} (guest RAM {} pages of {})",
                data.len(),
                self.pages(),
                self.page_size
            )));
        }
        let dst = a.host_addr + pfn * self.page_size;
        let mut tries = 0;
        loop {
            // SAFETY: `data` is a live buffer of one page.
            match unsafe { a.uffd.copy(dst, data.as_ptr(), self.page_size, true) } {
                Ok(()) => return Ok(true),
                Err(UffdError::Exists { .. }) => return Ok(false),
                Err(UffdError::Again { .. }) if tries < 1000 => {
                    tries += 1;
                    std::thread::yield_now();
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn is_populated(&self, pfn: u64) -> bool {
        self.memfd.is_populated(pfn)
    }

    fn can_poison(&self) -> bool {
        self.state()
            .attached
            .as_ref()
            .is_some_and(|a| a.uffd.has_poison())
    }

    fn poison(&self, first: u64, count: u64) -> Result<()> {
        let a = self.attached()?;
        if !a.uffd.has_poison() {
            return Err(Error::Unsupported(
                "UFFDIO_POISON is not available on this host (Linux 6.6+)".into(),
            ));
        }
        self.check_range("poison", first, count)?;
        let start = a.host_addr + first * self.page_size;
        let len = count * self.page_size;
        let mut tries = 0;
        let mut unprotected = false;
        loop {
            match a.uffd.poison(start, len, true) {
                Err(UffdError::Again { .. }) if tries < 1000 => {
                    tries += 1;
                    std::thread::yield_now();
                }
                // A swapped-out page keeps the uffd-wp marker of its
                // swap-out (measured on 6.18: EEXIST); drop it, quietly.
                Err(UffdError::Exists { .. }) if a.wp && !unprotected => {
                    a.uffd.unprotect_dontwake(start, len)?;
                    unprotected = true;
                }
                r => return Ok(r?),
            }
        }
    }

    fn clear(&self, first: u64, count: u64) -> Result<()> {
        self.check_range("clear", first, count)?;
        // A hole punch keeps the pte marker of UFFDIO_POISON; a fill may
        // replace it (measured on 6.18: UFFDIO_ZEROPAGE over the marker, then
        // the punch, and the next touch is a MISSING fault). No MADV_DONTNEED:
        // its removal event waits until the fault thread reads it, and a
        // release or a reset must not depend on the fault thread.
        if self.attached().is_ok() {
            self.fill_zero(first, count)?;
        }
        self.memfd.punch(first, count)
    }

    unsafe fn attach(&self, host_addr: *mut u8, len: u64, sink: Arc<dyn FaultSink>) -> Result<()> {
        let mut st = self.state();
        if st.shut_down {
            return Err(Error::State("attach after shutdown".into()));
        }
        if st.attached.is_some() {
            return Err(Error::State("guest RAM is already attached".into()));
        }
        let addr = host_addr as u64;
        if host_addr.is_null() || addr % self.page_size != 0 {
            return Err(Error::InvalidArgument(format!(
                "host address {host_addr:p} is not aligned to the page size {}",
                self.page_size
            )));
        }
        if len != self.memfd.size() {
            return Err(Error::InvalidArgument(format!(
                "mapping length {len} differs from guest RAM size {}",
                self.memfd.size()
            )));
        }
        if self.page_size != PageSize::Small.bytes() {
            let zeros = Arc::new(vec![0u8; self.page_size as usize]);
            *self.zeros.lock().unwrap_or_else(|p| p.into_inner()) = Some(zeros);
        }
        let uffd = Uffd::open(self.user_mode_only)?;
        let wp = uffd.has_wp();
        uffd.register(addr, len, wp)?;
        let attached = Arc::new(Attached {
            uffd,
            wp,
            host_addr: addr,
            len,
        });
        // SAFETY: eventfd with valid flags returns a new fd or -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            let e = Error::last_os("eventfd");
            let _ = attached.uffd.unregister(addr, len);
            return Err(e);
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let stop = unsafe { OwnedFd::from_raw_fd(raw) };
        let stop_raw = stop.as_raw_fd();
        let thread_attached = attached.clone();
        let page_size = self.page_size;
        st.sink = Some(sink.clone());
        let handle = crate::thread::spawn("dmm-fault", move || {
            fault_loop(&thread_attached, page_size, stop_raw, &*sink);
        })
        .map_err(|source| Error::Os {
            op: "spawn fault thread",
            source,
        })?;
        st.attached = Some(attached);
        st.thread = Some(FaultThread { stop, handle });
        Ok(())
    }

    fn punch_read(&self, first: u64, count: u64, buf: &mut [u8]) -> (u64, Option<Error>) {
        if let Err(e) = self.check_range("punch", first, count) {
            return (0, Some(e));
        }
        if buf.len() as u64 != count * self.page_size {
            let e = Error::InvalidArgument(format!(
                "punch and read of {count} pages into {} bytes",
                buf.len()
            ));
            return (0, Some(e));
        }
        self.memfd.punch_read(first, count, buf)
    }

    fn attach_device(&self, name: &str, uffd: OwnedFd, regions: &[DeviceRegion]) -> Result<u32> {
        let view = DeviceView::new(name, uffd, regions, self.page_size, self.memfd.size())?;
        let mut st = self.state();
        if st.shut_down {
            return Err(Error::State("attach_device after shutdown".into()));
        }
        let Some(sink) = st.sink.clone() else {
            return Err(Error::State(format!(
                "device '{name}': guest RAM is not attached (no userfaultfd)"
            )));
        };
        st.last_device = st.last_device.wrapping_add(1).max(1);
        let id = st.last_device;
        st.devices.push(DeviceThread::start(id, view, sink)?);
        Ok(id)
    }

    fn detach_device(&self, id: u32) -> Result<()> {
        let thread = {
            let mut st = self.state();
            let Some(i) = st.devices.iter().position(|d| d.id == id) else {
                return Err(Error::InvalidArgument(format!("no device {id} attached")));
            };
            st.devices.swap_remove(i)
        };
        log::info!("device '{}' detached", thread.view.name);
        thread.stop();
        Ok(())
    }

    fn devices(&self) -> usize {
        self.state().devices.len()
    }

    fn shutdown(&self) {
        let (thread, devices) = {
            let mut st = self.state();
            st.shut_down = true;
            st.sink = None;
            (st.thread.take(), std::mem::take(&mut st.devices))
        };
        for d in devices {
            d.stop();
        }
        if let Some(t) = thread {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our eventfd.
            unsafe { libc::write(t.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
            // A panic there aborted the process already (`crate::thread`).
            let _ = t.handle.join();
        }
        let attached = self.state().attached.take();
        if let Some(a) = attached {
            if let Err(e) = a.uffd.unregister(a.host_addr, a.len) {
                // The mapping may be gone already (munmap unregisters it).
                log::debug!("unregister: {e}");
            }
            // Dropping the last Arc closes the uffd, waking any faulter left.
        }
    }
}

fn is_eagain(e: &Error) -> bool {
    matches!(e, Error::Os { source, .. } if source.raw_os_error() == Some(libc::EAGAIN))
}

/// Reads what is pending: page faults are queued, removals handled at once.
fn drain(a: &Attached, ps: u64, sink: &dyn FaultSink, queue: &mut VecDeque<Fault>) -> Result<()> {
    let mut buf = [UffdMsg::default(); 64];
    loop {
        let n = a.uffd.read(&mut buf)?;
        for m in &buf[..n] {
            match m.event {
                uffd::EVENT_PAGEFAULT => {
                    let (flags, addr) = (m.arg0, m.arg1);
                    match addr.checked_sub(a.host_addr).filter(|off| *off < a.len) {
                        Some(off) => queue.push_back(Fault {
                            pfn: off / ps,
                            write: flags & uffd::PAGEFAULT_FLAG_WRITE != 0,
                            wp: flags & uffd::PAGEFAULT_FLAG_WP != 0,
                            tid: m.thread_id(),
                        }),
                        None => sink.on_ignored(),
                    }
                }
                uffd::EVENT_REMOVE => {
                    let (start, end) = (m.arg0.max(a.host_addr), m.arg1.min(a.host_addr + a.len));
                    if start < end {
                        // Only whole pages are gone.
                        let first = (start - a.host_addr).div_ceil(ps);
                        let last = (end - a.host_addr) / ps;
                        if last > first {
                            sink.on_remove(first, last - first);
                        }
                    }
                }
                _ => sink.on_ignored(),
            }
        }
        if n < buf.len() {
            return Ok(());
        }
    }
}

/// One page fault read from the uffd.
#[derive(Debug, Clone, Copy)]
struct Fault {
    pfn: u64,
    write: bool,
    /// A write to a write-protected page (swap-out or zero reclaim under way).
    wp: bool,
    /// The faulting thread (0 without `UFFD_FEATURE_THREAD_ID`).
    tid: u32,
}

/// Tries of a fault whose handling failed (other than EAGAIN) before the
/// process stops.
const FAULT_TRIES: u32 = 50;
/// Pause between two tries.
const FAULT_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// What a fault thread's wait on its uffd and stop eventfd found.
enum Woken {
    /// Events to read on the uffd, or the timeout passed.
    Events,
    /// A signal: wait again.
    Interrupted,
    /// The stop eventfd was written.
    Stop,
    /// The uffd was closed (POLLERR/POLLHUP).
    Closed,
    /// poll failed.
    Failed(std::io::Error),
}

/// Waits up to `timeout` ms (-1: no limit) for events on `uffd` or a stop.
fn wait_for_faults(uffd: RawFd, stop: RawFd, timeout: i32) -> Woken {
    let mut fds = [
        libc::pollfd {
            fd: uffd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: `fds` is a live array of two pollfds.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EINTR) {
            Woken::Interrupted
        } else {
            Woken::Failed(e)
        };
    }
    if fds[1].revents != 0 {
        Woken::Stop
    } else if fds[0].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
        Woken::Closed
    } else {
        Woken::Events
    }
}

/// The fault thread: MISSING faults and write-protect faults.
fn fault_loop(a: &Attached, ps: u64, stop: RawFd, sink: &dyn FaultSink) {
    let mut queue: VecDeque<Fault> = VecDeque::new();
    let mut retries = 0u32;
    let mut failures = 0u32;
    loop {
        // Block only with nothing queued; a retried fault still sees shutdown.
        let timeout = if queue.is_empty() { -1 } else { 0 };
        match wait_for_faults(a.uffd.raw(), stop, timeout) {
            Woken::Events => {}
            Woken::Interrupted => continue,
            Woken::Stop => return,
            Woken::Closed => {
                log::error!("fault thread: userfaultfd closed");
                return;
            }
            Woken::Failed(e) => {
                log::error!("fault thread: poll: {e}");
                return;
            }
        }
        if let Err(e) = drain(a, ps, sink, &mut queue) {
            log::error!("fault thread: {e}");
            return;
        }
        while let Some(f) = queue.pop_front() {
            let pfn = f.pfn;
            let r = with_faulter(f.tid, || {
                if f.wp {
                    sink.on_wp_fault(pfn)
                } else {
                    sink.on_fault(pfn, f.write)
                }
            });
            match r {
                Ok(()) => {
                    retries = 0;
                    failures = 0;
                }
                Err(e) if is_eagain(&e) => {
                    // Mappings are changing: read the pending events first.
                    queue.push_front(f);
                    retries += 1;
                    if retries > 100 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    break;
                }
                Err(Error::State(msg)) => {
                    log::info!("fault thread: stopping: {msg}");
                    return;
                }
                Err(e) => {
                    // Never a page filled behind the model, never a hang:
                    // try again for a while, then stop the process.
                    failures += 1;
                    let kind = if f.wp { "write-protect fault" } else { "fault" };
                    if failures >= FAULT_TRIES {
                        crate::error::fail_stop(&format!(
                            "{kind} on guest page 0x{:x} (thread {}) cannot be resolved \
                             after {FAULT_TRIES} tries: {e}",
                            pfn * ps,
                            f.tid
                        ));
                    }
                    log::warn!(
                        "{kind} on guest page 0x{:x}: {e}; trying again ({failures}/{FAULT_TRIES})",
                        pfn * ps
                    );
                    queue.push_front(f);
                    std::thread::sleep(FAULT_RETRY_PAUSE);
                    break;
                }
            }
        }
    }
}
