// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Properties of the request parser: no input panics it, every refusal has
//! a message, and the client's encoding of any request parses back to it.
#![allow(clippy::unwrap_used)]

use dmm::control::protocol::{
    ErrorCode, GuestValues, NumPages, PageStates, Ranges, Release, Request, SetPool,
};
use dmm::vm::ReleaseReason;
use proptest::prelude::*;
use serde_json::Value;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-z_-]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("cmd".to_owned()),
                    Just("bytes".to_owned()),
                    Just("ranges".to_owned()),
                    Just("reason".to_owned()),
                    Just("num_pages".to_owned()),
                    "[a-z_]{1,8}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn command() -> impl Strategy<Value = &'static str> {
    prop::sample::select(dmm::control::protocol::COMMANDS)
}

fn request() -> impl Strategy<Value = Request> {
    let ranges = prop::collection::vec((any::<u64>(), any::<u64>()), 0..8);
    prop_oneof![
        Just(Request::Stats),
        Just(Request::SubscribeBalloon),
        any::<u64>().prop_map(|bytes| Request::SetPool(SetPool { bytes })),
        (any::<u64>(), any::<u64>())
            .prop_map(|(first_pfn, count)| Request::PageStates(PageStates { first_pfn, count })),
        (any::<bool>(), ranges.clone()).prop_map(|(b, ranges)| Request::Release(Release {
            reason: if b {
                ReleaseReason::Balloon
            } else {
                ReleaseReason::Report
            },
            ranges
        })),
        ranges.prop_map(|ranges| Request::ReclaimBack(Ranges { ranges })),
        any::<u64>().prop_map(|num_pages| Request::SetBalloonTarget(NumPages { num_pages })),
        any::<u64>().prop_map(|num_pages| Request::BalloonActual(NumPages { num_pages })),
        prop::collection::btree_map("[a-z-]{1,10}", any::<u64>(), 0..5)
            .prop_map(|values| Request::GuestStats(GuestValues { values })),
    ]
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(line in ".{0,200}") {
        if let Err(e) = Request::parse(&line) {
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn arbitrary_json_is_refused_with_a_code(v in json_value()) {
        if let Err(e) = Request::parse(&v.to_string()) {
            prop_assert!(!e.message.is_empty());
            prop_assert!(matches!(e.code, ErrorCode::Malformed | ErrorCode::UnknownCommand), "{e}");
        }
    }

    #[test]
    fn known_commands_with_random_fields(cmd in command(), fields in json_value()) {
        let mut obj = match fields {
            Value::Object(m) => m,
            other => [("x".to_owned(), other)].into_iter().collect(),
        };
        obj.insert("cmd".to_owned(), Value::from(cmd));
        if let Err(e) = Request::parse(&Value::Object(obj).to_string()) {
            prop_assert_eq!(e.code, ErrorCode::Malformed, "{}", e);
            prop_assert!(e.message.starts_with(cmd), "{}", e);
        }
    }

    #[test]
    fn encoding_round_trips(req in request()) {
        prop_assert_eq!(Request::parse(&req.encode()).unwrap(), req);
    }
}

/// A `stats` answer of an older server (here: the first release's fields,
/// up to `host_allocated_bytes`) still parses; the fields it lacks read as 0.
#[test]
fn stats_of_older_servers_parse() {
    let mut v = serde_json::to_value(dmm::vm::Stats {
        host_allocated_bytes: 3,
        swap_slots_used: 3,
        swap_compressed_slots: 2,
        ..Default::default()
    })
    .unwrap();
    let obj = v.as_object_mut().unwrap();
    for f in [
        "wp_faults",
        "reclaim_aborts",
        "device_populated_conflicts",
        "swap_full",
        "reclaim_behind",
        "swap_slots_used",
        "swap_slots_total",
        "swap_dedup_hits",
        "pinned_pages",
        "swap_compressed_slots",
        "swap_stored_bytes",
        "swap_file_bytes",
        "swap_corrupt",
    ] {
        assert!(obj.remove(f).is_some(), "{f}");
    }
    let s: dmm::vm::Stats = serde_json::from_value(v).unwrap();
    assert_eq!(
        (
            s.host_allocated_bytes,
            s.swap_slots_used,
            s.swap_compressed_slots
        ),
        (3, 0, 0)
    );
}
