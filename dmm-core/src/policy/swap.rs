// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Swapping: the reclaim that always works (until the store is full).
//! Swap-out goes through [`super::evict`] (write-protect, copy, punch, only
//! then Swapped); a fault on a Swapped page is a swap-in
//! ([`super::evict::swap_in`]).
//!
//! Which pages: a CLOCK hand over guest-physical pages ([`Swap::reclaim`])
//! that skips pages swapped in recently (their second chance): a page that
//! came back from swap is hot, it will not be picked on the next pass.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::evict::{self, Target, BATCH};
use super::{Counters, Ctx, Policy};
use crate::model::PageState;
use crate::swap::SwapStore;
use crate::{Error, Result};

/// The swap policy.
#[derive(Debug, Default)]
pub struct Swap {
    store: Option<SwapStore>,
    hand: AtomicU64,
    /// Pages swapped in since the hand last passed them (second chance).
    referenced: Mutex<HashSet<u64>>,
}

impl Swap {
    /// Swapping to `store` (`None`: the policy is off and frees nothing).
    pub fn new(store: Option<SwapStore>) -> Self {
        Swap {
            store,
            hand: AtomicU64::new(0),
            referenced: Mutex::new(HashSet::new()),
        }
    }

    /// The store, if swapping is on.
    pub fn store(&self) -> Option<&SwapStore> {
        self.store.as_ref()
    }

    fn referenced(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        // A set of pfns: a poisoned lock still holds usable values.
        self.referenced.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Up to `want` resident, unreferenced pages from the hand on, ascending
    /// within the batch; moves the hand. Clears the reference of pages it passes.
    fn pick(&self, ctx: &Ctx<'_>, want: usize, budget: &mut u64) -> Vec<u64> {
        let pages = ctx.p2m.pages();
        let mut out = Vec::with_capacity(want);
        let mut pfn = self.hand.load(Ordering::Relaxed) % pages.max(1);
        let mut refs = self.referenced();
        while out.len() < want && *budget > 0 {
            *budget -= 1;
            if matches!(ctx.p2m.get(pfn), Ok(PageState::Resident)) && !refs.remove(&pfn) {
                out.push(pfn);
            }
            pfn += 1;
            if pfn >= pages {
                pfn = 0;
                // Keep each batch ascending (runs coalesce).
                break;
            }
        }
        self.hand.store(pfn, Ordering::Relaxed);
        out
    }
}

impl Policy for Swap {
    fn name(&self) -> &'static str {
        "swap"
    }

    fn on_fault(&self, ctx: &Ctx<'_>, pfn: u64, state: PageState, _write: bool) -> Result<bool> {
        let Some(store) = &self.store else {
            return Ok(false);
        };
        if state != PageState::Swapped {
            return Ok(false);
        }
        evict::swap_in(ctx, store, pfn)?;
        self.referenced().insert(pfn);
        Ok(true)
    }

    fn reclaim(&self, ctx: &Ctx<'_>, pages_wanted: u64) -> Result<u64> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let mut freed = 0;
        // Two full turns of the hand at most (the second ignores references).
        let mut budget = 2 * ctx.p2m.pages();
        while freed < pages_wanted && budget > 0 {
            // Never take more pages than the store has room for (identical
            // and zero pages would fit, but a full store should cost nothing).
            let st = store.stats();
            let room = st.capacity.saturating_sub(st.used);
            if room == 0 {
                Counters::add(&ctx.counters.swap_full, 1);
                if freed == 0 {
                    return Err(Error::SwapFull { slots: st.capacity });
                }
                break;
            }
            let want = usize::try_from((pages_wanted - freed).min(room))
                .unwrap_or(BATCH)
                .min(BATCH);
            let batch = self.pick(ctx, want, &mut budget);
            if batch.is_empty() {
                continue;
            }
            let out = evict::evict(ctx, &batch, Target::Swap(store))?;
            freed += out.freed();
            if out.full > 0 {
                if freed == 0 {
                    return Err(Error::SwapFull {
                        slots: store.capacity(),
                    });
                }
                break;
            }
        }
        Ok(freed)
    }
}
