// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The platform mechanism: how page-state changes reach real memory.
//! `linux`: memfd + userfaultfd + hole punch. `sim`: in-memory, for tests.
