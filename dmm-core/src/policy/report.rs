// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Free page reporting: the cheapest reclaim. Reported pages are punched as
//! the reports arrive ([`crate::vm::Vm::release`]), so there is nothing left
//! to take when the pool shrinks: [`Report::reclaim`] frees 0.

use super::{Ctx, Policy};
use crate::Result;

/// The reporting policy.
#[derive(Debug, Default)]
pub struct Report;

impl Policy for Report {
    fn name(&self) -> &'static str {
        "report"
    }

    fn reclaim(&self, _ctx: &Ctx<'_>, _pages_wanted: u64) -> Result<u64> {
        Ok(0)
    }
}
