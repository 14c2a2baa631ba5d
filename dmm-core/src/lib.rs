// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! DMM: the Dynamic Memory Mapping model (Chen, Wang, Luo et al., 2010) for QEMU/KVM.
//!
//! Layout (see `docs/architecture.md`):
//! - [`model`]: platform-independent state: the P2M table and its state machine,
//!   the memory pool, the reverse map.
//! - [`mech`]: the platform mechanism behind the [`mech::Mechanism`] trait: Linux
//!   (memfd + userfaultfd + hole punch) and an in-memory simulation.
//! - [`policy`]: demand paging, ballooning, swapping, sharing on one interface.
//! - [`vm`]: [`vm::Vm`], one VM's memory: model + mechanism + policies.
//! - [`control`]: the control socket (line-oriented JSON) and its client.
//! - [`ffi`]: the C ABI (`include/dmm.h`).
//! - [`thread`]: how libdmm starts threads (a panic in one aborts the process).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod control;
pub mod error;
pub mod ffi;
pub mod mech;
pub mod model;
pub mod policy;
pub mod swap;
pub mod thread;
pub mod vm;

pub use error::{Error, Result};
