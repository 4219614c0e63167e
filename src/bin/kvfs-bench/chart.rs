//! The latency chart: one panel per timed row, latency by percentile for kvfs and its baseline
//! (the HdrHistogram layout: percentiles on a "nines" axis so the tail gets room, latency on a
//! log axis). Plain SVG written by hand: a few lines of markup do not justify a plotting crate
//! and its build time.

use std::fmt::Write as _;

use crate::measure::Dist;
use crate::report::Row;

const PANEL_W: f64 = 520.0;
const PANEL_H: f64 = 250.0;
const LEFT: f64 = 62.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 40.0;
const COLUMNS: usize = 2;
/// Highest percentile drawn: 99.99 % (4 nines).
const MAX_NINES: f64 = 4.0;
const KVFS_COLOR: &str = "#1f6fb4";
const BASE_COLOR: &str = "#e07b00";

fn nines(q: f64) -> f64 {
    (-(1.0 - q).max(1e-4).log10()).clamp(0.0, MAX_NINES)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn latency_label(us: f64) -> String {
    match us {
        u if u >= 1e6 => format!("{:.0} s", u / 1e6),
        u if u >= 1e3 => format!("{:.0} ms", u / 1e3),
        u if u >= 1.0 => format!("{u:.0} us"),
        u => format!("{:.0} ns", u * 1e3),
    }
}

/// Room for the title and the machine line above the panels.
const HEADER: f64 = 50.0;

/// An SVG document with one panel per row that has a latency distribution.
pub fn svg(rows: &[Row], title: &str, subtitle: &str) -> String {
    let panels: Vec<&Row> = rows.iter().filter(|r| r.kvfs.is_some()).collect();
    let grid_rows = panels.len().div_ceil(COLUMNS).max(1);
    let width = PANEL_W * COLUMNS as f64;
    let height = HEADER + PANEL_H * grid_rows as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        out,
        r##"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="14" font-weight="bold">{}</text><text x="10" y="38" fill="#555">{}</text>"##,
        escape(title),
        escape(subtitle)
    );
    for (i, row) in panels.iter().enumerate() {
        let x0 = PANEL_W * (i % COLUMNS) as f64;
        let y0 = HEADER + PANEL_H * (i / COLUMNS) as f64;
        panel(&mut out, row, x0, y0);
    }
    out.push_str("</svg>\n");
    out
}

fn panel(out: &mut String, row: &Row, x0: f64, y0: f64) {
    let series: Vec<(&Dist, &str, &str)> = [
        row.kvfs.as_ref().map(|d| (d, "kvfs", KVFS_COLOR)),
        row.base
            .as_ref()
            .map(|d| (d, row.baseline.unwrap_or("baseline"), BASE_COLOR)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(d, _, _)| {
            d.cdf_points()
                .into_iter()
                .map(|(q, us)| (nines(q), us.max(0.01).log10()))
                .collect()
        })
        .collect();
    let (lo, hi) = points
        .iter()
        .flatten()
        .fold((f64::MAX, f64::MIN), |(lo, hi), (_, y)| {
            (lo.min(*y), hi.max(*y))
        });
    let (lo, hi) = if lo <= hi {
        (lo.floor(), hi.ceil().max(lo.floor() + 1.0))
    } else {
        (0.0, 1.0)
    };
    let plot_w = PANEL_W - LEFT - RIGHT;
    let plot_h = PANEL_H - TOP - BOTTOM;
    let px = |n: f64| x0 + LEFT + n / MAX_NINES * plot_w;
    let py = |l: f64| y0 + TOP + plot_h - (l - lo) / (hi - lo) * plot_h;

    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-weight="bold">{}</text>"#,
        x0 + LEFT,
        y0 + 18.0,
        escape(&row.title)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{}" y="{}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>"##,
        x0 + LEFT,
        y0 + TOP
    );
    for (n, label) in [
        (0.0, "0%"),
        (std::f64::consts::LOG10_2, "50%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
    ] {
        let x = px(n);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            y0 + TOP,
            y0 + TOP + plot_h,
            y0 + TOP + plot_h + 14.0
        );
    }
    let mut decade = lo;
    while decade <= hi {
        let y = py(decade);
        let _ = writeln!(
            out,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 + LEFT,
            x0 + LEFT + plot_w,
            x0 + LEFT - 4.0,
            y + 4.0,
            latency_label(10f64.powf(decade))
        );
        decade += 1.0;
    }
    let _ = writeln!(
        out,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">percentile</text>"##,
        x0 + LEFT + plot_w / 2.0,
        y0 + TOP + plot_h + 28.0
    );
    for (k, ((_, name, color), pts)) in series.iter().zip(&points).enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|(n, l)| format!("{:.1},{:.1}", px(*n), py(*l)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#,
            path.join(" ")
        );
        let ly = y0 + TOP + 12.0 + 14.0 * k as f64;
        let lx = x0 + LEFT + 8.0;
        let _ = writeln!(
            out,
            r#"<line x1="{lx:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
            ly - 4.0,
            lx + 16.0,
            ly - 4.0,
            lx + 20.0,
            escape(name)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
        assert_eq!(nines(1.0), MAX_NINES);
    }

    #[test]
    fn labels() {
        assert_eq!(latency_label(1.0), "1 us");
        assert_eq!(latency_label(1000.0), "1 ms");
        assert_eq!(latency_label(0.1), "100 ns");
        assert_eq!(escape("a & <b>"), "a &amp; &lt;b&gt;");
    }
}
