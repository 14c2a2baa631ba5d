// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! VM events for C callers: `dmm_vm_set_event_callback` runs the caller's
//! callback on a thread of ours, one call per event, in order.

use std::ffi::c_void;
use std::sync::mpsc::Receiver;
use std::thread::{self, JoinHandle};

use crate::vm::{Vm, VmEvent};

/// `dmm_event.kind`: the pool size changed (through any interface: the C
/// ABI, the control socket). `pool_size`, `previous_pool_size`, `resident`.
pub const DMM_EVENT_POOL_SIZE_CHANGED: u32 = 1;
/// `dmm_event.kind`: resident came within the pool after a pool change had
/// put it above. `pool_size`, `resident`, `elapsed_ms` since the change.
pub const DMM_EVENT_POOL_REACHED: u32 = 2;
/// `dmm_event.kind`: reclaim missed its deadline, resident is still above
/// the pool. `pool_size`, `excess`, `elapsed_ms` above the pool.
pub const DMM_EVENT_RECLAIM_BEHIND: u32 = 3;

/// One VM event (`DMM_EVENT_*`); fields a kind does not use are 0. Bytes.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct dmm_event {
    /// `DMM_EVENT_*`.
    pub kind: u32,
    /// Pool size.
    pub pool_size: u64,
    /// Pool size before the change (`DMM_EVENT_POOL_SIZE_CHANGED`).
    pub previous_pool_size: u64,
    /// Bytes resident.
    pub resident: u64,
    /// Bytes resident beyond the pool (`DMM_EVENT_RECLAIM_BEHIND`).
    pub excess: u64,
    /// Milliseconds since the pool change, or above the pool.
    pub elapsed_ms: u64,
}

impl From<&VmEvent> for dmm_event {
    fn from(ev: &VmEvent) -> Self {
        match *ev {
            VmEvent::PoolSizeChanged {
                pool_size,
                previous_pool_size,
                resident_bytes,
            } => dmm_event {
                kind: DMM_EVENT_POOL_SIZE_CHANGED,
                pool_size,
                previous_pool_size,
                resident: resident_bytes,
                ..Default::default()
            },
            VmEvent::PoolReached {
                pool_size,
                resident_bytes,
                took_ms,
            } => dmm_event {
                kind: DMM_EVENT_POOL_REACHED,
                pool_size,
                resident: resident_bytes,
                elapsed_ms: took_ms,
                ..Default::default()
            },
            VmEvent::ReclaimBehind {
                excess_bytes,
                pool_size,
                waited_ms,
            } => dmm_event {
                kind: DMM_EVENT_RECLAIM_BEHIND,
                pool_size,
                excess: excess_bytes,
                elapsed_ms: waited_ms,
                ..Default::default()
            },
        }
    }
}

/// Called with the `opaque` given to `dmm_vm_set_event_callback` and an event
/// valid for the duration of the call.
#[allow(non_camel_case_types)]
pub type dmm_event_callback =
    Option<unsafe extern "C" fn(opaque: *mut c_void, event: *const dmm_event)>;

/// The caller's callback and its argument.
struct Target {
    cb: unsafe extern "C" fn(*mut c_void, *const dmm_event),
    opaque: *mut c_void,
}

// SAFETY: `dmm_vm_set_event_callback`'s contract makes the callback and
// `opaque` usable from any thread; we only pass `opaque` back to it.
unsafe impl Send for Target {}

/// The thread that delivers one subscription's events to a callback.
#[derive(Debug)]
pub(super) struct Delivery {
    /// The VM's event subscription the thread reads.
    subscription: u64,
    thread: JoinHandle<()>,
}

impl Delivery {
    /// Starts delivering `vm`'s events to `cb(opaque, ..)`.
    ///
    /// # Safety
    /// `cb` may be called with `opaque` from another thread until
    /// [`Delivery::stop`] returns.
    pub(super) unsafe fn start(
        vm: &Vm,
        cb: unsafe extern "C" fn(*mut c_void, *const dmm_event),
        opaque: *mut c_void,
    ) -> std::io::Result<Self> {
        let (subscription, events) = vm.subscribe_events_until_closed();
        let target = Target { cb, opaque };
        let thread = crate::thread::spawn("dmm-events", move || deliver(&events, &target));
        match thread {
            Ok(thread) => Ok(Delivery {
                subscription,
                thread,
            }),
            Err(e) => {
                vm.unsubscribe_events(subscription);
                Err(e)
            }
        }
    }

    /// True when called from the delivery thread itself (from the callback).
    pub(super) fn is_current(&self) -> bool {
        self.thread.thread().id() == thread::current().id()
    }

    /// Stops delivery: closes the subscription, so the thread ends after the
    /// events already sent; no callback runs after this returns.
    pub(super) fn stop(self, vm: &Vm) {
        vm.unsubscribe_events(self.subscription);
        // A panic there aborted the process already (`crate::thread`).
        let _ = self.thread.join();
    }
}

/// Calls the callback for every event until the subscription is closed.
fn deliver(events: &Receiver<VmEvent>, target: &Target) {
    for ev in events {
        let ev = dmm_event::from(&ev);
        // SAFETY: the callback and `opaque` are valid until `Delivery::stop`
        // returns (the contract of `Delivery::start`), and this loop ends
        // before it does; `ev` outlives the call.
        unsafe { (target.cb)(target.opaque, &ev) };
    }
}
