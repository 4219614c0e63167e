//! Cached secrets side by side with tmpfs: reads (one hot file; round robin over 1,000 files),
//! stat, directory listings of 1,000 and 10,000 entries, a spawned `cat`, and the time from
//! `kvfs mount` to a usable mount.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Ctx;
use crate::content::{self, READ_BUF};
use crate::harness::{self, Context, Error, KvfsMount, Result, Tmpfs};
use crate::measure::{self, Budget, Dist};
use crate::report::{Report, Row};

/// Cache room for every file of the main vault, whatever kvfs's default.
const CACHE_CAPACITY: &str = "4096";

/// Both sides of a row: the same operation on kvfs and on tmpfs, alternating in `rounds`
/// slices of the budget, so that a change in the machine's load hits both sides alike.
fn both(
    kvfs: &Path,
    tmpfs: &Path,
    budget: Budget,
    rounds: u32,
    measure_one: impl Fn(&Path, Budget) -> Result<Dist>,
) -> Result<(Dist, Dist)> {
    let rounds = rounds.max(1);
    let slice = Budget {
        time: budget.time / rounds,
        max_ops: (budget.max_ops / u64::from(rounds)).max(1),
        warmup_ops: budget.warmup_ops,
    };
    let mut k = measure_one(kvfs, slice)?;
    let mut t = measure_one(tmpfs, slice)?;
    for _ in 1..rounds {
        k = k.merge(measure_one(kvfs, slice)?);
        t = t.merge(measure_one(tmpfs, slice)?);
    }
    Ok((k, t))
}

/// open+read+close round robin over `names` (one name: a hot file), `threads` threads, each
/// starting at its own offset.
fn read_row(
    root: &Path,
    names: &[String],
    lens: &[usize],
    threads: usize,
    budget: Budget,
) -> Result<Dist> {
    let paths: Vec<PathBuf> = names.iter().map(|n| root.join(n)).collect();
    let files: Vec<(PathBuf, usize)> = paths.into_iter().zip(lens.iter().copied()).collect();
    measure::run(threads, budget, |t| {
        let files = &files;
        let mut buf = vec![0u8; READ_BUF];
        let offset = t * files.len() / threads.max(1);
        move |i| {
            let (path, len) = &files[(offset + i as usize) % files.len()];
            content::read_expect(path, &mut buf, *len)
        }
    })
}

fn stat_row(root: &Path, names: &[String], lens: &[usize], budget: Budget) -> Result<Dist> {
    let files: Vec<(PathBuf, u64)> = names
        .iter()
        .zip(lens)
        .map(|(n, l)| (root.join(n), *l as u64))
        .collect();
    measure::run(1, budget, |_| {
        let files = &files;
        move |i| {
            let (path, len) = &files[i as usize % files.len()];
            let meta = std::fs::metadata(path).context(format!("stat {}", path.display()))?;
            if meta.len() != *len {
                return Err(Error(format!(
                    "stat {}: size {}, expected {len}",
                    path.display(),
                    meta.len()
                )));
            }
            Ok(())
        }
    })
}

/// opendir + readdir to the end + closedir; an error unless `entries` names come back.
fn readdir_row(root: &Path, entries: usize, budget: Budget) -> Result<Dist> {
    measure::run(1, budget, |_| {
        move |_| {
            let mut n = 0;
            for entry in std::fs::read_dir(root).context(format!("opendir {}", root.display()))? {
                entry.context(format!("readdir {}", root.display()))?;
                n += 1;
            }
            if n != entries {
                return Err(Error(format!(
                    "readdir {}: {n} entries, expected {entries}",
                    root.display()
                )));
            }
            Ok(())
        }
    })
}

/// fork/exec `/bin/cat FILE` with its output in a pipe, as `$(cat FILE)` in a shell, and wait.
fn cat_row(path: &Path, len: usize, budget: Budget) -> Result<Dist> {
    measure::run(1, budget, |_| {
        move |_| {
            let out = Command::new("/bin/cat")
                .arg(path)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .context("spawning /bin/cat")?;
            if !out.status.success() || out.stdout.len() != len {
                return Err(Error(format!(
                    "cat {}: {}, {} bytes (expected {len})",
                    path.display(),
                    out.status,
                    out.stdout.len()
                )));
            }
            Ok(())
        }
    })
}

/// Sorted names in a directory.
fn names_in(root: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(root).context(format!("listing {}", root.display()))? {
        let entry = entry.context(format!("listing {}", root.display()))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Reads every name from both sides; returns the names whose bytes differ (or fail).
fn differing(kvfs: &Path, tmpfs: &Path, names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| {
            let k = std::fs::read(kvfs.join(n));
            let t = std::fs::read(tmpfs.join(n));
            !matches!((k, t), (Ok(k), Ok(t)) if k == t)
        })
        .cloned()
        .collect()
}

fn first_few(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    format!("{} differ (first: {})", names.len(), shown.join(", "))
}

/// The main vault: `plan.files` secrets of 100 B-25 KB, mounted by kvfs and copied to tmpfs.
pub fn main_vault(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let plan = &ctx.plan;
    let n = plan.files;
    let names: Vec<String> = (0..n).map(|i| format!("s-{i:04}")).collect();
    let lens: Vec<usize> = (0..n).map(|i| content::spread_size(i, n)).collect();
    let emu = ctx.emulator("main")?;
    let tmpfs = Tmpfs::mount(ctx.work.join("tmpfs-main"))?;
    for (i, name) in names.iter().enumerate() {
        let v = content::value(i as u64, lens[i]);
        emu.vault().set_secret(name, &v);
        tmpfs.write(name, v.as_bytes())?;
    }
    let mut mount = ctx.mount(&emu, "kvfs-main", &["--cache-capacity", CACHE_CAPACITY])?;
    let (k, t) = (mount.path.clone(), tmpfs.path.clone());

    // Every file once from both sides: the byte check, and kvfs's cache is filled.
    let bad = differing(&k, &t, &names);
    report.check(
        format!("kvfs bytes == tmpfs bytes ({n} files)"),
        bad.is_empty(),
        if bad.is_empty() {
            format!("{n} files identical")
        } else {
            first_few(&bad)
        },
    );
    let listed = names_in(&k)?;
    report.check(
        format!("kvfs lists the same {n} names as tmpfs"),
        listed == names_in(&t)?,
        format!("{} names listed", listed.len()),
    );

    let hot = n / 2;
    let hot_name = std::slice::from_ref(&names[hot]);
    let hot_len = std::slice::from_ref(&lens[hot]);
    let hot_size = format!("{:.1} KB", lens[hot] as f64 / 1024.0);
    for (id, threads) in [("read_hot_1t", 1), ("read_hot_2t", 2)] {
        let (kd, td) = both(&k, &t, plan.row, plan.rounds, |root, b| {
            read_row(root, hot_name, hot_len, threads, b)
        })?;
        report.rows.push(
            Row::new(
                id,
                format!("open+read+close, hot file ({hot_size}), {threads} thr"),
                Some("tmpfs"),
            )
            .dists(kd, Some(td)),
        );
    }
    for (id, threads) in [("read_rr_1t", 1), ("read_rr_2t", 2)] {
        let (kd, td) = both(&k, &t, plan.row, plan.rounds, |root, b| {
            read_row(root, &names, &lens, threads, b)
        })?;
        report.rows.push(
            Row::new(
                id,
                format!("open+read+close, {n} files round robin, {threads} thr"),
                Some("tmpfs"),
            )
            .dists(kd, Some(td)),
        );
    }
    let (kd, td) = both(&k, &t, plan.row, plan.rounds, |root, b| {
        stat_row(root, &names, &lens, b)
    })?;
    report.rows.push(
        Row::new(
            "stat",
            format!("stat, {n} cached names round robin"),
            Some("tmpfs"),
        )
        .dists(kd, Some(td)),
    );
    let (kd, td) = both(&k, &t, plan.readdir_small, plan.rounds, |root, b| {
        readdir_row(root, n, b)
    })?;
    report.rows.push(
        Row::new(
            "readdir_1000",
            format!("readdir, {n} entries (whole listing)"),
            Some("tmpfs"),
        )
        .dists(kd, Some(td)),
    );
    let (kd, td) = both(&k, &t, plan.cat, plan.rounds, |root, b| {
        cat_row(&root.join(&names[hot]), lens[hot], b)
    })?;
    report.rows.push(
        Row::new(
            "cat",
            format!("spawned /bin/cat, hot file ({hot_size})"),
            Some("tmpfs"),
        )
        .dists(kd, Some(td)),
    );
    mount.check_running()?;
    ctx.stop(report, mount, "main")?;
    drop(tmpfs);

    startup(ctx, report, &emu, &names[hot])?;
    ctx.shutdown(emu);
    Ok(())
}

/// From spawning `kvfs mount` to the first successful stat of a known secret, with the
/// emulator already running and warm (earlier mounts got tokens from it).
fn startup(
    ctx: &Ctx,
    report: &mut Report,
    emu: &kvfs::emulator::Emulator,
    known: &str,
) -> Result<()> {
    let args = ctx.kvfs_args(emu, &[]);
    let limit = Duration::from_secs(60);
    let mut samples = Vec::new();
    for run in 0..ctx.plan.startup_runs {
        let path = ctx.work.join(format!("kvfs-startup-{run}"));
        let started = Instant::now();
        let mut mount = KvfsMount::spawn(&ctx.kvfs, path, &args)?;
        let target = mount.path.join(known);
        // Before the mount the stat fails with ENOENT from the empty directory underneath.
        while std::fs::metadata(&target).is_err() {
            harness::check_stop()?;
            mount.check_running()?;
            if started.elapsed() > limit {
                return Err(Error(format!(
                    "kvfs was not usable within {limit:?}; log: {}",
                    mount.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        samples.push(started.elapsed());
        if !mount.is_up() {
            return Err(Error("the known secret was found, but not on kvfs".into()));
        }
        ctx.stop(report, mount, &format!("startup-{run}"))?;
    }
    let runs = samples.len();
    report.rows.push(
        Row::new(
            "startup",
            format!("start to usable mount ({} secrets)", ctx.plan.files),
            None,
        )
        .dists(Dist::from_samples(samples), None)
        .in_ms()
        .no_throughput()
        .note(format!(
            "{runs} runs: spawn `kvfs mount` until stat of a known secret succeeds; includes token fetch and the startup listing"
        )),
    );
    Ok(())
}

/// A vault of `plan.large_dir` secrets, listed whole per operation, against tmpfs.
pub fn large_listing(ctx: &Ctx, report: &mut Report) -> Result<()> {
    let n = ctx.plan.large_dir;
    let names: Vec<String> = (0..n).map(|i| format!("d-{i:05}")).collect();
    let emu = ctx.emulator("listing")?;
    let tmpfs = Tmpfs::mount(ctx.work.join("tmpfs-listing"))?;
    for (i, name) in names.iter().enumerate() {
        let v = content::value(1_000_000 + i as u64, 100);
        emu.vault().set_secret(name, &v);
        tmpfs.write(name, v.as_bytes())?;
    }
    let mount = ctx.mount(&emu, "kvfs-listing", &[])?;
    let (k, t) = (mount.path.clone(), tmpfs.path.clone());
    let listed = names_in(&k)?;
    report.check(
        format!("kvfs lists the same {n} names as tmpfs"),
        listed == names_in(&t)?,
        format!("{} names listed", listed.len()),
    );
    let sample: Vec<String> = names.iter().step_by((n / 100).max(1)).cloned().collect();
    let bad = differing(&k, &t, &sample);
    report.check(
        format!("kvfs bytes == tmpfs bytes ({} of {n} files)", sample.len()),
        bad.is_empty(),
        if bad.is_empty() {
            format!("{} files identical", sample.len())
        } else {
            first_few(&bad)
        },
    );
    let before = emu.vault().counters();
    let plan = &ctx.plan;
    let (kd, td) = both(&k, &t, plan.readdir_large, plan.rounds, |root, b| {
        readdir_row(root, n, b)
    })?;
    let after = emu.vault().counters();
    report.rows.push(
        Row::new(
            "readdir_10000",
            format!("readdir, {n} entries (whole listing)"),
            Some("tmpfs"),
        )
        .dists(kd, Some(td))
        .figure(
            "list_pages",
            "KV list pages in row",
            (after.list_secrets - before.list_secrets) as f64,
            None,
        ),
    );
    ctx.stop(report, mount, "listing")?;
    drop(tmpfs);
    ctx.shutdown(emu);
    Ok(())
}

/// The relay's cost: the same vault through two kvfs mounts, one serving /dev/fuse through the
/// relay that makes live handoff possible (the default), one through fuser directly
/// (`--no-handoff`). Rows whose operations reach kvfs (an opendir, a lookup answered locally, a
/// cold read) show the extra hop; cached reads and stats send no message at all.
pub fn relay(ctx: &Ctx, report: &mut Report) -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let plan = &ctx.plan;
    let n = plan.files;
    let names: Vec<String> = (0..n).map(|i| format!("s-{i:04}")).collect();
    let lens: Vec<usize> = (0..n).map(|i| content::spread_size(i, n)).collect();
    let emu = ctx.emulator("relay")?;
    for (i, name) in names.iter().enumerate() {
        emu.vault()
            .set_secret(name, &content::value(i as u64, lens[i]));
    }
    let cold_budget = Budget {
        time: plan.cat.time,
        max_ops: plan.cold_samples as u64,
        warmup_ops: 2,
    };
    // Every cold read takes a name never read before, on either side.
    let cold_total = 2 * (plan.cold_samples + 2 * plan.rounds as usize + 4);
    for i in 0..cold_total {
        emu.vault().set_secret(&format!("c-{i:05}"), "cold-value");
    }
    let cap = &["--cache-capacity", CACHE_CAPACITY];
    let relayed = ctx.mount(&emu, "kvfs-relayed", cap)?;
    let direct = ctx.mount(
        &emu,
        "kvfs-direct",
        &["--cache-capacity", CACHE_CAPACITY, "--no-handoff"],
    )?;
    let (r, d) = (relayed.path.clone(), direct.path.clone());
    let bad = differing(&r, &d, &names);
    report.check(
        format!("relayed kvfs bytes == direct kvfs bytes ({n} files)"),
        bad.is_empty(),
        if bad.is_empty() {
            format!("{n} files identical")
        } else {
            first_few(&bad)
        },
    );
    let (rd, dd) = both(&r, &d, plan.row, plan.rounds, |root, b| {
        read_row(root, &names, &lens, 1, b)
    })?;
    report.rows.push(
        Row::new(
            "relay_read_rr",
            format!("open+read+close, {n} files round robin: relayed vs direct"),
            Some("no relay"),
        )
        .dists(rd, Some(dd)),
    );
    let (rd, dd) = both(&r, &d, plan.row, plan.rounds, |root, b| {
        stat_row(root, &names, &lens, b)
    })?;
    report.rows.push(
        Row::new(
            "relay_stat",
            format!("stat, {n} cached names: relayed vs direct"),
            Some("no relay"),
        )
        .dists(rd, Some(dd)),
    );
    let listed = n + cold_total;
    let (rd, dd) = both(&r, &d, plan.readdir_small, plan.rounds, |root, b| {
        readdir_row(root, listed, b)
    })?;
    report.rows.push(
        Row::new(
            "relay_readdir",
            format!("readdir, {listed} entries: relayed vs direct"),
            Some("no relay"),
        )
        .dists(rd, Some(dd)),
    );
    // A name no vault can hold is answered by kvfs without a request: one kernel round trip.
    let fresh = AtomicU64::new(0);
    let (rd, dd) = both(&r, &d, plan.row, plan.rounds, |root, b| {
        measure::run(1, b, |_| {
            let fresh = &fresh;
            move |_| {
                let path = root.join(format!("no_such_{}", fresh.fetch_add(1, Relaxed)));
                match std::fs::metadata(&path) {
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                    other => Err(Error(format!("{}: {other:?}", path.display()))),
                }
            }
        })
    })?;
    report.rows.push(
        Row::new(
            "relay_lookup",
            "lookup answered by kvfs (ENOENT, no request): relayed vs direct".to_owned(),
            Some("no relay"),
        )
        .dists(rd, Some(dd)),
    );
    let next_cold = AtomicU64::new(0);
    let (rd, dd) = both(&r, &d, cold_budget, plan.rounds, |root, b| {
        measure::run(1, b, |_| {
            let next_cold = &next_cold;
            move |_| {
                let i = next_cold.fetch_add(1, Relaxed);
                if i as usize >= cold_total {
                    return Err(Error("out of cold names".into()));
                }
                let path = root.join(format!("c-{i:05}"));
                let bytes = std::fs::read(&path).context(format!("read {}", path.display()))?;
                if bytes != b"cold-value" {
                    return Err(Error(format!("{}: wrong bytes", path.display())));
                }
                Ok(())
            }
        })
    })?;
    report.rows.push(
        Row::new(
            "relay_cold",
            "cold read (lookup, 1 GET, read): relayed vs direct".to_owned(),
            Some("no relay"),
        )
        .dists(rd, Some(dd)),
    );
    ctx.stop(report, relayed, "relayed")?;
    ctx.stop(report, direct, "direct")?;
    ctx.shutdown(emu);
    Ok(())
}
