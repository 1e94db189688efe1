//! The tiered-memory benchmark of the engine: `cargo xtask bench tiered [--base B --queries Q --truth T]
//! [--dir DIR] [--nq 10000] [--cold]`.
//!
//! Ingests the base vectors into a stored engine (`DIR`, removed at the end unless `--keep`), builds the
//! index, then measures each regime in a fresh child process of this binary, so that resident memory is
//! the regime's own: open time and RSS after open, then `--nq` single queries at LOD 2 on one thread
//! (recall@10 against the truth, QPS per wall second and per CPU second of the querying thread), RSS
//! after them and the peak. Regimes: the warm budget holds every full vector; it holds 10% of them; none
//! (budget 0: the resident memory is the engine's own, what the per-vector figure is about); and
//! with `--cold` (root, cgroup v1), after the page cache is dropped so that the kernel cannot cache the
//! rest, inside a memory cgroup capped at the open's peak plus 10% of the vectors (budget 10%), and at
//! the issue's cap, the index's codes and centroids plus 10% of the vectors (budget 10%, and budget 0:
//! the page cache is the only cache). Prints a markdown table and one JSON line per regime. Every RSS
//! figure leaves out the benchmark's own query and truth arrays (read before the open, and before the
//! process joins the capped group, so they are not charged to it).

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a benchmark reports to its terminal")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use m2m::{Lod, M2m, M2mConfig};
use m2m_splat::read_vectors;
use serde::{Deserialize, Serialize};

#[derive(Parser, Debug)]
#[command(about = "RSS, open time and LOD 2 recall / QPS of a stored engine under warm budgets")]
struct Args {
    /// Base vectors (.fvecs or .npy). Default: minilm70k's.
    #[arg(long)]
    base: Option<PathBuf>,
    /// Query vectors. Default: minilm70k's.
    #[arg(long)]
    queries: Option<PathBuf>,
    /// Exact neighbour ids per query (.ivecs or .npy). Default: minilm70k's.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// The database directory (created; must not exist).
    #[arg(long, default_value = "/tmp/m2m-bench-tiered/db")]
    dir: PathBuf,
    /// Queries per regime (the query file is cycled when shorter).
    #[arg(long, default_value_t = 10_000)]
    nq: usize,
    /// Also run the cold regime in a memory cgroup (root, cgroup v1 at /sys/fs/cgroup/memory).
    #[arg(long)]
    cold: bool,
    /// Keep the database afterwards.
    #[arg(long)]
    keep: bool,
    /// Measure an existing database at `--dir` (built by an earlier `--keep` run): no ingest or build.
    #[arg(long)]
    reuse: bool,
    /// Leave out the in-memory regime (its build takes as long as the stored one's).
    #[arg(long)]
    skip_ram: bool,
    /// Only the data lake: `--lake-epochs` epochs of batches of 256 from the engine at `--dir` (built by an
    /// earlier `--keep` run), from the rows in place (`Source::Memory`) and from the tiers
    /// (`Source::Tiers`) and by default (`Source::Auto`), alternating, three rounds; batches per wall
    /// second (the loader's work runs on its own threads, so the querying thread's CPU time says nothing).
    #[arg(long)]
    lake: bool,
    /// Epochs per lake measurement.
    #[arg(long, default_value_t = 3)]
    lake_epochs: u64,
    /// Internal: run one regime in this process with this warm budget (bytes).
    #[arg(long, hide = true)]
    child_budget: Option<u64>,
    /// Internal: cap this process at this many bytes in a memory cgroup first.
    #[arg(long, hide = true)]
    child_cap: Option<u64>,
    /// Internal: the in-memory regime (an engine without a data directory, built in this process).
    #[arg(long, hide = true)]
    child_ram: bool,
}

/// One regime's figures.
#[derive(Debug, Serialize, Deserialize)]
struct Regime {
    budget_bytes: u64,
    cap_bytes: Option<u64>,
    open_s: f64,
    rss_open_kb: u64,
    rss_after_kb: u64,
    peak_kb: u64,
    cgroup_peak_bytes: Option<u64>,
    /// Resident kB after the queries by mapping (anonymous memory and each mapped file), largest first.
    by_mapping: Vec<(String, u64)>,
    /// kB of the benchmark's own query and truth arrays, left out of every RSS figure.
    own_kb: u64,
    /// Peak resident kB when the open returned (the open's transient buffers included).
    peak_open_kb: u64,
    recall10: f64,
    qps_wall: f64,
    qps_cpu: f64,
    queries: usize,
    /// Bytes of the index's hot part (codes, centroids, codebook): with 10% of the vectors, the issue's
    /// cap.
    hot_bytes: u64,
    /// The engine's heap bytes per structure after open ([`M2m::heap_bytes`]).
    heap: Vec<(String, u64)>,
    /// The SOC router's heap bytes per structure once a generation has built it (uncapped regimes
    /// only: a capped one is not asked to build it), and the RSS kB after that generation.
    router_heap: Vec<(String, u64)>,
    rss_router_kb: u64,
}

fn status_kb(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The data lake from the rows in place and from the tiers (see `--lake`).
fn lake(args: &Args) -> Result<()> {
    use m2m::{DataLoaderConfig, Source};
    let engine = M2m::open_read_only(&args.dir)?;
    println!(
        "lake: {} rows of dimension {}, batches of 256, {} epochs",
        engine.len(),
        engine.config().dim,
        args.lake_epochs
    );
    for round in 0..3 {
        for source in [Source::Memory, Source::Tiers, Source::Auto] {
            let cfg = DataLoaderConfig {
                batch_size: 256,
                epochs: args.lake_epochs,
                seed: round,
                source,
                ..Default::default()
            };
            let start = Instant::now();
            let (mut batches, mut sum) = (0u64, 0f64);
            for b in engine.export_to_dataloader(&cfg)? {
                let b = b?;
                sum += f64::from(b.mu[0]);
                batches += 1;
            }
            let wall = start.elapsed().as_secs_f64();
            println!(
                "round {round} {source:?}: {batches} batches, {:.0} batches/s wall (checksum {sum:.3})",
                batches as f64 / wall
            );
        }
    }
    Ok(())
}

/// CPU seconds of the calling thread (scheduler statistics, nanoseconds).
fn thread_cpu_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .map_or(0.0, |ns| ns as f64 * 1e-9)
}

const CG: &str = "/sys/fs/cgroup/memory";

/// Resident kB per mapping (files by name, anonymous memory together), largest first.
fn by_mapping() -> Vec<(String, u64)> {
    let s = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut sums: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut name = String::new();
    for line in s.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: address range, perms, offset, device, inode, [path].
            let path = f.nth(4).unwrap_or("[anon]");
            name = if path.contains("bench-tiered") {
                "[binary]".into()
            } else if path.starts_with('/') {
                Path::new(path).file_name().map_or(path.to_string(), |n| n.to_string_lossy().into_owned())
            } else {
                "[anon]".into()
            };
        } else if first == "Rss:" {
            *sums.entry(name.clone()).or_default() += f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    let mut v: Vec<(String, u64)> = sums.into_iter().filter(|(_, kb)| *kb >= 256).collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v
}

fn data(args: &Args) -> (PathBuf, PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/minilm70k/minilm70k");
    let or = |p: &Option<PathBuf>, ext: &str| p.clone().unwrap_or_else(|| root.with_extension(ext));
    (or(&args.base, "base.fvecs"), or(&args.queries, "query.fvecs"), or(&args.truth, "gt.ivecs"))
}

fn child(args: &Args, budget: u64) -> Result<()> {
    // The benchmark's own arrays first: read before the process joins a capped cgroup, their pages stay
    // charged to the group they were read in (cgroup v1 moves no charge), so the cap is the engine's
    // alone; every RSS figure below leaves them out.
    let (_, queries, truth) = data(args);
    let q = read_vectors::<f32>(&queries)?;
    let t = read_vectors::<i32>(&truth)?;
    let own_kb = ((q.data.len() + t.data.len()) * 4 / 1024) as u64;
    let cg = match args.child_cap {
        Some(cap) => {
            let path = format!("{CG}/m2m-bench-tiered-{}", std::process::id());
            std::fs::create_dir_all(&path).context("creating the memory cgroup (root and cgroup v1 needed)")?;
            std::fs::write(format!("{path}/memory.limit_in_bytes"), cap.to_string())?;
            std::fs::write(format!("{path}/cgroup.procs"), std::process::id().to_string())?;
            // The page cache dropped: what the cap excludes must come from the disk.
            Command::new("sh").args(["-c", "sync; echo 3 > /proc/sys/vm/drop_caches"]).status()?;
            Some(path)
        }
        None => None,
    };
    let start = Instant::now();
    let mut engine = if args.child_ram {
        // Everything in RAM: the in-memory engine (its index holds f32 and bf16 copies), built here.
        let (base, _, _) = data(args);
        let b = read_vectors::<f32>(&base)?;
        let mut e = M2m::create(M2mConfig::default().dim(b.dim))?;
        e.add_splats(&b.data)?;
        e.build_index()?;
        e
    } else {
        M2m::open_read_only(&args.dir)?
    };
    let open_s = start.elapsed().as_secs_f64();
    let rss_open_kb = status_kb("VmRSS:").saturating_sub(own_kb);
    let peak_open_kb = status_kb("VmHWM:").saturating_sub(own_kb);
    let heap: Vec<(String, u64)> = engine.heap_bytes().into_iter().map(|(k, v)| (k.to_string(), v as u64)).collect();
    let hot_bytes = engine.index().map_or(0, |i| i.hot_bytes() as u64);
    engine.set_warm_budget(budget)?;
    let nq_file = q.rows();
    let (mut found, mut total) = (0usize, 0usize);
    let cpu0 = thread_cpu_s();
    let start = Instant::now();
    for i in 0..args.nq {
        let r = i % nq_file;
        let hits = engine.retrieve(&q.data[r * q.dim..(r + 1) * q.dim], 10, Lod::Rerank)?;
        let want = &t.data[r * t.dim..r * t.dim + 10];
        found += hits.iter().filter(|h| want.contains(&(h.id as i32))).count();
        total += 10;
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = thread_cpu_s() - cpu0;
    let (rss_after_kb, peak_kb) =
        (status_kb("VmRSS:").saturating_sub(own_kb), status_kb("VmHWM:").saturating_sub(own_kb));
    let by_mapping = by_mapping();
    // What a user who also generates pays: the router is built by the first generation.
    let (mut router_heap, mut rss_router_kb) = (Vec::new(), 0);
    if cg.is_none() {
        engine.generate_n(1, 1)?;
        router_heap = engine
            .heap_bytes()
            .into_iter()
            .filter(|(k, _)| k.starts_with("router"))
            .map(|(k, v)| (k.to_string(), v as u64))
            .collect();
        rss_router_kb = status_kb("VmRSS:").saturating_sub(own_kb);
    }
    let cgroup_peak_bytes = cg
        .as_ref()
        .and_then(|p| std::fs::read_to_string(format!("{p}/memory.max_usage_in_bytes")).ok()?.trim().parse().ok());
    let out = Regime {
        budget_bytes: budget,
        cap_bytes: args.child_cap,
        open_s,
        rss_open_kb,
        rss_after_kb,
        peak_kb,
        cgroup_peak_bytes,
        by_mapping,
        own_kb,
        peak_open_kb,
        recall10: found as f64 / total.max(1) as f64,
        qps_wall: args.nq as f64 / wall,
        qps_cpu: args.nq as f64 / cpu.max(1e-9),
        queries: args.nq,
        hot_bytes,
        heap,
        router_heap,
        rss_router_kb,
    };
    println!("{}", serde_json::to_string(&out)?);
    if let Some(path) = cg {
        // Back to the root group, so the group can be removed.
        std::fs::write(format!("{CG}/cgroup.procs"), std::process::id().to_string())?;
        let _ = std::fs::remove_dir(path);
    }
    Ok(())
}

fn run_child(args: &Args, budget: u64, cap: Option<u64>) -> Result<Regime> {
    run_child_with(args, budget, cap, false)
}

fn run_child_with(args: &Args, budget: u64, cap: Option<u64>, ram: bool) -> Result<Regime> {
    let exe = std::env::current_exe()?;
    let (base, queries, truth) = data(args);
    let mut cmd = Command::new(exe);
    cmd.arg("--base").arg(base).arg("--queries").arg(queries).arg("--truth").arg(truth);
    cmd.arg("--dir").arg(&args.dir).arg("--nq").arg(args.nq.to_string());
    cmd.arg("--child-budget").arg(budget.to_string());
    if let Some(cap) = cap {
        cmd.arg("--child-cap").arg(cap.to_string());
    }
    if ram {
        cmd.arg("--child-ram");
    }
    let out = cmd.output()?;
    if !out.status.success() {
        // A child the cgroup's OOM killer ends has no stderr of its own: say so.
        let why = if killed(&out.status) {
            "killed (SIGKILL: the memory cap's OOM killer)".to_string()
        } else {
            String::from_utf8_lossy(&out.stderr).into_owned()
        };
        bail!("regime of budget {budget}, cap {cap:?}: {why}");
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let last = line.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("regime output: {line}"))
}

/// Whether a child ended by SIGKILL (what the memory cgroup's OOM killer sends; Unix only).
#[cfg(unix)]
fn killed(status: &std::process::ExitStatus) -> bool {
    std::os::unix::process::ExitStatusExt::signal(status) == Some(9)
}

#[cfg(not(unix))]
fn killed(_: &std::process::ExitStatus) -> bool {
    false
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(budget) = args.child_budget {
        return child(&args, budget);
    }
    if args.lake {
        return lake(&args);
    }
    let (base, _, _) = data(&args);
    let b = read_vectors::<f32>(&base).with_context(|| format!("reading {}", base.display()))?;
    let (n, dim) = (b.rows(), b.dim);
    let (mut ingest_s, mut build_s) = (f64::NAN, f64::NAN);
    if !args.reuse {
        if args.dir.exists() {
            bail!("{} exists: give a new --dir", args.dir.display());
        }
        let config = M2mConfig { durable: false, ..M2mConfig::default().dim(dim).data_dir(&args.dir) };
        let start = Instant::now();
        let mut engine = M2m::create(config)?;
        for chunk in b.data.chunks(10_000 * dim) {
            engine.add_splats(chunk)?;
        }
        engine.flush()?;
        ingest_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        engine.build_index()?;
        build_s = start.elapsed().as_secs_f64();
    }
    drop(b);
    let files: Vec<(String, u64)> = std::fs::read_dir(&args.dir)?
        .filter_map(|e| e.ok())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().map_or(0, |m| m.len())))
        .collect();
    let size = |ext: &str| files.iter().filter(|(f, _)| f.ends_with(ext)).map(|(_, l)| *l).sum::<u64>();
    let (idx, vec) = (size(".idx"), size(".vec"));
    println!("{n} x {dim}: ingest {ingest_s:.1} s, build {build_s:.1} s; index files: .idx {idx} B, .vec {vec} B");
    let tenth = vec / 10;
    let mut rows = Vec::new();
    if !args.skip_ram {
        rows.push(("in memory (no data dir; open = ingest + build)", run_child_with(&args, 0, None, true)?));
    }
    rows.push(("stored, budget holds all", run_child(&args, vec * 2, None)?));
    rows.push(("stored, budget 10%", run_child(&args, tenth, None)?));
    // No warm cache: what stays resident is the engine's own (the mapped vectors it reads in place are
    // the page cache's, released after each read).
    rows.push(("stored, budget 0", run_child(&args, 0, None)?));
    if args.cold {
        // The benchmark's own arrays are charged outside the group (read before joining it).
        let ten = &rows[rows.len() - 1].1;
        // A loose cap: the process's peak through open (centroids, codes, ids and the engine's small
        // columns, the binary) plus 10% of the vectors.
        let cap = ten.peak_open_kb * 1024 + tenth;
        // The issue's cap: codes + centroids + 10% of the vectors.
        let issue_cap = ten.hot_bytes + tenth;
        println!(
            "caps: open peak + 10% = {:.1} MiB; issue's (codes + centroids {:.1} MiB + 10%) = {:.1} MiB",
            cap as f64 / 1048576.0,
            ten.hot_bytes as f64 / 1048576.0,
            issue_cap as f64 / 1048576.0
        );
        for (name, budget, c) in [
            ("stored, budget 10%, cold, cap = open peak + 10%", tenth, cap),
            ("stored, budget 10%, cold, issue's cap", tenth, issue_cap),
            // No warm cache: the cap's 10% of the vectors is the kernel's page cache of the mapped file.
            ("stored, budget 0, cold, issue's cap", 0, issue_cap),
        ] {
            match run_child(&args, budget, Some(c)) {
                Ok(r) => rows.push((name, r)),
                Err(e) => println!("{name} ({:.1} MiB): {e:#}", c as f64 / 1048576.0),
            }
        }
    }
    let per = |kb: u64| kb as f64 * 1024.0 / (n as f64 * dim as f64);
    println!();
    println!(
        "| regime | budget (MiB) | cap (MiB) | open (s) | RSS open (MiB, B/dim/vec) | RSS after {} q (MiB, B/dim/vec) | peak (MiB) | recall@10 | QPS wall | QPS per CPU s |",
        args.nq
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, r) in &rows {
        println!(
            "| {name} | {:.1} | {} | {:.3} | {:.1} ({:.2}) | {:.1} ({:.2}) | {:.1} | {:.4} | {:.0} | {:.0} |",
            r.budget_bytes as f64 / 1048576.0,
            r.cap_bytes.map_or("-".into(), |c| format!("{:.1}", c as f64 / 1048576.0)),
            r.open_s,
            r.rss_open_kb as f64 / 1024.0,
            per(r.rss_open_kb),
            r.rss_after_kb as f64 / 1024.0,
            per(r.rss_after_kb),
            r.peak_kb as f64 / 1024.0,
            r.recall10,
            r.qps_wall,
            r.qps_cpu,
        );
    }
    // Bytes per row of each structure the engine holds after open (the 10% regime's engine).
    if let Some((_, r)) = rows.iter().find(|(name, _)| *name == "stored, budget 10%") {
        let total: u64 = r.heap.iter().map(|(_, b)| b).sum();
        println!(
            "heap after open, bytes per row (of {n}): {} | total {:.1} = {:.2} B/dim/vec",
            r.heap
                .iter()
                .filter(|(_, b)| *b > 0)
                .map(|(k, b)| format!("{k} {:.1}", *b as f64 / n as f64))
                .collect::<Vec<_>>()
                .join(", "),
            total as f64 / n as f64,
            total as f64 / (n as f64 * dim as f64)
        );
        let router: u64 = r.router_heap.iter().map(|(_, b)| b).sum();
        println!(
            "after a first generation: the router {:.1} B/row ({}), RSS {:.1} MiB",
            router as f64 / n as f64,
            r.router_heap
                .iter()
                .map(|(k, b)| format!("{k} {:.1}", *b as f64 / n as f64))
                .collect::<Vec<_>>()
                .join(", "),
            r.rss_router_kb as f64 / 1024.0
        );
    }
    for (name, r) in &rows {
        let top: Vec<String> =
            r.by_mapping.iter().take(5).map(|(m, kb)| format!("{m} {:.1} MiB", *kb as f64 / 1024.0)).collect();
        println!("RSS after the queries, {name}: {}", top.join(", "));
    }
    for (name, r) in &rows {
        println!(
            "{}",
            serde_json::json!({ "regime": name, "n": n, "dim": dim, "build_s": build_s, "ingest_s": ingest_s, "figures": r })
        );
    }
    if !args.keep {
        std::fs::remove_dir_all(&args.dir)?;
    }
    Ok(())
}
