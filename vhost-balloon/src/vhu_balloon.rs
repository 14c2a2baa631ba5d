// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The vhost-user side of the balloon: features, config space and the
//! queue handlers. Implements `VhostUserBackend` (the `&self` flavour) so
//! that GET_CONFIG/SET_CONFIG on the handler thread never wait for a queue
//! being processed (which may be waiting for libdmm).

use std::io;
use std::os::fd::AsRawFd;
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

use crate::balloon::{self, features, Desc, GuestRange, QueueRole};
use crate::sink::{Reason, ReleaseSink};
use crate::state::{Notice, Shared};

/// Number of virtqueues: inflate, deflate, stats, reporting.
pub const NUM_QUEUES: usize = 4;
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
    inner: Mutex<Inner>,
    timer: Mutex<TimerFd>,
}

impl std::fmt::Debug for VhuBalloon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhuBalloon")
            .field("deflate_on_oom", &self.deflate_on_oom)
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
        if !stats_interval.is_zero() {
            timer.reset(stats_interval, Some(stats_interval))?;
        }
        Ok(VhuBalloon {
            shared,
            sink,
            deflate_on_oom,
            inner: Mutex::new(Inner::default()),
            timer: Mutex::new(timer),
        })
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

    /// Processes every available chain of `vring` as `role`.
    fn process_queue(&self, role: QueueRole, vring: &VringRwLock) -> Result<(), VhuBalloonError> {
        let mem = self
            .inner()
            .mem
            .clone()
            .ok_or(VhuBalloonError::NoMemory)?
            .memory();
        let mut heads = Vec::new();
        let mut gpas = Vec::new();
        let mut reports = Vec::new();
        loop {
            let chain = vring.get_mut().get_queue_mut().pop_descriptor_chain(&*mem);
            let Some(chain) = chain else { break };
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
                QueueRole::Stats => {
                    if let Some(values) = balloon::parse_stats_chain(&*mem, &descs, c) {
                        st.guest_stats = values.clone();
                        drop(st);
                        self.shared.notify(Notice::GuestStats(values));
                    }
                    // Held until the timer asks for fresh numbers; a second
                    // buffer (a driver bug) returns the older one now.
                    if let Some(old) = self.inner().stats_head.replace(head) {
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
            QueueRole::Deflate => self.reclaim(&mem, balloon::coalesce(&mut gpas), heads.len()),
            QueueRole::Stats => {}
        }
        self.complete(vring, &heads)
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
            return self.process_queue(role, vring);
        }
        loop {
            vring
                .disable_notification()
                .map_err(VhuBalloonError::Queue)?;
            self.process_queue(role, vring)?;
            if !vring
                .enable_notification()
                .map_err(VhuBalloonError::Queue)?
            {
                return Ok(());
            }
        }
    }

    fn handle_timer(&self, vrings: &[VringRwLock]) -> Result<(), VhuBalloonError> {
        self.timer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .wait()
            .map_err(VhuBalloonError::Timer)?;
        let (acked, head) = {
            let mut i = self.inner();
            (i.acked_features, i.stats_head.take())
        };
        let Some(head) = head else { return Ok(()) };
        let stats_index =
            (0..NUM_QUEUES).find(|&q| balloon::queue_role(q, acked) == Some(QueueRole::Stats));
        match stats_index.and_then(|q| vrings.get(q)) {
            Some(vring) => self.complete(vring, &[head]),
            None => Ok(()),
        }
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
        f
    }

    fn acked_features(&self, features: u64) {
        self.inner().acked_features = features;
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn reset_device(&self) {
        self.inner().stats_head = None;
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
        let actual = {
            let mut st = self.shared.state();
            let actual = st.config.write(offset, buf);
            if actual.is_none() {
                st.counters.bad_config_writes += 1;
                debug!("ignored config write: offset {offset} len {}", buf.len());
            }
            actual
        };
        if let Some(a) = actual {
            self.shared.notify(Notice::Actual(a));
        }
        Ok(())
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.inner().mem = Some(mem);
        Ok(())
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        self.shared.set_frontend(Some(backend));
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
        if device_event == STATS_TIMER_EVENT {
            return Ok(self.handle_timer(vrings)?);
        }
        let index = usize::from(device_event);
        if index >= NUM_QUEUES {
            return Err(VhuBalloonError::UnknownEvent(device_event).into());
        }
        Ok(self.handle_queue(index, vrings)?)
    }
}
