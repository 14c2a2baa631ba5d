// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Events of one VM ([`VmEvent`]): subscriptions (the control socket's
//! `subscribe-events`, the C ABI's event callback) and their delivery.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver};

use super::engine::Engine;
use super::VmEvent;

impl Engine {
    /// A receiver of [`VmEvent`]s and its subscription id.
    pub(super) fn subscribe_events(&self) -> (u64, Receiver<VmEvent>) {
        let (tx, rx) = channel();
        let id = self.next_subscription.fetch_add(1, Ordering::Relaxed);
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, tx));
        (id, rx)
    }

    /// Ends subscription `id`: its receiver sees the channel closed.
    pub(super) fn unsubscribe_events(&self, id: u64) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(i, _)| *i != id);
    }

    pub(super) fn emit(&self, ev: VmEvent) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, s)| s.send(ev.clone()).is_ok());
    }
}
