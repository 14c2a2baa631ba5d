// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Zero-page sharing (stub; a later issue writes the body): scan resident
//! pages, and for a page that reads all zeros go Resident -> InFlight
//! (write-protect) -> check again -> punch -> Zero, recording it in the
//! reverse map under [`crate::model::Backing::ZeroPage`]. A touch refills it
//! through demand paging (Zero is fillable).

use super::{Ctx, Policy};
use crate::Result;

/// The zero-page sharing policy.
#[derive(Debug, Default)]
pub struct ZeroShare;

impl Policy for ZeroShare {
    fn name(&self) -> &'static str {
        "zero"
    }

    fn reclaim(&self, _ctx: &Ctx<'_>, _pages_wanted: u64) -> Result<u64> {
        Ok(0)
    }
}
