// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Platform-independent DMM state: the P2M table and its state machine, the
//! memory pool, and the reverse map.

pub mod p2m;
pub mod pool;
pub mod rmap;

pub use p2m::P2m;
pub use pool::Pool;
pub use rmap::{Backing, Rmap};

use serde::{Deserialize, Serialize};

/// State of one guest page (P2M entry state). CONTRACT: the numeric values are
/// part of the control protocol (`page-states`) and of `dmmctl map`.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PageState {
    /// Never touched since creation or last release: no host memory.
    Unpopulated = 0,
    /// Backed by host memory.
    Resident = 1,
    /// Reclaimed because it held zeros; reads as zeros.
    Zero = 2,
    /// Given up by the balloon driver.
    Ballooned = 3,
    /// Reported free by the guest.
    Reported = 4,
    /// Content in the swap store.
    Swapped = 5,
    /// Transition under way; faults on it wait.
    InFlight = 6,
    /// Content lost (a swap slot that could not be read back intact) and
    /// the guest told: every access is a memory error. Never reclaimed,
    /// never filled; cleared when the guest gives the page up or resets.
    Poisoned = 7,
}

impl PageState {
    /// Every state, in numeric order.
    pub const ALL: [PageState; 8] = [
        PageState::Unpopulated,
        PageState::Resident,
        PageState::Zero,
        PageState::Ballooned,
        PageState::Reported,
        PageState::Swapped,
        PageState::InFlight,
        PageState::Poisoned,
    ];

    /// One-letter code used by `page-states` and `dmmctl`.
    pub const fn letter(self) -> char {
        match self {
            PageState::Unpopulated => '.',
            PageState::Resident => 'R',
            PageState::Zero => 'Z',
            PageState::Ballooned => 'B',
            PageState::Reported => 'F',
            PageState::Swapped => 'S',
            PageState::InFlight => '~',
            PageState::Poisoned => 'X',
        }
    }

    /// The state of a stored byte; `None` for a byte no state has.
    pub const fn from_u8(v: u8) -> Option<PageState> {
        match v {
            0 => Some(PageState::Unpopulated),
            1 => Some(PageState::Resident),
            2 => Some(PageState::Zero),
            3 => Some(PageState::Ballooned),
            4 => Some(PageState::Reported),
            5 => Some(PageState::Swapped),
            6 => Some(PageState::InFlight),
            7 => Some(PageState::Poisoned),
            _ => None,
        }
    }

    /// True for states a demand fill may start from (no content to keep).
    pub const fn is_fillable(self) -> bool {
        matches!(
            self,
            PageState::Unpopulated | PageState::Zero | PageState::Ballooned | PageState::Reported
        )
    }
}
