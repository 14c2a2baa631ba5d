// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Events of one VM ([`VmEvent`]): subscriptions (the control socket's
//! `subscribe-events`, the C ABI's event callback) and their delivery.
//! [`Events`] is reachable from the policies too ([`crate::policy::Ctx`]):
//! a memory error is emitted where it is found.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, MutexGuard};

use super::engine::Engine;
use super::VmEvent;

/// Event subscribers, by subscription id.
#[derive(Debug, Default)]
pub struct Events {
    subscribers: Mutex<Vec<(u64, Sender<VmEvent>)>>,
    next: AtomicU64,
}

impl Events {
    fn lock(&self) -> MutexGuard<'_, Vec<(u64, Sender<VmEvent>)>> {
        // A list of senders: a poisoned lock still holds a usable one.
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver of every event from now on, and its subscription id.
    pub fn subscribe(&self) -> (u64, Receiver<VmEvent>) {
        let (tx, rx) = channel();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().push((id, tx));
        (id, rx)
    }

    /// Ends subscription `id`: its receiver sees the channel closed.
    pub fn unsubscribe(&self, id: u64) {
        self.lock().retain(|(i, _)| *i != id);
    }

    /// Sends `ev` to every subscriber (dropping those that are gone).
    pub fn emit(&self, ev: VmEvent) {
        self.lock().retain(|(_, s)| s.send(ev.clone()).is_ok());
    }
}

impl Engine {
    /// A receiver of [`VmEvent`]s and its subscription id.
    pub(super) fn subscribe_events(&self) -> (u64, Receiver<VmEvent>) {
        self.events.subscribe()
    }

    /// Ends subscription `id`: its receiver sees the channel closed.
    pub(super) fn unsubscribe_events(&self, id: u64) {
        self.events.unsubscribe(id);
    }

    pub(super) fn emit(&self, ev: VmEvent) {
        self.events.emit(ev);
    }
}
