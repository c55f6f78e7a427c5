//! The latency plot: an SVG of the round-trip latency distributions at one size (what
//! `compare --cdf-out` writes and `compare/run.sh` keeps as `docs/compare-cdf-64B.svg`).
//!
//! Invariants: pure formatting of the rows it is given (no I/O); one series per peer, in
//! [`Peer::ALL`]'s order, each with a fixed colour; spinning peers solid, blocking ones dashed.

use std::fmt::Write as _;

use super::{Mode, Peer, Row};

const COLOURS: [&str; 9] = [
    "#d62728", "#ff7f0e", "#1f77b4", "#17becf", "#9467bd", "#2ca02c", "#8c564b", "#7f7f7f",
    "#bcbd22",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An SVG plot of the round-trip latency distributions at `size`: x is the latency (log
/// scale), y the fraction of round trips at or below it on a "nines" scale (0, 90 %, 99 %,
/// 99.9 %…), so the tails are visible. `None` if no row has a distribution.
pub fn cdf_svg(rows: &[Row], size: usize, title: &str) -> Option<String> {
    let series: Vec<(Peer, &[(f64, u64)])> = Peer::ALL
        .iter()
        .filter_map(|p| {
            rows.iter()
                .find(|r| {
                    r.peer == *p
                        && r.mode == Mode::RoundTrip
                        && r.size == size
                        && r.error.is_none()
                        && !r.cdf.is_empty()
                })
                .map(|r| (*p, r.cdf.as_slice()))
        })
        .collect();
    if series.is_empty() {
        return None;
    }
    let (w, h) = (960.0f64, 560.0f64);
    let (ml, mr, mt, mb) = (95.0, 190.0, 50.0, 60.0);
    let pw = w - ml - mr;
    let ph = h - mt - mb;
    let all = series.iter().flat_map(|(_, c)| c.iter());
    let lo = all.clone().map(|&(_, ns)| ns.max(1)).min()? as f64 / 1e3;
    let hi = all.clone().map(|&(_, ns)| ns.max(1)).max()? as f64 / 1e3;
    let top = all.map(|&(n, _)| n).fold(0.0f64, f64::max).ceil().max(1.0);
    let x0 = lo.log10().floor();
    let x1 = hi.log10().ceil().max(x0 + 1.0);
    let xp = |v_us: f64| ml + (v_us.max(1e-3).log10() - x0) / (x1 - x0) * pw;
    let yp = |nines: f64| mt + ph - nines / top * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#,
        ml + pw / 2.0,
        esc(title)
    );
    // Grid and axes.
    let mut e = x0 as i32;
    while e as f64 <= x1 {
        for m in 1..10 {
            let v = m as f64 * 10f64.powi(e);
            let x = xp(v);
            if x < ml - 0.5 || x > ml + pw + 0.5 {
                continue;
            }
            let stroke = if m == 1 { "#bbb" } else { "#eee" };
            let _ = writeln!(
                s,
                r#"<line x1="{x:.1}" y1="{mt}" x2="{x:.1}" y2="{:.1}" stroke="{stroke}"/>"#,
                mt + ph
            );
            if m == 1 {
                let label = if v >= 1.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v}")
                };
                let _ = writeln!(
                    s,
                    r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
                    mt + ph + 18.0
                );
            }
        }
        e += 1;
    }
    let mut ticks: Vec<f64> = (0..=(top as i32)).map(f64::from).collect();
    ticks.insert(1, 2f64.log10()); // the median
    for nines in ticks {
        let y = yp(nines);
        let label = format!("{} %", trim(100.0 * (1.0 - 10f64.powf(-nines))));
        let _ = writeln!(
            s,
            r##"<line x1="{ml}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            ml + pw,
            ml - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">round-trip latency, µs (log scale)</text>"#,
        ml + pw / 2.0,
        h - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">round trips at or below (percentile, nines scale)</text>"#,
        mt + ph / 2.0,
        mt + ph / 2.0
    );
    for (i, (p, cdf)) in series.iter().enumerate() {
        let colour = COLOURS[Peer::ALL.iter().position(|q| q == p).unwrap_or(i) % COLOURS.len()];
        let mut pts = String::new();
        for &(nines, ns) in cdf.iter() {
            let _ = write!(pts, "{:.1},{:.1} ", xp(ns as f64 / 1e3), yp(nines));
        }
        let dash = if p.spins() {
            ""
        } else {
            r#" stroke-dasharray="6 3""#
        };
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/>"#,
            pts.trim_end()
        );
        let ly = mt + 14.0 + i as f64 * 20.0;
        let lx = ml + pw + 16.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="3"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 26.0,
            lx + 32.0,
            ly + 4.0,
            esc(p.name())
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{:.1}" font-size="11" fill="#555">solid: spinning</text><text x="{}" y="{:.1}" font-size="11" fill="#555">dashed: blocking</text>"##,
        ml + pw + 16.0,
        mt + 24.0 + series.len() as f64 * 20.0,
        ml + pw + 16.0,
        mt + 40.0 + series.len() as f64 * 20.0
    );
    s.push_str("</svg>\n");
    Some(s)
}

fn trim(q: f64) -> String {
    let s = format!("{q:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}
