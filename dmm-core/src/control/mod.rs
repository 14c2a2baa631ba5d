// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The control socket of a VM (`docs/control-protocol.md`): line-oriented JSON
//! over a Unix stream socket, served by [`server::Server`] and spoken by
//! [`client::Client`] (`dmmctl`, tests) and by vhost-balloon.

pub mod cli;
pub mod client;
pub mod map;
pub mod protocol;
pub mod server;

pub use client::{Client, ClientError};
pub use server::{serve, Server, ServerError};
