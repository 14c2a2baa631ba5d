// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The swap store: where swapped-out guest pages live. One file per VM
//! ([`store::SwapStore`]) with slots of size classes ([`layout`]), pages
//! optionally LZ4-compressed ([`codec`]), identical pages stored once.

pub mod codec;
pub mod layout;
pub mod store;

pub use store::{StoreStats, SwapStore};
