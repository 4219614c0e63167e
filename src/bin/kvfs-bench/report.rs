//! What a run found: rows (kvfs beside its baseline), correctness checks, and their three
//! renderings: the stdout table, the JSON result file, and (in `chart`) the SVG.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Map, Value as Json, json};

use crate::harness::Machine;
use crate::measure::Dist;

/// One figure of a row, for kvfs and, where one exists, for the row's baseline.
#[derive(Clone, Debug)]
pub struct Figure {
    pub key: &'static str,
    pub label: String,
    pub kvfs: f64,
    pub base: Option<f64>,
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct Row {
    /// Stable identifier, the key in the JSON file.
    pub id: &'static str,
    pub title: String,
    /// What kvfs is compared with: "tmpfs" mostly; None when nothing compares.
    pub baseline: Option<&'static str>,
    pub kvfs: Option<Dist>,
    pub base: Option<Dist>,
    /// Unit latencies are shown in: 1.0 = microseconds, 1000.0 = milliseconds.
    pub latency_scale: f64,
    /// Whether ops/s means something (not for one-off samples such as cold reads).
    pub throughput: bool,
    pub figures: Vec<Figure>,
    pub note: Option<String>,
}

impl Row {
    pub fn new(id: &'static str, title: impl Into<String>, baseline: Option<&'static str>) -> Row {
        Row {
            id,
            title: title.into(),
            baseline,
            kvfs: None,
            base: None,
            latency_scale: 1.0,
            throughput: true,
            figures: Vec::new(),
            note: None,
        }
    }

    pub fn dists(mut self, kvfs: Dist, base: Option<Dist>) -> Row {
        self.kvfs = Some(kvfs);
        self.base = base;
        self
    }

    pub fn in_ms(mut self) -> Row {
        self.latency_scale = 1000.0;
        self
    }

    pub fn no_throughput(mut self) -> Row {
        self.throughput = false;
        self
    }

    pub fn figure(
        mut self,
        key: &'static str,
        label: impl Into<String>,
        kvfs: f64,
        base: Option<f64>,
    ) -> Row {
        self.figures.push(Figure {
            key,
            label: label.into(),
            kvfs,
            base,
        });
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = Some(note.into());
        self
    }

    fn unit(&self) -> &'static str {
        if self.latency_scale >= 1000.0 {
            "ms"
        } else {
            "us"
        }
    }

    /// Throughput and percentiles from the distributions, then the extra figures.
    fn lines(&self) -> Vec<Figure> {
        let mut lines = Vec::new();
        if let Some(k) = &self.kvfs {
            let b = self.base.as_ref();
            let s = self.latency_scale;
            if self.throughput {
                lines.push(Figure {
                    key: "ops_per_s",
                    label: "ops/s".into(),
                    kvfs: k.ops_per_s(),
                    base: b.map(Dist::ops_per_s),
                });
            }
            for (key, q, name) in [("p50", 0.5, "p50"), ("p99", 0.99, "p99")] {
                lines.push(Figure {
                    key,
                    label: format!("{name} {}", self.unit()),
                    kvfs: k.quantile_us(q) / s,
                    base: b.map(|b| b.quantile_us(q) / s),
                });
            }
        }
        lines.extend(self.figures.iter().cloned());
        lines
    }
}

/// A correctness check; any failure makes the run exit non-zero.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

pub struct Report {
    pub mode: &'static str,
    pub machine: Machine,
    pub kvfs_binary: String,
    pub rows: Vec<Row>,
    pub checks: Vec<Check>,
    pub duration: Duration,
}

impl Report {
    pub fn check(&mut self, name: impl Into<String>, ok: bool, detail: impl Into<String>) {
        let check = Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        };
        let mark = if check.ok { "ok  " } else { "FAIL" };
        eprintln!("  check {mark} {}: {}", check.name, check.detail);
        self.checks.push(check);
    }

    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    pub fn machine_text(&self) -> String {
        let m = &self.machine;
        format!(
            "machine: nproc {}, cpu {}, kernel {}, load average at start {}",
            m.nproc, m.cpu, m.kernel, m.loadavg
        )
    }

    /// The stdout table: one line per figure, kvfs beside its baseline and their ratio.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<48} {:<22} {:>12} {:>12} {:>8}  BASELINE",
            "ROW", "METRIC", "KVFS", "BASELINE", "RATIO"
        );
        for row in &self.rows {
            let mut title = row.title.clone();
            for (i, f) in row.lines().iter().enumerate() {
                let base = f.base.map_or(String::new(), number);
                let ratio = match f.base {
                    Some(b) if b != 0.0 => format!("{:.2}", f.kvfs / b),
                    _ => String::new(),
                };
                let label = if i == 0 {
                    row.baseline.unwrap_or("-")
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "{:<48} {:<22} {:>12} {:>12} {:>8}  {}",
                    std::mem::take(&mut title),
                    f.label,
                    number(f.kvfs),
                    base,
                    ratio,
                    label
                );
            }
            if let Some(note) = &row.note {
                let _ = writeln!(out, "{:<48} ({note})", "");
            }
        }
        out
    }

    pub fn json(&self) -> Json {
        let mut rows = Map::new();
        for row in &self.rows {
            let mut figures = Map::new();
            for f in row.lines() {
                let ratio = f.base.filter(|b| *b != 0.0).map(|b| f.kvfs / b);
                figures.insert(
                    f.key.to_owned(),
                    json!({ "label": f.label, "kvfs": f.kvfs, "baseline": f.base, "ratio": ratio }),
                );
            }
            rows.insert(
                row.id.to_owned(),
                json!({
                    "title": row.title,
                    "baseline": row.baseline,
                    "figures": figures,
                    "kvfs_latency": row.kvfs.as_ref().map(dist_json),
                    "baseline_latency": row.base.as_ref().map(dist_json),
                    "note": row.note,
                }),
            );
        }
        let m = &self.machine;
        json!({
            "schema": 1,
            "mode": self.mode,
            "ok": self.ok(),
            "duration_s": self.duration.as_secs_f64(),
            "kvfs_binary": self.kvfs_binary,
            "machine": {
                "nproc": m.nproc,
                "cpu": m.cpu,
                "kernel": m.kernel,
                "loadavg_start": m.loadavg,
            },
            "rows": rows,
            "checks": self.checks.iter().map(|c| json!({
                "name": c.name, "ok": c.ok, "detail": c.detail,
            })).collect::<Vec<_>>(),
        })
    }
}

fn dist_json(d: &Dist) -> Json {
    json!({
        "count": d.count(),
        "ops_per_s": d.ops_per_s(),
        "p50_us": d.p50_us(),
        "p90_us": d.quantile_us(0.9),
        "p99_us": d.p99_us(),
        "max_us": d.quantile_us(1.0),
        "cdf_us": d.cdf_points().iter().map(|(q, us)| json!([q, us])).collect::<Vec<_>>(),
    })
}

/// Three significant figures, thousands separated; integers as integers.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if a >= 1000.0 {
        let mut digits = format!("{:.0}", a);
        let mut grouped = String::new();
        while digits.len() > 3 {
            let tail = digits.split_off(digits.len() - 3);
            grouped = format!(",{tail}{grouped}");
        }
        let sign = if v < 0.0 { "-" } else { "" };
        format!("{sign}{digits}{grouped}")
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(1234567.4), "1,234,567");
        assert_eq!(number(-2500.0), "-2,500");
        assert_eq!(number(999.6), "1000");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(1.234), "1.23");
        assert_eq!(number(7.0), "7");
    }
}
