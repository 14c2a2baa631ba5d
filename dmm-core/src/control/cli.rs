// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Command-line helpers of `dmmctl`: size and range parsing, human-readable
//! statistics and page maps.

use std::fmt::Write as _;

use super::protocol::StatsAnswer;

/// Parses a byte size: `4096`, `0x1000`, `512K`, `512M`, `2G`, `1T` (binary
/// units; `KiB`/`KB`/`k` spellings too). The error names the value.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad =
        || format!("invalid size '{s}': expected bytes, or a number with a K, M, G or T suffix");
    let t = s.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|_| bad());
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("invalid size '{s}': larger than 2^64 bytes"))
}

/// Parses `GPA:LEN` (each as [`parse_size`]), e.g. `0x100000:2M`.
pub fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (gpa, len) = s
        .split_once(':')
        .ok_or_else(|| format!("invalid range '{s}': expected GPA:LEN, e.g. 0x100000:2M"))?;
    let gpa = parse_size(gpa).map_err(|e| format!("invalid range '{s}': address: {e}"))?;
    let len = parse_size(len).map_err(|e| format!("invalid range '{s}': length: {e}"))?;
    Ok((gpa, len))
}

/// `bytes` as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    // Precision loss above 2^53 bytes is irrelevant for display.
    #[allow(clippy::cast_precision_loss)]
    let m = bytes as f64 / f64::from(1u32 << 20);
    format!("{m:.1} MiB")
}

/// Human-readable statistics.
pub fn format_stats(a: &StatsAnswer) -> String {
    let s = &a.stats;
    let page = s.page_size.max(1);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "VM size         {} ({} pages of {} bytes)",
        mib(s.size),
        s.size / page,
        page
    );
    let _ = writeln!(out, "pool            {}", mib(s.pool_size));
    let _ = writeln!(
        out,
        "resident        {} ({} pages)",
        mib(s.resident_pages * page),
        s.resident_pages
    );
    let _ = writeln!(out, "host allocated  {}", mib(s.host_allocated_bytes));
    let _ = writeln!(
        out,
        "page states     resident {}, unpopulated {}, zero {}, ballooned {}, reported {}, swapped {}, in-flight {}",
        s.resident_pages,
        s.unpopulated_pages,
        s.zero_pages,
        s.ballooned_pages,
        s.reported_pages,
        s.swapped_pages,
        s.inflight_pages
    );
    let _ = writeln!(
        out,
        "balloon         target {} pages ({}), actual {} pages ({})",
        s.balloon_target_pages,
        mib(s.balloon_target_pages * 4096),
        s.balloon_actual_pages,
        mib(s.balloon_actual_pages * 4096)
    );
    let _ = writeln!(
        out,
        "reclaimed       balloon {}, report {}, hint {} ({} rounds, {} pages kept), zero {}, swap {}",
        mib(s.reclaimed_balloon_bytes),
        mib(s.reclaimed_report_bytes),
        mib(s.reclaimed_hint_bytes),
        s.hint_rounds,
        s.hint_kept_pages,
        mib(s.reclaimed_zero_bytes),
        mib(s.reclaimed_swap_bytes)
    );
    let _ = writeln!(
        out,
        "activity        faults {}, demand fills {}, swap-ins {}, swap-outs {}, ignored requests {}",
        s.faults, s.demand_fills, s.swap_ins, s.swap_outs, s.ignored_requests
    );
    let _ = writeln!(
        out,
        "devices         {} attached, {} faults, {} writes caught between copy and punch",
        s.devices, s.device_faults, s.device_write_races
    );
    let _ = writeln!(
        out,
        "swap            slots {}/{} used, {} shared, full {}, write faults {}, aborted {}, device conflicts {}, pinned {} pages, behind {}",
        s.swap_slots_used,
        s.swap_slots_total,
        s.swap_dedup_hits,
        s.swap_full,
        s.wp_faults,
        s.reclaim_aborts,
        s.device_populated_conflicts,
        s.pinned_pages,
        s.reclaim_behind
    );
    let per_page = s
        .swap_stored_bytes
        .checked_div(s.swap_slots_used)
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "swap file       {} compressed of {} stored, {} in slots ({per_page} bytes per page), {} on disk, corrupt {}",
        s.swap_compressed_slots,
        s.swap_slots_used,
        mib(s.swap_stored_bytes),
        mib(s.swap_file_bytes),
        s.swap_corrupt
    );
    if a.guest.is_empty() {
        let _ = writeln!(out, "guest           (no statistics reported)");
    } else {
        let values: Vec<String> = a.guest.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "guest           {}", values.join(", "));
    }
    out
}

/// Page states as rows of 64 letters, each prefixed by its first PFN, then
/// a count per letter.
pub fn format_states(first_pfn: u64, states: &str) -> String {
    let mut out = String::new();
    let letters: Vec<char> = states.chars().collect();
    for (i, row) in letters.chunks(64).enumerate() {
        let pfn = first_pfn + 64 * i as u64;
        let _ = writeln!(out, "{pfn:#010x}  {}", row.iter().collect::<String>());
    }
    let legend = [
        ('R', "resident"),
        ('.', "unpopulated"),
        ('Z', "zero"),
        ('B', "ballooned"),
        ('F', "reported"),
        ('S', "swapped"),
        ('~', "in-flight"),
        ('X', "poisoned"),
    ];
    let counts: Vec<String> = legend
        .iter()
        .map(|&(c, name)| format!("{c} {name} {}", letters.iter().filter(|&&l| l == c).count()))
        .collect();
    let _ = writeln!(out, "{}", counts.join(", "));
    out
}

/// One line about a page (`dmmctl page`).
pub fn format_page(p: &crate::vm::PageInfo) -> String {
    let state = serde_json::to_value(p.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut out = format!(
        "gpa {:#x} (pfn {}, {} bytes): {state}{}",
        p.gpa,
        p.pfn,
        p.len,
        if p.pinned { ", pinned" } else { "" }
    );
    if let Some(s) = p.slot {
        let _ = write!(
            out,
            "; swap slot {} at file offset {:#x}, {} bytes{}, {} user{}",
            s.id,
            s.location.offset,
            s.location.len,
            if s.location.compressed {
                " compressed"
            } else {
                ""
            },
            s.location.users,
            if s.location.users == 1 { "" } else { "s" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("4k"), Ok(4096));
        for bad in ["", "M", "12Q", "-1", "1.5G", "99999999999T"] {
            let e = parse_size(bad).expect_err(bad);
            assert!(e.contains(&format!("'{bad}'")), "{e}");
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("0x100000:2M"), Ok((0x10_0000, 2 << 20)));
        assert_eq!(parse_range("0:4096"), Ok((0, 4096)));
        for bad in ["0x1000", "x:1", "1:y"] {
            let e = parse_range(bad).expect_err(bad);
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn states_rows() {
        let s: String = "R".repeat(70) + "..";
        let out = format_states(128, &s);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], format!("0x00000080  {}", "R".repeat(64)));
        assert_eq!(lines[1], format!("0x000000c0  {}..", "R".repeat(6)));
        assert!(
            lines[2].starts_with("R resident 70, . unpopulated 2,"),
            "{}",
            lines[2]
        );
    }
}
