// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `dmmctl map`: the P2M as a picture, one pixel per page, rows of
//! [`MAP_WIDTH`] pages, one colour per state, with a legend. SVG, no
//! dependency: each row is drawn as runs of one state (one `<rect>` per run).

use std::fmt::Write as _;

/// Pages per row.
pub const MAP_WIDTH: usize = 1024;

/// Legend: page-state letter, name, colour.
pub const LEGEND: [(char, &str, &str); 8] = [
    ('.', "unpopulated", "#f0f0f0"),
    ('R', "resident", "#2b6cb0"),
    ('Z', "zero", "#a0aec0"),
    ('B', "ballooned", "#38a169"),
    ('F', "reported", "#9ae6b4"),
    ('S', "swapped", "#dd6b20"),
    ('~', "in-flight", "#e53e3e"),
    ('X', "poisoned", "#000000"),
];

fn colour(letter: char) -> &'static str {
    LEGEND
        .iter()
        .find(|(l, _, _)| *l == letter)
        .map_or("#000000", |(_, _, c)| c)
}

/// Renders `states` (one letter per page, as `page-states` answers) as SVG.
pub fn render_svg(states: &str, page_size: u64) -> String {
    let letters: Vec<char> = states.chars().collect();
    let rows = letters.len().div_ceil(MAP_WIDTH).max(1);
    let legend_h = 20 * LEGEND.len() + 30;
    let (w, h) = (MAP_WIDTH.max(360), rows + 10 + legend_h);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" shape-rendering="crispEdges">"#
    );
    let _ = writeln!(out, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    for (y, row) in letters.chunks(MAP_WIDTH).enumerate() {
        let mut x = 0;
        for run in row.chunk_by(|a, b| a == b) {
            let _ = writeln!(
                out,
                r#"<rect x="{x}" y="{y}" width="{}" height="1" fill="{}"/>"#,
                run.len(),
                colour(run[0])
            );
            x += run.len();
        }
    }
    let mut y = rows + 10;
    let _ = writeln!(
        out,
        r#"<text x="0" y="{}" font-family="sans-serif" font-size="13">{} pages of {} bytes, {} per row</text>"#,
        y + 14,
        letters.len(),
        page_size,
        MAP_WIDTH
    );
    y += 24;
    for (letter, name, c) in LEGEND {
        let n = letters.iter().filter(|&&l| l == letter).count();
        let _ = writeln!(
            out,
            r#"<rect x="0" y="{y}" width="14" height="14" fill="{c}" stroke="black" stroke-width="0.5"/><text x="20" y="{}" font-family="sans-serif" font-size="13">{name} ({letter}): {n} pages</text>"#,
            y + 12
        );
        y += 20;
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_legend() {
        let states = "R".repeat(1000) + &"S".repeat(48) + "Z.";
        let svg = render_svg(&states, 4096);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        // Row 0: R run then S run (24 of the 48 fill row 0), row 1: S, Z, '.'.
        assert!(svg.contains(r##"<rect x="0" y="0" width="1000" height="1" fill="#2b6cb0"/>"##));
        assert!(svg.contains(r##"<rect x="1000" y="0" width="24" height="1" fill="#dd6b20"/>"##));
        assert!(svg.contains(r##"<rect x="0" y="1" width="24" height="1" fill="#dd6b20"/>"##));
        assert!(svg.contains("swapped (S): 48 pages"));
        assert!(svg.contains("resident (R): 1000 pages"));
    }
}
