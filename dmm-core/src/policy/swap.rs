// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Swapping (stub; a later issue writes the body). Swap-out never loses a
//! write: Resident -> InFlight, write-protect (uffd-wp), copy to a slot,
//! punch, then InFlight -> Swapped with the slot in the P2M's sparse map and
//! the reverse map. A fault on a Swapped page: Swapped -> InFlight,
//! `UFFDIO_COPY` from the slot, InFlight -> Resident.

use super::{Ctx, Policy};
use crate::Result;

/// The swap policy.
#[derive(Debug, Default)]
pub struct Swap;

impl Policy for Swap {
    fn name(&self) -> &'static str {
        "swap"
    }

    fn reclaim(&self, _ctx: &Ctx<'_>, _pages_wanted: u64) -> Result<u64> {
        Ok(0)
    }
}
