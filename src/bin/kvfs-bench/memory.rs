//! kvfs's resident memory after caching many secrets, against the payload it caches: 10,000
//! secrets (1,000 with `--quick`) of 1 KB, then of 25 KB (Key Vault's largest), each in a
//! fresh kvfs with room for all of them.

use std::path::PathBuf;
use std::time::Duration;

use crate::Ctx;
use crate::content::{self, READ_BUF};
use crate::harness::{self, Error, Result};
use crate::measure;
use crate::report::{Report, Row};

const MIB: f64 = 1024.0 * 1024.0;
const READERS: usize = 2;

pub fn run(ctx: &Ctx, report: &mut Report) -> Result<()> {
    for (id, size, label) in [
        ("rss_1k", 1024, "1 KB"),
        ("rss_25k", content::MAX_VALUE, "25 KB"),
    ] {
        one(ctx, report, id, size, label)?;
    }
    Ok(())
}

fn one(ctx: &Ctx, report: &mut Report, id: &'static str, size: usize, label: &str) -> Result<()> {
    let n = ctx.plan.rss_secrets;
    let names: Vec<String> = (0..n).map(|i| format!("m-{i:05}")).collect();
    let seed = |i: usize| 7_000_000 + (size as u64) * 100_000 + i as u64;
    let emu = ctx.emulator(id)?;
    for (i, name) in names.iter().enumerate() {
        emu.vault().set_secret(name, &content::value(seed(i), size));
    }
    let capacity = (2 * n).max(20_000).to_string();
    let mut mount = ctx.mount(
        &emu,
        &format!("kvfs-{id}"),
        &["--cache-capacity", &capacity],
    )?;
    harness::sleep(Duration::from_millis(300))?;
    let (rss_before, _) = mount.rss()?;

    // Each reader reads its share once and checks every byte.
    let files: Vec<(PathBuf, usize)> = names
        .iter()
        .enumerate()
        .map(|(i, name)| (mount.path.join(name), i))
        .collect();
    let share = n.div_ceil(READERS);
    let budget = measure::Budget {
        time: Duration::from_secs(600),
        max_ops: (share * READERS) as u64,
        warmup_ops: 0,
    };
    measure::run(READERS, budget, |t| {
        let files = &files;
        let mut buf = vec![0u8; READ_BUF];
        move |j| {
            let Some((path, i)) = files.get(t * share + j as usize) else {
                return Ok(());
            };
            let len = content::read_all(path, &mut buf)?;
            if buf.get(..len) != Some(content::value(seed(*i), size).as_bytes()) {
                return Err(Error(format!("{}: wrong bytes", path.display())));
            }
            Ok(())
        }
    })?;
    harness::sleep(Duration::from_millis(300))?;
    mount.check_running()?;
    let (rss_after, peak) = mount.rss()?;
    let gets = emu.vault().counters().get_secret;
    report.check(
        format!("caching {n} secrets of {label} fetches each once"),
        gets == n as u64,
        format!("{gets} GETs for {n} secrets"),
    );
    let payload = (n * size) as f64;
    let growth = rss_after.saturating_sub(rss_before) as f64;
    report.rows.push(
        Row::new(
            id,
            format!("kvfs RSS, {n} cached secrets of {label}"),
            Some("payload"),
        )
        .figure("rss_growth_mib", "RSS growth MiB", growth / MIB, Some(payload / MIB))
        .figure("rss_before_mib", "RSS mounted MiB", rss_before as f64 / MIB, None)
        .figure("rss_after_mib", "RSS after MiB", rss_after as f64 / MIB, None)
        .figure("rss_peak_mib", "RSS peak MiB", peak as f64 / MIB, None)
        .figure("kv_gets", "Key Vault GETs", gets as f64, None)
        .note(format!(
            "VmRSS of the kvfs process before and after reading every secret once; baseline = {n} x {label} of values; --cache-capacity {capacity}"
        )),
    );
    ctx.stop(report, mount, id)?;
    ctx.shutdown(emu);
    Ok(())
}
