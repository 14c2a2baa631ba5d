// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The vhost-user side of the balloon: features, config space and the
//! queue handlers. Implements `VhostUserBackend` (the `&self` flavour) so
//! that GET_CONFIG/SET_CONFIG on the handler thread never wait for a queue
//! being processed (which may be waiting for libdmm).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use log::{debug, warn};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Backend, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::timerfd::TimerFd;

use crate::balloon::{self, features, Desc, GuestRange, HintChain, QueueRole};
use crate::pins::{self, PinTable};
use crate::sink::{Reason, ReleaseSink};
use crate::state::{Notice, Shared};

/// Number of virtqueues: inflate, deflate, stats, free page hint, reporting.
pub const NUM_QUEUES: usize = 5;
/// Queue size we accept.
pub const QUEUE_SIZE: usize = 256;
/// Device event id of the stats timer (ids up to NUM_QUEUES are the library's).
pub const STATS_TIMER_EVENT: u16 = NUM_QUEUES as u16 + 1;

/// Errors of the backend.
#[derive(Debug, thiserror::Error)]
pub enum VhuBalloonError {
    /// An event id we never registered.
    #[error("unexpected device event {0}")]
    UnknownEvent(u16),
    /// A queue event before SET_MEM_TABLE.
    #[error("queue event before the guest memory table")]
    NoMemory,
    /// The stats timer failed.
    #[error("stats timer: {0}")]
    Timer(vmm_sys_util::errno::Error),
    /// Queue access failed.
    #[error("virtqueue: {0}")]
    Queue(virtio_queue::Error),
    /// Signalling the guest failed.
    #[error("cannot signal used queue: {0}")]
    Signal(io::Error),
}

impl From<VhuBalloonError> for io::Error {
    fn from(e: VhuBalloonError) -> Self {
        io::Error::other(e)
    }
}

#[derive(Debug, Default)]
struct Inner {
    acked_features: u64,
    event_idx: bool,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    /// Head of the stats buffer the driver gave us, held until the next poll.
    stats_head: Option<u16>,
}

/// The balloon backend.
pub struct VhuBalloon {
    shared: Arc<Shared>,
    sink: Arc<dyn ReleaseSink>,
    deflate_on_oom: bool,
    /// Offer free page hinting (DMM only: `with_free_page_hint`).
    free_page_hint: bool,
    inner: Mutex<Inner>,
    timer: Arc<Mutex<TimerFd>>,
    /// Vring pages pinned at libdmm, by queue (held while the request is sent).
    pins: Mutex<PinTable>,
}

impl std::fmt::Debug for VhuBalloon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhuBalloon")
            .field("deflate_on_oom", &self.deflate_on_oom)
            .field("free_page_hint", &self.free_page_hint)
            .finish_non_exhaustive()
    }
}

impl VhuBalloon {
    /// Creates the backend; `stats_interval` zero disables stats polling.
    pub fn new(
        shared: Arc<Shared>,
        sink: Arc<dyn ReleaseSink>,
        deflate_on_oom: bool,
        stats_interval: Duration,
    ) -> io::Result<Self> {
        let mut timer = TimerFd::new()?;
        set_nonblocking(timer.as_raw_fd())?;
        let timer = if stats_interval.is_zero() {
            Arc::new(Mutex::new(timer))
        } else {
            timer.reset(stats_interval, Some(stats_interval))?;
            let timer = Arc::new(Mutex::new(timer));
            shared.set_stats_timer(timer.clone(), stats_interval);
            timer
        };
        Ok(VhuBalloon {
            shared,
            sink,
            deflate_on_oom,
            free_page_hint: false,
            inner: Mutex::new(Inner::default()),
            timer,
            pins: Mutex::new(PinTable::default()),
        })
    }

    /// Offers `VIRTIO_BALLOON_F_FREE_PAGE_HINT` (only to a sink that
    /// checks hinted pages: libdmm's).
    pub fn with_free_page_hint(mut self, on: bool) -> Self {
        self.free_page_hint = on;
        self
    }

    /// The stats timer, to register on the daemon's epoll as [`STATS_TIMER_EVENT`].
    pub fn timer_fd(&self) -> i32 {
        self.timer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_raw_fd()
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pin_table(&self) -> MutexGuard<'_, PinTable> {
        self.pins.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pins the pages of every ready ring whose addresses or size changed
    /// since its last pin (first use, new SET_VRING_ADDR after a reconnect),
    /// before the device touches them. The library has no hook on
    /// SET_VRING_ADDR or SET_VRING_ENABLE, so this runs at each event; an
    /// unchanged ring costs a comparison. A failed pin is retried next event.
    fn pin_rings(&self, vrings: &[VringRwLock]) {
        let mut table = self.pin_table();
        for (q, vring) in vrings.iter().enumerate() {
            let ranges = {
                let state = vring.get_ref();
                let queue = state.get_queue();
                if !queue.ready() {
                    continue;
                }
                pins::ring_ranges(
                    queue.desc_table(),
                    queue.avail_ring(),
                    queue.used_ring(),
                    queue.size(),
                )
            };
            let Some(change) = table.set(q, ranges) else {
                continue;
            };
            if !change.unpin.is_empty() {
                if let Err(e) = self.sink.unpin(&change.unpin) {
                    self.pin_failed(&format!("unpin of old queue {q} ring pages"), &e);
                }
            }
            if !change.pin.is_empty() {
                if let Err(e) = self.sink.pin(&change.pin) {
                    table.forget(q);
                    self.pin_failed(&format!("pin of queue {q} ring pages"), &e);
                }
            }
        }
    }

    /// Unpins `ranges` given up by `what`.
    fn unpin(&self, what: &str, ranges: &[GuestRange]) {
        if ranges.is_empty() {
            return;
        }
        if let Err(e) = self.sink.unpin(ranges) {
            self.pin_failed(&format!("unpin of {what}"), &e);
        }
    }

    /// Counts a failed pin/unpin and warns (rate limited to powers of two).
    fn pin_failed(&self, what: &str, e: &crate::sink::SinkError) {
        let mut st = self.shared.state();
        st.counters.pin_errors += 1;
        if st.counters.pin_errors.is_power_of_two() {
            warn!("{what} failed: {e} ({} so far)", st.counters.pin_errors);
        }
    }

    /// Processes every available chain of `vring` as `role`; returns how many.
    fn process_queue(
        &self,
        role: QueueRole,
        vring: &VringRwLock,
    ) -> Result<usize, VhuBalloonError> {
        let mem = self
            .inner()
            .mem
            .clone()
            .ok_or(VhuBalloonError::NoMemory)?
            .memory();
        let mut heads = Vec::new();
        let mut gpas = Vec::new();
        let mut reports = Vec::new();
        let mut hint_ended = None;
        let mut popped = 0;
        loop {
            let chain = vring.get_mut().get_queue_mut().pop_descriptor_chain(&*mem);
            let Some(chain) = chain else { break };
            popped += 1;
            let head = chain.head_index();
            let descs: Vec<Desc> = chain.map(Desc::from).collect();
            let mut st = self.shared.state();
            let c = &mut st.counters;
            let (bad, inval) = (c.bad_descriptors, c.invalid_pfns);
            match role {
                QueueRole::Inflate | QueueRole::Deflate => {
                    gpas.extend(balloon::parse_pfn_chain(&*mem, &descs, c))
                }
                QueueRole::Reporting => {
                    reports.extend(balloon::parse_report_chain(&*mem, &descs, c))
                }
                QueueRole::FreePageHint => {
                    match balloon::parse_hint_chain(&*mem, &descs, c) {
                        HintChain::CmdId(id) => {
                            let h = &mut st.hint;
                            if h.round == Some(id) {
                                h.started = true;
                            } else if id == balloon::HINT_CMD_ID_STOP && h.started {
                                let round = h.round.take().unwrap_or_default();
                                h.started = false;
                                hint_ended = Some((round, std::mem::take(&mut h.pages)));
                                st.counters.hint_rounds += 1;
                            }
                        }
                        HintChain::Block(r) if st.hint.started => {
                            st.hint.pages += r.pages();
                            st.counters.pages_hinted += r.pages();
                            reports.push(r);
                        }
                        HintChain::Block(_) => st.counters.stale_hints += 1,
                        HintChain::Bad => {}
                    }
                    heads.push(head);
                    continue;
                }
                QueueRole::Stats => {
                    if let Some(values) = balloon::parse_stats_chain(&*mem, &descs, c) {
                        debug!(
                            "guest statistics: available-memory {:?} MiB",
                            values.get("available-memory").map(|v| v >> 20)
                        );
                        st.guest_stats = values.clone();
                        drop(st);
                        self.shared.notify(Notice::GuestStats(values));
                    }
                    // Held until the timer asks for fresh numbers. A second
                    // buffer (a driver bug) returns the older one now, if it
                    // is still outstanding on this ring (see `outstanding`).
                    let old = self.inner().stats_head.replace(head);
                    if let Some(old) = old.filter(|_| outstanding(vring) >= 2) {
                        heads.push(old);
                    }
                    continue;
                }
            }
            if c.bad_descriptors != bad || c.invalid_pfns != inval {
                log_bad(role, head, c.bad_descriptors + c.invalid_pfns);
            }
            heads.push(head);
        }
        match role {
            QueueRole::Inflate => self.release(
                &mem,
                Reason::Balloon,
                balloon::coalesce(&mut gpas),
                heads.len(),
            ),
            QueueRole::Reporting => self.release(
                &mem,
                Reason::Report,
                balloon::coalesce_ranges(&mut reports),
                heads.len(),
            ),
            QueueRole::FreePageHint => self.release(
                &mem,
                Reason::Hint,
                balloon::coalesce_ranges(&mut reports),
                0,
            ),
            QueueRole::Deflate => self.reclaim(&mem, balloon::coalesce(&mut gpas), heads.len()),
            QueueRole::Stats => {}
        }
        self.complete(vring, &heads)?;
        if let Some((round, pages)) = hint_ended {
            debug!("free page hint round {round} ended: {pages} pages");
            self.shared.notify(Notice::HintDone { round, pages });
        }
        Ok(popped)
    }

    fn release(
        &self,
        mem: &GuestMemoryMmap,
        reason: Reason,
        ranges: Vec<GuestRange>,
        chains: usize,
    ) {
        let pages: u64 = ranges.iter().map(GuestRange::pages).sum();
        let res = if ranges.is_empty() {
            Ok(0)
        } else {
            self.sink.release(mem, reason, &ranges)
        };
        let mut st = self.shared.state();
        let c = &mut st.counters;
        match reason {
            Reason::Balloon => {
                c.inflate_chains += chains as u64;
                c.pages_inflated += pages;
            }
            Reason::Report => {
                c.report_chains += chains as u64;
                c.pages_reported += pages;
            }
            // Counted as they arrive (`process_queue`).
            Reason::Hint => {}
        }
        match res {
            Ok(n) => c.pages_released += n,
            Err(e) => {
                c.release_errors += 1;
                warn!("release of {pages} pages ({}) failed: {e}", reason.as_str());
            }
        }
    }

    fn reclaim(&self, mem: &GuestMemoryMmap, ranges: Vec<GuestRange>, chains: usize) {
        let pages: u64 = ranges.iter().map(GuestRange::pages).sum();
        let res = if ranges.is_empty() {
            Ok(0)
        } else {
            self.sink.reclaim_back(mem, &ranges)
        };
        let mut st = self.shared.state();
        st.counters.deflate_chains += chains as u64;
        st.counters.pages_deflated += pages;
        if let Err(e) = res {
            st.counters.release_errors += 1;
            warn!("reclaim-back of {pages} pages failed: {e}");
        }
    }

    /// Returns `heads` to the driver (length 0: the device writes nothing) and notifies it.
    fn complete(&self, vring: &VringRwLock, heads: &[u16]) -> Result<(), VhuBalloonError> {
        if heads.is_empty() {
            return Ok(());
        }
        for &h in heads {
            vring.add_used(h, 0).map_err(VhuBalloonError::Queue)?;
        }
        if vring.needs_notification().map_err(VhuBalloonError::Queue)? {
            vring.signal_used_queue().map_err(VhuBalloonError::Signal)?;
        }
        Ok(())
    }

    fn handle_queue(&self, index: usize, vrings: &[VringRwLock]) -> Result<(), VhuBalloonError> {
        let (acked, event_idx) = {
            let i = self.inner();
            (i.acked_features, i.event_idx)
        };
        let (Some(role), Some(vring)) = (balloon::queue_role(index, acked), vrings.get(index))
        else {
            debug!("kick on queue {index}, which has no role under features {acked:#x}");
            return Ok(());
        };
        if !event_idx {
            return self.process_queue(role, vring).map(|_| ());
        }
        loop {
            vring
                .disable_notification()
                .map_err(VhuBalloonError::Queue)?;
            let popped = self.process_queue(role, vring)?;
            // A guest that moves avail idx past what the ring holds makes
            // enable_notification report work that cannot be popped: stop
            // instead of spinning, until the next kick.
            if !vring
                .enable_notification()
                .map_err(VhuBalloonError::Queue)?
                || popped == 0
            {
                return Ok(());
            }
        }
    }

    fn handle_timer(&self, vrings: &[VringRwLock]) -> Result<(), VhuBalloonError> {
        // Non-blocking: a reset from another thread (a new target, the
        // balloon filling) between epoll and this read leaves nothing to read.
        match self
            .timer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .wait()
        {
            Ok(_) => {}
            Err(e) if e.errno() == libc::EAGAIN => return Ok(()),
            Err(e) => return Err(VhuBalloonError::Timer(e)),
        }
        let (acked, head) = {
            let mut i = self.inner();
            (i.acked_features, i.stats_head.take())
        };
        let Some(head) = head else { return Ok(()) };
        let stats_index =
            (0..NUM_QUEUES).find(|&q| balloon::queue_role(q, acked) == Some(QueueRole::Stats));
        match stats_index.and_then(|q| vrings.get(q)) {
            Some(vring) if outstanding(vring) >= 1 => self.complete(vring, &[head]),
            _ => Ok(()),
        }
    }
}

/// Sets O_NONBLOCK on `fd` (vmm-sys-util's `TimerFd` has no flag for it).
fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL on an fd this process owns; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL takes the flags by value.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Chains popped from `vring` and not yet returned. The held stats buffer
/// survives a reconnect of the same VM (QEMU restores the ring, the buffer is
/// still outstanding and goes back); after a fresh VM connected, nothing is
/// outstanding and a stale held head must not be returned (Linux would mark
/// the queue broken).
fn outstanding(vring: &VringRwLock) -> u16 {
    match vring.queue_used_idx() {
        Ok(used) => vring.queue_next_avail().wrapping_sub(used),
        Err(_) => 0,
    }
}

/// Logs a bad chain at debug level, rate limited to powers of two of the running count.
fn log_bad(role: QueueRole, head: u16, total: u64) {
    if total.is_power_of_two() {
        debug!("ignored bad input on {role:?} chain {head} ({total} bad so far)");
    }
}

impl VhostUserBackend for VhuBalloon {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << features::STATS_VQ)
            | (1 << features::REPORTING)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.deflate_on_oom {
            f |= 1 << features::DEFLATE_ON_OOM;
        }
        if self.free_page_hint {
            f |= 1 << features::FREE_PAGE_HINT;
        }
        f
    }

    fn acked_features(&self, features: u64) {
        self.inner().acked_features = features;
        let mut st = self.shared.state();
        st.hint.acked = features & (1 << features::FREE_PAGE_HINT) != 0;
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn reset_device(&self) {
        self.inner().stats_head = None;
        let ended = {
            let mut st = self.shared.state();
            st.hint.started = false;
            let pages = std::mem::take(&mut st.hint.pages);
            st.hint.round.take().map(|round| (round, pages))
        };
        if let Some((round, pages)) = ended {
            self.shared.notify(Notice::HintDone { round, pages });
        }
        let mut table = self.pin_table();
        let all = table.clear();
        self.unpin("ring pages on reset", &all);
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let mut table = self.pin_table();
        let only = table.remove(queue_index as usize);
        self.unpin(&format!("queue {queue_index} ring pages on stop"), &only);
        Ok(())
    }

    fn set_event_idx(&self, enabled: bool) {
        self.inner().event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut st = self.shared.state();
        match st.config.read(offset, size) {
            Some(b) => b,
            None => {
                st.counters.bad_config_reads += 1;
                debug!("config read out of bounds: offset {offset} size {size}");
                Vec::new()
            }
        }
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        let (actual, was_held) = {
            let mut st = self.shared.state();
            let was_held = st.config.actual > 0;
            let actual = st.config.write(offset, buf);
            if actual.is_none() {
                st.counters.bad_config_writes += 1;
                debug!("ignored config write: offset {offset} len {}", buf.len());
            }
            (actual, was_held)
        };
        if let Some(a) = actual {
            // The balloon started or stopped holding pages: the stats period
            // changes now, not at the next tick of the old one (with the 5 s
            // interval, a guest that filled its balloon and then ran short
            // was not asked for 5 s and OOMed first: test_grow). Only on the
            // change: the driver writes `actual` every 1 MiB, and re-arming
            // each time would keep the timer from ever firing.
            if (a > 0) != was_held {
                self.shared.arm_stats_timer();
            }
            self.shared.notify(Notice::Actual(a));
        }
        Ok(())
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.inner().mem = Some(mem);
        Ok(())
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        self.shared.frontend_connected(backend);
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::CLOEXEC).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        self.pin_rings(vrings);
        let res = if device_event == STATS_TIMER_EVENT {
            self.handle_timer(vrings)
        } else if usize::from(device_event) < NUM_QUEUES {
            self.handle_queue(usize::from(device_event), vrings)
        } else {
            Err(VhuBalloonError::UnknownEvent(device_event))
        };
        // An error here comes from a broken ring (the guest's doing): count it
        // and keep the worker thread alive; returning it would end the thread.
        if let Err(e) = res {
            let mut st = self.shared.state();
            st.counters.queue_errors += 1;
            if st.counters.queue_errors.is_power_of_two() {
                warn!(
                    "event {device_event}: {e} ({} so far)",
                    st.counters.queue_errors
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    const W: u16 = VRING_DESC_F_WRITE as u16;

    /// Records what the device would release.
    #[derive(Default)]
    struct Recorder {
        released: Mutex<Vec<(Reason, GuestRange)>>,
        reclaimed: Mutex<Vec<GuestRange>>,
        /// (pin?, range) in order.
        pins: Mutex<Vec<(bool, GuestRange)>>,
    }

    impl ReleaseSink for Recorder {
        fn release(
            &self,
            _mem: &GuestMemoryMmap,
            reason: Reason,
            ranges: &[GuestRange],
        ) -> Result<u64, crate::sink::SinkError> {
            self.released
                .lock()
                .unwrap()
                .extend(ranges.iter().map(|r| (reason, *r)));
            Ok(ranges.iter().map(GuestRange::pages).sum())
        }

        fn reclaim_back(
            &self,
            _mem: &GuestMemoryMmap,
            ranges: &[GuestRange],
        ) -> Result<u64, crate::sink::SinkError> {
            self.reclaimed.lock().unwrap().extend_from_slice(ranges);
            Ok(ranges.iter().map(GuestRange::pages).sum())
        }

        fn pin(&self, ranges: &[GuestRange]) -> Result<u64, crate::sink::SinkError> {
            self.pins
                .lock()
                .unwrap()
                .extend(ranges.iter().map(|r| (true, *r)));
            Ok(0)
        }

        fn unpin(&self, ranges: &[GuestRange]) -> Result<u64, crate::sink::SinkError> {
            self.pins
                .lock()
                .unwrap()
                .extend(ranges.iter().map(|r| (false, *r)));
            Ok(0)
        }
    }

    struct Dev {
        shared: Arc<Shared>,
        rec: Arc<Recorder>,
        be: VhuBalloon,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        vrings: Vec<VringRwLock>,
        /// Driver side of each ring. MockSplitQueue zeroes the ring indexes
        /// when created, so each lives as long as the test (memory leaked).
        /// Its used ring starts 16 bytes after the avail ring entries: keep
        /// under 8 chains per queue so the two do not overlap.
        mocks: Vec<MockSplitQueue<'static, GuestMemoryMmap>>,
        next_desc: [u16; NUM_QUEUES],
    }

    fn ring_base(q: usize) -> GuestAddress {
        GuestAddress(0x1_0000 * (q as u64 + 1))
    }

    impl Dev {
        /// RAM: [0, 1 MiB) and [2 MiB, 3 MiB), a hole between.
        fn new(features: u64) -> Dev {
            let mem = GuestMemoryAtomic::new(
                GuestMemoryMmap::from_ranges(&[
                    (GuestAddress(0), 1 << 20),
                    (GuestAddress(2 << 20), 1 << 20),
                ])
                .unwrap(),
            );
            let shared = Arc::new(Shared::default());
            let rec = Arc::new(Recorder::default());
            let be = VhuBalloon::new(shared.clone(), rec.clone(), false, Duration::from_millis(5))
                .unwrap();
            be.update_memory(mem.clone()).unwrap();
            be.acked_features(features);
            let guard: &'static GuestMemoryMmap = Box::leak(Box::new(mem.memory()));
            let mocks: Vec<_> = (0..NUM_QUEUES)
                .map(|q| MockSplitQueue::create(guard, ring_base(q), 16))
                .collect();
            let vrings = mocks
                .iter()
                .map(|m| {
                    let v = VringRwLock::new(mem.clone(), 16).unwrap();
                    v.set_queue_size(16);
                    v.set_queue_info(m.desc_table_addr().0, m.avail_addr().0, m.used_addr().0)
                        .unwrap();
                    v.set_queue_ready(true);
                    v.set_enabled(true);
                    v
                })
                .collect();
            Dev {
                shared,
                rec,
                be,
                mem,
                vrings,
                mocks,
                next_desc: [0; NUM_QUEUES],
            }
        }

        /// Posts one chain of (addr, len, flags) on queue `q` and runs the device.
        fn post(&mut self, q: usize, bufs: &[(u64, u32, u16)]) {
            let first = self.next_desc[q];
            let descs: Vec<RawDescriptor> = bufs
                .iter()
                .enumerate()
                .map(|(i, &(addr, len, flags))| {
                    let last = i + 1 == bufs.len();
                    let flags = if last {
                        flags
                    } else {
                        flags | VRING_DESC_F_NEXT as u16
                    };
                    let next = if last { 0 } else { first + i as u16 + 1 };
                    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
                })
                .collect();
            self.next_desc[q] += bufs.len() as u16;
            self.mocks[q].add_desc_chains(&descs, first).unwrap();
            self.be
                .handle_event(q as u16, EventSet::IN, &self.vrings, 0)
                .unwrap();
        }

        fn pfns(&self, at: u64, pfns: &[u32]) -> (u64, u32, u16) {
            let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
            self.mem
                .memory()
                .write_slice(&bytes, GuestAddress(at))
                .unwrap();
            (at, bytes.len() as u32, 0)
        }

        fn used(&self, q: usize) -> u16 {
            self.mocks[q].used().idx().load()
        }

        /// Waits (up to 1 s) for the stats timer to expire, then handles
        /// its event against `vrings`.
        fn tick(&self, vrings: &[VringRwLock]) {
            let mut pfd = libc::pollfd {
                fd: self.be.timer_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            assert_eq!(unsafe { libc::poll(&mut pfd, 1, 1000) }, 1, "no tick");
            self.be
                .handle_event(STATS_TIMER_EVENT, EventSet::IN, vrings, 0)
                .unwrap();
        }

        fn counters(&self) -> balloon::Counters {
            self.shared.state().counters
        }

        /// Everything recorded lies inside guest RAM.
        fn assert_inside_ram(&self) {
            let guard = self.mem.memory();
            let rel = self.rec.released.lock().unwrap();
            let rec = self.rec.reclaimed.lock().unwrap();
            for r in rel.iter().map(|(_, r)| r).chain(rec.iter()) {
                assert!(
                    guard.check_range(GuestAddress(r.gpa), r.len as usize),
                    "{r:?}"
                );
            }
        }
    }

    #[test]
    fn inflate_releases_coalesced_valid_pfns_only() {
        let mut d = Dev::new(0);
        // 1 MiB = pfn 0x100 (hole), 3 MiB = pfn 0x300 (end), u32::MAX (far out).
        let b = d.pfns(
            0x8_0000,
            &[0x202, 0x200, 0x201, 0x10, 0x100, 0x300, u32::MAX, 0x10],
        );
        d.post(0, &[b]);
        assert_eq!(d.used(0), 1);
        assert_eq!(
            *d.rec.released.lock().unwrap(),
            vec![
                (
                    Reason::Balloon,
                    GuestRange {
                        gpa: 0x10_000,
                        len: 0x1000
                    }
                ),
                (
                    Reason::Balloon,
                    GuestRange {
                        gpa: 0x20_0000,
                        len: 0x3000
                    }
                ),
            ]
        );
        let c = d.counters();
        assert_eq!((c.invalid_pfns, c.bad_descriptors), (3, 0));
        assert_eq!(
            (c.pages_inflated, c.pages_released, c.inflate_chains),
            (4, 4, 1)
        );
        d.assert_inside_ram();
    }

    #[test]
    fn malformed_inflate_chains_are_completed_and_release_nothing() {
        let mut d = Dev::new(0);
        let ok = d.pfns(0x8_0000, &[1, 2]);
        d.post(0, &[(ok.0, ok.1, W)]); // device-writable
        d.post(0, &[(ok.0, 7, 0)]); // not a multiple of 4
        d.post(
            0,
            &[(ok.0, (balloon::MAX_PFNS_PER_CHAIN as u32 + 1) * 4, 0)],
        ); // too long
        d.post(0, &[(0x10_0000, 8, 0)]); // buffer in the hole
        d.post(0, &[(u64::MAX - 3, 8, 0)]); // buffer address wraps
        d.post(0, &[ok, (ok.0, 4, W)]); // readable then writable
        assert_eq!(d.used(0), 6);
        assert!(d.rec.released.lock().unwrap().is_empty());
        let c = d.counters();
        assert_eq!(
            (c.bad_descriptors, c.invalid_pfns, c.pages_inflated),
            (6, 0, 0)
        );
    }

    #[test]
    fn deflate_reclaims_back() {
        let mut d = Dev::new(0);
        let b = d.pfns(0x8_0000, &[5, 6, 0x100]);
        d.post(1, &[b]);
        assert_eq!(d.used(1), 1);
        assert_eq!(
            *d.rec.reclaimed.lock().unwrap(),
            vec![GuestRange {
                gpa: 0x5000,
                len: 0x2000
            }]
        );
        assert_eq!(d.counters().pages_deflated, 2);
        assert_eq!(d.counters().invalid_pfns, 1);
        d.assert_inside_ram();
    }

    #[test]
    fn reporting_is_queue_2_without_stats_and_is_validated() {
        let mut d = Dev::new(1 << features::REPORTING);
        d.post(
            2,
            &[
                (0x20_0000, 0x4_0000, W),
                (0x1000, 0x1000, 0),   // device-readable: wrong direction
                (0xf_f000, 0x2000, W), // runs into the hole
                (0x2_0001, 0x1000, W), // unaligned
            ],
        );
        assert_eq!(d.used(2), 1);
        assert_eq!(
            *d.rec.released.lock().unwrap(),
            vec![(
                Reason::Report,
                GuestRange {
                    gpa: 0x20_0000,
                    len: 0x4_0000
                }
            )]
        );
        let c = d.counters();
        assert_eq!(
            (c.bad_descriptors, c.invalid_pfns, c.pages_reported),
            (1, 2, 64)
        );
        // Queue 3 has no role under these features: a kick there does nothing.
        d.post(3, &[(0x20_0000, 0x1000, W)]);
        assert_eq!(d.used(3), 0);
        d.assert_inside_ram();
    }

    #[test]
    fn stats_buffer_is_held_until_the_timer() {
        let mut d = Dev::new((1 << features::STATS_VQ) | (1 << features::REPORTING));
        let mut buf = Vec::new();
        for (tag, val) in [(0u16, 7u64), (6, 4096), (200, 1)] {
            buf.extend_from_slice(&tag.to_le_bytes());
            buf.extend_from_slice(&val.to_le_bytes());
        }
        d.mem
            .memory()
            .write_slice(&buf, GuestAddress(0x8_0000))
            .unwrap();
        d.post(2, &[(0x8_0000, buf.len() as u32, 0)]);
        assert_eq!(d.used(2), 0);
        {
            let st = d.shared.state();
            assert_eq!(st.guest_stats["swap-in"], 7);
            assert_eq!(st.guest_stats["available-memory"], 4096);
            assert_eq!(st.guest_stats["tag-200"], 1);
            assert_eq!(st.counters.unknown_stat_tags, 1);
        }
        d.tick(&d.vrings);
        assert_eq!(d.used(2), 1);
        // Reporting moved to queue 3.
        d.post(3, &[(0x20_0000, 0x1000, W)]);
        assert_eq!(d.used(3), 1);
        // A writable stats buffer is bad but still held and returned.
        d.post(2, &[(0x8_0000, 10, W)]);
        assert_eq!(d.counters().bad_descriptors, 1);
        d.tick(&d.vrings);
        assert_eq!(d.used(2), 2);
    }

    #[test]
    fn stats_are_asked_for_faster_while_the_balloon_holds_pages() {
        let d = Dev::new(1 << features::STATS_VQ);
        let hour = Duration::from_secs(3600);
        d.shared.set_stats_held_interval(hour);
        let remaining = |d: &Dev| {
            let fd = d.be.timer_fd();
            // SAFETY: `fd` is the backend's live timerfd; `cur` is a plain
            // struct the call only writes.
            let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            assert_eq!(unsafe { libc::timerfd_gettime(fd, &mut cur) }, 0);
            Duration::new(cur.it_value.tv_sec as u64, cur.it_value.tv_nsec as u32)
        };
        // Empty balloon: the interval (5 ms here).
        assert_eq!(d.shared.stats_period(), Some(Duration::from_millis(5)));
        assert!(remaining(&d) <= Duration::from_millis(5));
        // The driver reports pages in the balloon: re-armed with the held
        // period at once, not at the next tick of the old one.
        d.be.set_config(4, &10u32.to_le_bytes()).unwrap();
        assert_eq!(d.shared.stats_period(), Some(hour));
        assert!(remaining(&d) > Duration::from_secs(3000));
        // More pages: no re-arm (the driver writes every 1 MiB).
        std::thread::sleep(Duration::from_millis(10));
        let left = remaining(&d);
        d.be.set_config(4, &20u32.to_le_bytes()).unwrap();
        assert!(
            remaining(&d) <= left,
            "re-armed by a write that did not empty or fill"
        );
        // A tick that finds nothing to read (a reset raced it) is no error
        // and does not block.
        d.be.handle_event(STATS_TIMER_EVENT, EventSet::IN, &d.vrings, 0)
            .unwrap();
        assert_eq!(d.counters().queue_errors, 0);
        assert!(remaining(&d) > Duration::from_secs(3000));
        // A new target asks at once, whatever the period.
        d.shared.set_target(20);
        assert!(remaining(&d) <= Duration::from_millis(1));
        // Empty again: back to the interval at once.
        d.be.set_config(4, &0u32.to_le_bytes()).unwrap();
        assert!(remaining(&d) <= Duration::from_millis(5));
        // Zero: the interval also while held.
        d.shared.set_stats_held_interval(Duration::ZERO);
        d.be.set_config(4, &10u32.to_le_bytes()).unwrap();
        assert_eq!(d.shared.stats_period(), Some(Duration::from_millis(5)));
    }

    #[test]
    fn config_writes_other_than_actual_are_ignored_and_counted() {
        let d = Dev::new(0);
        d.shared.state().config.num_pages = 100;
        d.be.set_config(0, &5u32.to_le_bytes()).unwrap();
        d.be.set_config(6, &[1, 2]).unwrap();
        d.be.set_config(12, &[0; 8]).unwrap();
        assert_eq!(d.counters().bad_config_writes, 3);
        d.be.set_config(4, &9u32.to_le_bytes()).unwrap();
        let cfg = d.be.get_config(0, 8);
        assert_eq!(cfg, [100u32.to_le_bytes(), 9u32.to_le_bytes()].concat());
        assert!(d.be.get_config(8, 16).is_empty());
        assert_eq!(d.counters().bad_config_reads, 1);
        assert_eq!(d.be.get_config(8, 8), vec![0; 8]);
    }

    #[test]
    fn stale_stats_head_from_another_vm_is_not_returned() {
        let mut d = Dev::new(1 << features::STATS_VQ);
        d.post(2, &[(0x8_0000, 10, 0)]);
        // A new VM: the same backend, fresh rings (nothing outstanding).
        let fresh = Dev::new(1 << features::STATS_VQ);
        d.tick(&fresh.vrings);
        assert_eq!(fresh.used(2), 0);
        assert_eq!(d.used(2), 0);
    }

    #[test]
    fn bogus_avail_index_with_event_idx_does_not_spin() {
        let mut d = Dev::new(0);
        d.be.set_event_idx(true);
        for v in &d.vrings {
            v.set_queue_event_idx(true);
        }
        let b = d.pfns(0x8_0000, &[1]);
        d.post(0, &[b]);
        assert_eq!(d.used(0), 1);
        // avail idx 100 chains ahead of a 16-entry ring: nothing can be popped.
        d.mocks[0].avail().idx().store(101);
        d.be.handle_event(0, EventSet::IN, &d.vrings, 0).unwrap();
        assert_eq!(d.used(0), 1);
        assert_eq!(d.counters().pages_inflated, 1);
    }

    #[test]
    fn rings_are_pinned_once_and_unpinned_on_stop_and_reset() {
        let mut d = Dev::new(0);
        let rings: Vec<Vec<GuestRange>> = d
            .mocks
            .iter()
            .map(|m| {
                pins::ring_ranges(m.desc_table_addr().0, m.avail_addr().0, m.used_addr().0, 16)
            })
            .collect();
        let ring = |q: usize| rings[q].clone();
        let expect: Vec<_> = (0..NUM_QUEUES).flat_map(ring).map(|r| (true, r)).collect();
        assert!(!expect.is_empty());
        assert!(expect
            .iter()
            .all(|(_, r)| r.gpa % 4096 == 0 && r.len % 4096 == 0));
        let b = d.pfns(0x8_0000, &[1]);
        d.post(0, &[b]);
        assert_eq!(*d.rec.pins.lock().unwrap(), expect);
        // Later events do not pin again.
        let b = d.pfns(0x8_0000, &[2]);
        d.post(0, &[b]);
        d.be.handle_event(STATS_TIMER_EVENT, EventSet::IN, &d.vrings, 0)
            .unwrap();
        assert_eq!(d.rec.pins.lock().unwrap().len(), expect.len());
        // GET_VRING_BASE on queue 1 unpins its pages; reset the rest.
        d.be.stop_vring(1).unwrap();
        let last = *d.rec.pins.lock().unwrap().last().unwrap();
        assert_eq!(last, (false, ring(1)[0]));
        d.be.reset_device();
        let unpinned: Vec<_> = d.rec.pins.lock().unwrap()[expect.len() + 1..].to_vec();
        let rest: Vec<_> = [0, 2, 3, 4]
            .into_iter()
            .flat_map(ring)
            .map(|r| (false, r))
            .collect();
        assert_eq!(unpinned, rest);
        assert_eq!(d.counters().pin_errors, 0);
    }

    #[test]
    fn default_features() {
        let d = Dev::new(0);
        assert_eq!(d.be.features() & (1 << features::DEFLATE_ON_OOM), 0);
        assert_ne!(d.be.features() & (1 << features::STATS_VQ), 0);
        assert_ne!(d.be.features() & (1 << features::REPORTING), 0);
    }

    #[test]
    fn a_hint_round_releases_its_blocks_and_ends_with_done() {
        let acked = (1 << features::STATS_VQ)
            | (1 << features::FREE_PAGE_HINT)
            | (1 << features::REPORTING);
        let mut d = Dev::new(acked);
        let hint_q = 3;
        assert_eq!(
            balloon::queue_role(hint_q, acked),
            Some(QueueRole::FreePageHint)
        );
        assert_eq!(balloon::queue_role(4, acked), Some(QueueRole::Reporting));
        let (tx, rx) = std::sync::mpsc::channel();
        d.shared.set_notices(tx);
        let cmd = |d: &Dev, at: u64, id: u32| {
            d.mem
                .memory()
                .write_slice(&id.to_le_bytes(), GuestAddress(at))
                .unwrap();
            (at, 4u32, 0u16)
        };
        // A block before any round is stale.
        d.post(hint_q, &[(0x8_0000, 0x4000, W)]);
        d.shared.ask_hints(7);
        assert_eq!(d.shared.state().config.free_page_hint_cmd_id, 7);
        let c = cmd(&d, 0x7_0000, 7);
        d.post(hint_q, &[c]);
        d.post(hint_q, &[(0x8_0000, 0x4000, W)]);
        // Outside guest RAM (the hole), and a chain of two: ignored.
        d.post(hint_q, &[(1 << 20, 0x1000, W)]);
        d.post(hint_q, &[(0x9_0000, 0x1000, W), (0x9_1000, 0x1000, W)]);
        let stop = cmd(&d, 0x7_0010, balloon::HINT_CMD_ID_STOP);
        d.post(hint_q, &[stop]);
        assert_eq!(d.used(hint_q), 6, "every chain is returned");
        assert_eq!(
            *d.rec.released.lock().unwrap(),
            vec![(
                Reason::Hint,
                GuestRange {
                    gpa: 0x8_0000,
                    len: 0x4000
                }
            )]
        );
        assert_eq!(
            rx.try_recv().unwrap(),
            Notice::HintDone { round: 7, pages: 4 }
        );
        let c = d.counters();
        assert_eq!((c.hint_rounds, c.pages_hinted, c.stale_hints), (1, 4, 1));
        assert_eq!((c.invalid_pfns, c.bad_descriptors), (1, 1));
        // The notice thread tells the guest DONE.
        d.shared.hints_done();
        assert_eq!(
            d.shared.state().config.free_page_hint_cmd_id,
            balloon::HINT_CMD_ID_DONE
        );
        // A driver without hinting ends a round at once.
        d.be.acked_features(1 << features::STATS_VQ);
        d.shared.ask_hints(8);
        assert_eq!(
            rx.try_recv().unwrap(),
            Notice::HintDone { round: 8, pages: 0 }
        );
    }

    #[test]
    fn free_page_hint_is_offered_only_when_asked() {
        // Not by default: the PunchHole sink must never see a hint.
        let d = Dev::new(0);
        assert_eq!(d.be.features() & (1 << features::FREE_PAGE_HINT), 0);
        let be = VhuBalloon::new(d.shared.clone(), d.rec.clone(), false, Duration::ZERO)
            .unwrap()
            .with_free_page_hint(true);
        assert_ne!(be.features() & (1 << features::FREE_PAGE_HINT), 0);
    }
}
