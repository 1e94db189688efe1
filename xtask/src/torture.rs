//! `cargo xtask torture [--minutes N] [--seed S] [--only KIND]`: the hostile test, kept running (`--only`
//! runs one kind of trial, by the names below).
//!
//! Trials, drawn at random until the time is up, each in a fresh directory with foreign files planted
//! beside and (once it exists) inside the database (names like ours included: ten-digit `.wal`/`.seg`
//! without our magic):
//!
//! * `tier-kill`: m2m-tier's crash writer (ingest, flush every 4th batch, compaction every 10th) is
//!   SIGKILLed at a random moment, creation included, three times over; after each kill every
//!   acknowledged batch must be present exactly once with its exact bytes (`crash-writer check`).
//! * `ingest-kill`: `m2m -v ingest` SIGKILLed at a random moment (creation included); every row it
//!   acknowledged (`acknowledged rows A..B` on stderr) must be present and every row present must be the
//!   file's row byte for byte; then the same command must complete, with every row exactly once. A
//!   quarter of these first damage a file of the killed database (below) and judge every command; one
//!   in eight plants a user's non-empty `LOCK`, a ten-digit `.wal` without our magic, a magic-less
//!   `m2m-soc.blob`, or a copy of our own segment in the directory first: the ingest must refuse, naming
//!   it, and change nothing; or a magic-less `m2m-soc.blob` in a built database, which `repair`, `build`
//!   and `verify` must leave as it is. Kills drawn after the process exited are counted apart.
//! * `build-kill`: `m2m build` SIGKILLed; then `verify` must pass, `build` work, and row 5 be its own
//!   nearest neighbour (id matched exactly).
//! * `upsert-kill`: `m2m upsert` of 30 ids of a built database and 10 new ones SIGKILLed; then `verify`
//!   must pass, the upsert be in whole or not at all (the old rows byte for byte), LOD 2 agree with the
//!   rows, and the same command complete on a rerun.
//! * `damage`: one file of a built database (manifest, log, segment, any blob) gets a bit flip, a
//!   truncation, a zero tail, or a forged change with recomputed checksums (structure-aware: length and
//!   count fields, and the numbers that must not overflow: ids, generations and id ranges near 2^64);
//!   then every command runs on it. The read-only commands must leave every file byte-identical;
//!   `verify` must flag any unforged damage, naming the file; when the damage is one `repair` can undo
//!   (a removable blob, a log tail), every row must survive `repair` and `build`.
//! * `full-disk` (as root only): ingest into a 1 MiB tmpfs. A mount that fails is counted as skipped.
//!
//! Every command run is judged: no panic (exit 101, or "panicked" on stderr), and a failure is exactly
//! one line on stderr in all, an `error:` line naming the damaged file (or a file inside the database, or the input file given to
//! `ingest`, or a flag): never just the database directory. After each trial the foreign files must be
//! unchanged. A failing trial keeps its directory and prints the seed that replays the whole run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const DIM: usize = 16;
const ROWS: usize = 3_000;

/// xorshift64*: the run's one random stream, replayable from `--seed`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Bins {
    m2m: PathBuf,
    writer: PathBuf,
}

/// One command's result.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run_bin(bin: &Path, args: &[&str]) -> Result<Ran> {
    let out = Command::new(bin).args(args).output().with_context(|| format!("cannot start {}", bin.display()))?;
    Ok(Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// No panic; a failure is exactly one line on stderr in all, an `error:` line that names one of `names`
/// (the damaged file, a file inside the database, the input file: never just the database directory), or a
/// flag the user gave.
/// A warning line of the CLI's log (tracing's format: a timestamp, `WARN`, the target).
fn is_log_warning(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let stamp = words.next().unwrap_or("");
    stamp.len() > 20 && stamp.as_bytes()[4] == b'-' && stamp.ends_with('Z') && words.next() == Some("WARN")
}

fn judge(r: &Ran, what: &str, names: &[String]) -> Result<(), String> {
    if r.code == Some(101) || r.stderr.contains("panicked") {
        return Err(format!("{what}: panicked: {}", r.stderr.trim()));
    }
    if r.code == Some(0) {
        return Ok(());
    }
    // Every line of stderr counts but the log's warnings (`<time>  WARN <target>: ...`): an engine that
    // finds its stored index stale says so before the command's own error, which must still be the one
    // other line.
    let errors: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty() && !is_log_warning(l)).collect();
    match errors.as_slice() {
        [line] if !line.starts_with("error:") => Err(format!("{what}: the one line is no error: {line}")),
        // `--row: no splat with id 3` after damage names the flag; a state of the whole database that no
        // file's damage causes (no index yet, a create killed before its settings) names the database
        // and what to do.
        [line]
            if names.iter().any(|n| line.contains(n.as_str()))
                || line.starts_with("error: --")
                || STATE_ERRORS.iter().any(|s| line.contains(s)) =>
        {
            Ok(())
        }
        [line] => Err(format!("{what}: the error names none of {names:?}: {line}")),
        _ => Err(format!("{what}: exit {:?} without exactly one error line: {}", r.code, r.stderr.trim())),
    }
}

/// Errors about the state of a whole database, not about a file: accepted without a file name.
const STATE_ERRORS: [&str; 3] =
    ["no current index; run `m2m build", "(no m2m-config.blob)", "the engine holds no splat"];

/// Every file of `dir` with its bytes, sorted by name.
fn contents(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_file() {
            out.push((e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path())?));
        }
    }
    out.sort();
    Ok(out)
}

/// Writes `rows` rows of `DIM` seeded values as `.fvecs` (per row: the dimension as i32, then f32s).
fn write_fvecs(path: &Path, rows: usize, rng: &mut Rng) -> Result<()> {
    let mut bytes = Vec::with_capacity(rows * (4 + 4 * DIM));
    for _ in 0..rows {
        bytes.extend_from_slice(&(DIM as i32).to_le_bytes());
        for _ in 0..DIM {
            let v = (rng.below(2_000_001) as f32 - 1_000_000.0) / 1e5;
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Foreign files: names that look like ours and names that do not, with their contents. The ten-digit
/// `.wal` and `.seg` carry our names but not our magic: they are the user's (numbers no trial reaches,
/// so they never stand where a log or segment must go).
const FOREIGN: [&str; 9] = [
    "report.tmp",
    "notes.wal",
    "x.seg",
    "MANIFEST.tmp",
    ".0000000001.seg.tmp",
    "m2m-notes.blob",
    "0000000001.txt",
    "0000000099.wal",
    "0000000098.seg",
];

fn plant(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    FOREIGN
        .iter()
        .filter_map(|name| {
            let path = dir.join(name);
            let body = format!("not yours: {}", path.display()).into_bytes();
            // Never over a file that is there: a long trial reaches segment 98 or log 99, and planting
            // over it would forge the database instead of testing it.
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&path).ok()?;
            std::io::Write::write_all(&mut f, &body).ok().map(|()| (path, body))
        })
        .collect()
}

fn untouched(planted: &[(PathBuf, Vec<u8>)]) -> Result<(), String> {
    for (path, body) in planted {
        match std::fs::read(path) {
            Ok(b) if &b == body => {}
            Ok(_) => return Err(format!("{} was changed", path.display())),
            Err(e) => return Err(format!("{} was removed: {e}", path.display())),
        }
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// SIGKILLs that landed on a running process.
static KILLS: AtomicU64 = AtomicU64::new(0);
/// Kills drawn too late: the process had exited already (no kill trial, though its checks still ran).
static FINISHED_BEFORE_KILL: AtomicU64 = AtomicU64::new(0);

/// Spawns `bin args`, SIGKILLs it after `delay`, and returns the last acknowledgement it printed (-1:
/// none): the crash writer's `ack N` on stdout (batch N), or `m2m -v ingest`'s `acknowledged rows A..B`
/// on stderr (B: the rows of the file acknowledged so far).
fn kill_after(bin: &Path, args: &[&str], delay: Duration) -> Result<i64> {
    let mut child = Command::new(bin)
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let last = Arc::new(AtomicI64::new(-1));
    let read = |out: Box<dyn std::io::Read + Send>| {
        let last = Arc::clone(&last);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(std::result::Result::ok) {
                if let Some(n) = ack_of(&line) {
                    last.store(n, Ordering::SeqCst);
                }
            }
        })
    };
    let stdout = child.stdout.take().map(|o| Box::new(o) as Box<dyn std::io::Read + Send>);
    let stderr = child.stderr.take().map(|o| Box::new(o) as Box<dyn std::io::Read + Send>);
    let readers: Vec<_> = [stdout, stderr].into_iter().flatten().map(read).collect();
    std::thread::sleep(delay);
    // A child that already exited was not killed: counted apart, so the kill count is only real kills.
    if matches!(child.try_wait(), Ok(Some(_))) {
        FINISHED_BEFORE_KILL.fetch_add(1, Ordering::Relaxed);
    } else {
        KILLS.fetch_add(1, Ordering::Relaxed);
    }
    // `Child::kill` is SIGKILL on Unix.
    let _ = child.kill();
    let _ = child.wait();
    for r in readers {
        let _ = r.join();
    }
    Ok(last.load(Ordering::SeqCst))
}

/// The acknowledgement a line carries: `ack N`, or `... acknowledged rows A..B of ...` (B).
fn ack_of(line: &str) -> Option<i64> {
    if let Some(n) = line.strip_prefix("ack ") {
        return n.trim().parse().ok();
    }
    const MARK: &str = "acknowledged rows ";
    let rest = &line[line.find(MARK)? + MARK.len()..];
    rest.split_once("..")?.1.split(' ').next()?.parse().ok()
}

/// What [`damage`] did: to which file, and whether `verify` must see it and `repair` undo it.
struct Damage {
    what: String,
    file: PathBuf,
    /// Not a forgery: every checksum now disagrees, so `verify` must flag it.
    visible: bool,
    /// `repair` (and `build`) bring every row back: the file is a removable blob, or the damage is a
    /// log tail.
    recoverable: bool,
}

/// Applies one random damage to one random file of `db`; returns what it did (`None`: no file).
fn damage(bins: &Bins, db: &Path, rng: &mut Rng) -> Result<Option<Damage>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(db)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let ours = |ext: &str| n.ends_with(ext) && n.len() == 14 && !FOREIGN.contains(&n.as_str());
            n == "MANIFEST"
                || ours(".seg")
                || ours(".wal")
                || ours(".idx")
                || ours(".vec")
                || n.starts_with("m2m-") && n.ends_with(".blob") && n != "m2m-notes.blob"
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Ok(None);
    }
    // A quarter of the damages are structure-aware forgeries of the numbers that must not overflow (ids,
    // generations, id ranges near 2^64): on the files that hold them.
    let how = rng.below(8);
    if how >= 6 {
        files.retain(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            n == "MANIFEST" || n.ends_with(".seg") || n.ends_with(".wal") || n == "m2m-ingest.blob"
        });
    }
    let file = files[rng.below(files.len() as u64) as usize].clone();
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // The blobs `repair` may remove, and the stored index's section files (`repair` drops the index).
    let removable = ["m2m-index.blob", "m2m-learned.blob", "m2m-neighbours.blob", "m2m-soc.blob", "m2m-ingest.blob"]
        .contains(&name.as_str())
        || name.ends_with(".idx")
        || name.ends_with(".vec");
    let mut bytes = std::fs::read(&file)?;
    let (how, tail) = match how {
        0 | 1 if !bytes.is_empty() => {
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] ^= 1 << rng.below(8);
            (format!("bit flip at byte {at}"), false)
        }
        0..=2 => {
            let len = rng.below(bytes.len() as u64) as usize;
            bytes.truncate(len);
            (format!("truncated to {len} bytes"), false)
        }
        3 => {
            let zeros = [8, 16, 100, 4096][rng.below(4) as usize];
            bytes.resize(bytes.len() + zeros, 0);
            (format!("{zeros} zero bytes appended"), true)
        }
        _ => {
            let kind = if how >= 6 {
                "huge"
            } else if name.ends_with(".wal") {
                "log"
            } else if name.ends_with(".seg") {
                "segment"
            } else {
                "sealed"
            };
            let seed = rng.next().to_string();
            let f = file.display().to_string();
            let r = run_bin(&bins.writer, &["forge", kind, &f, &seed])?;
            if r.code != Some(0) {
                bail!("forge {kind} {f}: {}", r.stderr.trim());
            }
            let what = format!("{name}: forged ({kind}, seed {seed}) with valid checksums");
            return Ok(Some(Damage { what, file, visible: false, recoverable: removable }));
        }
    };
    // A segment, log or index file the manifest does not name (an orphan a killed writer left, removed by
    // the next writer's open) is not part of the database: `verify` need not flag damage to it.
    let named = run_bin(&bins.writer, &["named", &db.display().to_string()])?;
    let data_file = [".seg", ".wal", ".idx", ".vec"].iter().any(|e| name.ends_with(e));
    let visible = !data_file || named.stdout.lines().any(|l| l == name);
    std::fs::write(&file, &bytes)?;
    let recoverable = removable || tail && name.ends_with(".wal");
    Ok(Some(Damage { what: format!("{name}: {how}"), file, visible, recoverable }))
}

/// Every command on a damaged database, each judged: errors name the damaged file (or the input file,
/// for `ingest`); the read-only commands change no byte; `verify` flags visible damage; recoverable
/// damage loses no row through `repair` and `build`.
fn every_command(bins: &Bins, db: &Path, file: &Path, hurt: &Damage) -> Result<Result<(), String>> {
    let d = db.display().to_string();
    let f = file.display().to_string();
    let damaged = hurt.file.display().to_string();
    let before = contents(db)?;
    let readers: [&[&str]; 5] = [
        &["info", &d],
        &["verify", &d],
        &["query", &d, "--row", "3", "--k", "5"],
        &["query", &d, "--row", "3", "--k", "18446744073709551615", "--lod", "0"],
        &["stream", &d, "--batch-size", "500"],
    ];
    for args in readers {
        let r = run_bin(&bins.m2m, args)?;
        if let Err(e) = judge(&r, &args.join(" "), std::slice::from_ref(&damaged)) {
            return Ok(Err(e));
        }
        if args[0] == "verify" && hurt.visible && r.code == Some(0) {
            return Ok(Err(format!("verify says OK: {}", r.stdout.trim())));
        }
        if contents(db)? != before {
            return Ok(Err(format!("{} changed a file of the database", args.join(" "))));
        }
    }
    for args in [&["repair", &d][..], &["build", &d]] {
        let r = run_bin(&bins.m2m, args)?;
        if let Err(e) = judge(&r, &args.join(" "), std::slice::from_ref(&damaged)) {
            return Ok(Err(e));
        }
        if hurt.recoverable && r.code != Some(0) {
            return Ok(Err(format!("{} failed on damage it can undo: {}", args.join(" "), r.stderr.trim())));
        }
    }
    if hurt.recoverable {
        let r = run_bin(&bins.writer, &["rows", &d, &f])?;
        if r.stdout.trim() != format!("ok {ROWS}") {
            return Ok(Err(format!("rows lost after repair and build: {} {}", r.stdout.trim(), r.stderr.trim())));
        }
    }
    // Resuming the file that is in, then a new file: fresh ids after the largest, a flush (the next
    // generation and segment id).
    let more = file.with_file_name("more.fvecs").display().to_string();
    for input in [&f, &more] {
        let r = run_bin(&bins.m2m, &["ingest", &d, input])?;
        if let Err(e) = judge(&r, &format!("ingest {input}"), &[damaged.clone(), input.clone()]) {
            return Ok(Err(e));
        }
    }
    Ok(Ok(()))
}

#[derive(Default)]
struct Tally {
    trials: [u64; 6],
    skipped: [u64; 6],
    failures: Vec<String>,
}

const KINDS: [&str; 6] = ["tier-kill", "ingest-kill", "build-kill", "damage", "full-disk", "upsert-kill"];

pub(crate) fn torture(args: &[String]) -> Result<()> {
    let mut minutes = 3.0f64;
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64 | 1;
    let mut only = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => minutes = it.next().context("--minutes N")?.parse().context("--minutes: a number")?,
            "--seed" => seed = it.next().context("--seed S")?.parse().context("--seed: a number")?,
            "--only" => {
                let name = it.next().context("--only KIND")?;
                only = Some(KINDS.iter().position(|k| k == name).with_context(|| {
                    format!("--only: {name} is no kind of trial (expected one of {})", KINDS.join(", "))
                })?);
            }
            other => bail!("torture: unknown argument {other} (expected --minutes N, --seed S, --only KIND)"),
        }
    }
    // The binaries as the workspace's test build makes them (in CI already built by the test step, so
    // nothing is compiled again; `cargo build -p ...` resolved other dependency features and rebuilt
    // most of the tree). Their m2m-tier has the `fault-injection` hooks compiled in, inert unless a test
    // arms one on its own thread, which these processes never do.
    crate::run("cargo", &["test", "--workspace", "--locked", "--no-run"])?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| crate::workspace_root().join("target"), PathBuf::from);
    let bins = Bins { m2m: target.join("debug/m2m"), writer: target.join("debug/m2m-tier-crash-writer") };
    let root = std::env::temp_dir().join(format!("m2m-torture-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let mut rng = Rng(seed);
    println!("torture: {minutes} minutes, seed {seed}, in {}", root.display());

    let file = root.join("a.fvecs");
    write_fvecs(&file, ROWS, &mut rng)?;
    // New rows for the damage trials' last ingest (`every_command`).
    write_fvecs(&root.join("more.fvecs"), 300, &mut rng)?;
    let big = root.join("big.fvecs");
    write_fvecs(&big, 20_000, &mut rng)?;
    // A built database, copied by each damage trial.
    let template = root.join("template");
    let f = file.display().to_string();
    for args in [
        vec!["ingest", template.to_str().unwrap_or_default(), &f],
        vec!["build", template.to_str().unwrap_or_default()],
    ] {
        let r = run_bin(&bins.m2m, &args)?;
        if r.code != Some(0) {
            bail!("making the template database: {}", r.stderr.trim());
        }
    }
    let root_user = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));

    let deadline = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let mut tally = Tally::default();
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let kind = match rng.below(18) {
            0..=3 => 0,
            4..=8 => 1,
            9..=10 => 2,
            11..=14 => 3,
            15..=16 => 5,
            _ if root_user => 4,
            _ => 3,
        };
        // `--only`: the same draws, the other kinds skipped (not counted).
        if only.is_some_and(|k| k != kind) {
            continue;
        }
        let trial = root.join(format!("trial-{n}"));
        std::fs::create_dir_all(&trial)?;
        let mut planted = plant(&trial);
        let db = trial.join("db");
        let outcome = match kind {
            0 => tier_kill(&bins, &db, &mut rng, &mut planted)?,
            1 => ingest_kill(&bins, &db, &file, &mut rng, &mut planted)?,
            2 => build_kill(&bins, &template, &db, &mut rng, &mut planted)?,
            5 => upsert_kill(&bins, &template, &db, &file, &mut rng, &mut planted)?,
            3 => {
                copy_dir(&template, &db)?;
                planted.extend(plant(&db));
                match damage(&bins, &db, &mut rng)? {
                    Some(hurt) => every_command(&bins, &db, &file, &hurt)?.map_err(|e| format!("{}: {e}", hurt.what)),
                    None => Err("the template holds no file to damage".into()),
                }
            }
            _ => match full_disk(&bins, &trial, &big, &mut planted)? {
                Some(verdict) => verdict,
                None => {
                    tally.skipped[kind] += 1;
                    let _ = std::fs::remove_dir_all(&trial);
                    continue;
                }
            },
        };
        let outcome = outcome.and_then(|()| untouched(&planted));
        tally.trials[kind] += 1;
        match outcome {
            Ok(()) => {
                let _ = std::fs::remove_dir_all(&trial);
            }
            Err(e) => {
                let line = format!("trial {n} ({}): {e} [kept in {}]", KINDS[kind], trial.display());
                println!("FAILED {line}");
                tally.failures.push(line);
            }
        }
    }
    let total: u64 = tally.trials.iter().sum();
    let per_kind: Vec<String> = KINDS.iter().zip(tally.trials).map(|(k, t)| format!("{k} {t}")).collect();
    let skipped: u64 = tally.skipped.iter().sum();
    println!(
        "torture: {total} trials ({}), {} failed, {skipped} skipped (full-disk trials whose tmpfs mount failed); {} kills \
         landed, {} processes finished before their kill; seed {seed}",
        per_kind.join(", "),
        tally.failures.len(),
        KILLS.load(Ordering::Relaxed),
        FINISHED_BEFORE_KILL.load(Ordering::Relaxed),
    );
    if tally.failures.is_empty() {
        let _ = std::fs::remove_dir_all(&root);
        Ok(())
    } else {
        bail!(
            "{} torture trials failed (replay with --seed {seed}); kept under {}",
            tally.failures.len(),
            root.display()
        )
    }
}

fn tier_kill(
    bins: &Bins,
    db: &Path,
    rng: &mut Rng,
    planted: &mut Vec<(PathBuf, Vec<u8>)>,
) -> Result<Result<(), String>> {
    let d = db.display().to_string();
    let dim = "8";
    for round in 0..3 {
        // Sometimes within the first milliseconds: the kill lands in the creation.
        let delay = if rng.below(3) == 0 { rng.below(15) } else { rng.below(400) };
        let acked = kill_after(&bins.writer, &["db", &d, dim], Duration::from_millis(delay))?;
        if !db.join("MANIFEST").exists() {
            if acked >= 0 {
                return Ok(Err(format!("round {round}: batch {acked} acknowledged but no manifest")));
            }
            continue;
        }
        if round == 0 {
            planted.extend(plant(db));
        }
        let a = if acked < 0 { "-".to_string() } else { acked.to_string() };
        let r = run_bin(&bins.writer, &["check", &d, dim, &a])?;
        if r.code != Some(0) {
            return Ok(Err(format!("round {round} (killed after {delay} ms, ack {a}): {}", r.stderr.trim())));
        }
    }
    Ok(Ok(()))
}

/// A magic-less `m2m-soc.blob` in a built database: `repair` and `build` either succeed or fail with
/// one line naming it, and it stays as it was (the caller checks `planted`).
fn blob_in_a_database(
    bins: &Bins,
    template: &Path,
    db: &Path,
    planted: &mut Vec<(PathBuf, Vec<u8>)>,
) -> Result<Result<(), String>> {
    copy_dir(template, db)?;
    let blob = db.join("m2m-soc.blob");
    let body = b"not yours: m2m-soc.blob".to_vec();
    std::fs::write(&blob, &body)?;
    planted.push((blob.clone(), body));
    let d = db.display().to_string();
    for cmd in ["repair", "build", "verify"] {
        let r = run_bin(&bins.m2m, &[cmd, &d])?;
        if let Err(e) = judge(&r, cmd, &[blob.display().to_string()]) {
            return Ok(Err(format!("a user's m2m-soc.blob in a database: {e}")));
        }
    }
    Ok(Ok(()))
}

fn ingest_kill(
    bins: &Bins,
    db: &Path,
    file: &Path,
    rng: &mut Rng,
    planted: &mut Vec<(PathBuf, Vec<u8>)>,
) -> Result<Result<(), String>> {
    let (d, f) = (db.display().to_string(), file.display().to_string());
    if rng.below(8) == 0 {
        // A user's file in the directory: a non-empty LOCK, a ten-digit log without our magic, a file of
        // a blob's name without the blob magic, or a copy of our own segment (a backup: without the
        // create marker it is the user's, not a leftover).
        std::fs::create_dir_all(db)?;
        let template = file.parent().unwrap_or(Path::new(".")).join("template");
        let segment = std::fs::read_dir(&template)?
            .filter_map(std::result::Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"));
        let pick = rng.below(6) as usize;
        if pick == 5 {
            // The same blob name inside a built database: `repair` and `build` must leave it.
            return blob_in_a_database(bins, &template, db, planted);
        }
        let (name, body) = match (pick, segment) {
            (4, Some(seg)) => ("0000000000.seg", std::fs::read(seg)?),
            (p, _) => {
                let name = ["LOCK", "0000000001.wal", "0000000001.seg", "m2m-soc.blob", "m2m-soc.blob"][p.min(4)];
                (name, format!("not yours: {name}").into_bytes())
            }
        };
        std::fs::write(db.join(name), &body)?;
        planted.push((db.join(name), body));
        let r = run_bin(&bins.m2m, &["ingest", &d, &f])?;
        if r.code == Some(0) {
            return Ok(Err(format!("ingest into a directory holding a user's {name} succeeded")));
        }
        if let Err(e) = judge(&r, "ingest", &[db.join(name).display().to_string()]) {
            return Ok(Err(e));
        }
        let left = std::fs::read_dir(db)?.count();
        return Ok(if left == 1 { Ok(()) } else { Err(format!("ingest left {left} files beside the user's {name}")) });
    }
    let chunk = (50 + rng.below(1_000)).to_string();
    let mut args = vec!["-v", "ingest", &d, &f, "--chunk", &chunk];
    if rng.below(2) == 0 {
        args.push("--no-sync");
    }
    let delay = if rng.below(3) == 0 { rng.below(40) } else { rng.below(1_500) };
    let acked = kill_after(&bins.m2m, &args, Duration::from_millis(delay))?;
    if db.join("m2m-config.blob").exists() {
        planted.extend(plant(db));
    }
    if rng.below(4) == 0
        && db.join("MANIFEST").exists()
        && let Some(hurt) = damage(bins, db, rng)?
    {
        let at = format!("after a kill at {delay} ms, {}", hurt.what);
        // Rows of a killed ingest (not all in) are no promise to keep: judge the commands only.
        let hurt = Damage { recoverable: false, ..hurt };
        return Ok(every_command(bins, db, file, &hurt)?.map_err(|e| format!("{at}: {e}")));
    }
    if db.join("m2m-config.blob").exists() {
        let r = run_bin(&bins.writer, &["rows", &d, &f])?;
        let present: i64 = r.stdout.trim().strip_prefix("ok ").and_then(|n| n.parse().ok()).unwrap_or(-1);
        if r.code != Some(0) || present < acked {
            return Ok(Err(format!(
                "killed at {delay} ms after rows 0..{acked} were acknowledged: {} {}",
                r.stdout.trim(),
                r.stderr.trim()
            )));
        }
    } else if acked > 0 {
        return Ok(Err(format!("killed at {delay} ms: rows 0..{acked} acknowledged, but no database")));
    }
    let r = run_bin(&bins.m2m, &["ingest", &d, &f])?;
    if r.code != Some(0) {
        return Ok(Err(format!("the rerun after a kill at {delay} ms failed: {}", r.stderr.trim())));
    }
    let r = run_bin(&bins.writer, &["rows", &d, &f])?;
    if r.stdout.trim() != format!("ok {ROWS}") {
        return Ok(Err(format!("after the rerun: {} {}", r.stdout.trim(), r.stderr.trim())));
    }
    Ok(Ok(()))
}

fn build_kill(
    bins: &Bins,
    template: &Path,
    db: &Path,
    rng: &mut Rng,
    planted: &mut Vec<(PathBuf, Vec<u8>)>,
) -> Result<Result<(), String>> {
    copy_dir(template, db)?;
    planted.extend(plant(db));
    let d = db.display().to_string();
    let delay = rng.below(1_500);
    kill_after(&bins.m2m, &["build", &d, "--n-fine", "30"], Duration::from_millis(delay))?;
    for args in
        [vec!["verify", &d], vec!["build", &d], vec!["query", &d, "--row", "5", "--k", "1", "--lod", "exact", "--json"]]
    {
        let r = run_bin(&bins.m2m, &args)?;
        if r.code != Some(0) {
            return Ok(Err(format!("{} after a kill at {delay} ms: {}", args.join(" "), r.stderr.trim())));
        }
        // Exactly id 5 (followed by the comma before its score), not 50 or 512.
        if args[0] == "query" && !r.stdout.contains("\"id\":5,") {
            return Ok(Err(format!("row 5 is not its own nearest neighbour: {}", r.stdout.trim())));
        }
    }
    Ok(Ok(()))
}

/// The top hit of each query in `m2m query --json` output with k = 1: (id, score), in query order.
fn top_hits(stdout: &str) -> Vec<(u64, f64)> {
    let number = |s: &str| s.split([',', '}']).next().unwrap_or("").trim().to_string();
    stdout
        .split("\"id\":")
        .skip(1)
        .map(|rest| {
            let id = number(rest).parse().unwrap_or(u64::MAX);
            let score = rest.split("\"score\":").nth(1).map_or(f64::NAN, |s| number(s).parse().unwrap_or(f64::NAN));
            (id, score)
        })
        .collect()
}

/// `m2m upsert` of 30 ids of the built database and 10 new ones, SIGKILLed; then `verify` must pass, the
/// upsert be all in or not at all (exact search finds every upserted row, or no new id, every old row
/// byte for byte, and five replaced ids' own rows answered as before: learned kappa and alpha kept, LOD 2
/// finding the old vector), the index agree with the rows (LOD 2 finds each upserted row when it is in), and the
/// same command complete on a rerun.
fn upsert_kill(
    bins: &Bins,
    template: &Path,
    db: &Path,
    file: &Path,
    rng: &mut Rng,
    planted: &mut Vec<(PathBuf, Vec<u8>)>,
) -> Result<Result<(), String>> {
    copy_dir(template, db)?;
    planted.extend(plant(db));
    let trial = db.parent().unwrap_or(Path::new("."));
    let (vectors, rows) = (trial.join("up.fvecs"), trial.join("up.jsonl"));
    write_fvecs(&vectors, 40, rng)?;
    let mut ids: Vec<u64> = Vec::new();
    while ids.len() < 30 {
        let id = rng.below(ROWS as u64);
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids.extend((0..10).map(|i| ROWS as u64 + 7 * i));
    let lines: Vec<String> = ids.iter().map(|id| format!("{{\"id\": {id}}}")).collect();
    std::fs::write(&rows, lines.join("\n"))?;
    let (d, v, r) = (db.display().to_string(), vectors.display().to_string(), rows.display().to_string());
    // Five replaced ids' own rows as the built database answers them (id, score, learned kappa and
    // alpha), Exact and LOD 2: an upsert that is not in must leave both answers as they were.
    let own = |id: u64| -> Result<Vec<String>> {
        let id = id.to_string();
        let mut out = Vec::new();
        for lod in ["exact", "rerank"] {
            let ran = run_bin(&bins.m2m, &["query", &d, "--row", &id, "--k", "1", "--lod", lod, "--json"])?;
            let results = ran.stdout.split("\"results\":").nth(1).and_then(|x| x.split(",\"seconds\"").next());
            out.push(results.unwrap_or("(no results)").to_string());
        }
        Ok(out)
    };
    let before: Vec<Vec<String>> = ids[..5].iter().map(|&id| own(id)).collect::<Result<_>>()?;
    // The command takes ~0.1 s here: most kills fall within it.
    let delay = if rng.below(4) == 0 { rng.below(1_200) } else { rng.below(120) };
    kill_after(&bins.m2m, &["upsert", &d, &v, "--rows", &r], Duration::from_millis(delay))?;
    let at = format!("after a kill at {delay} ms");
    let check = |what: &str| -> Result<Result<bool, String>> {
        let ran = run_bin(&bins.m2m, &["verify", &d])?;
        if ran.code != Some(0) {
            return Ok(Err(format!("{what}: verify: {}", ran.stderr.trim())));
        }
        let mut tops = Vec::new();
        for lod in ["exact", "rerank"] {
            let ran = run_bin(&bins.m2m, &["query", &d, "--file", &v, "--k", "1", "--lod", lod, "--json"])?;
            let hits = top_hits(&ran.stdout);
            if ran.code != Some(0) || hits.len() != ids.len() {
                return Ok(Err(format!("{what}: query --lod {lod}: {} {}", ran.stdout.trim(), ran.stderr.trim())));
            }
            tops.push(hits);
        }
        let found = |hits: &[(u64, f64)], i: usize| hits[i].0 == ids[i] && hits[i].1 > 0.9999;
        let exact = (0..ids.len()).filter(|&i| found(&tops[0], i)).count();
        let new = (30..ids.len()).filter(|&i| found(&tops[0], i)).count();
        if exact == ids.len() {
            // In: the index must hold the new rows (LOD 2 finds each as its own nearest).
            if let Some(i) = (0..ids.len()).find(|&i| !found(&tops[1], i)) {
                return Ok(Err(format!("{what}: upserted, but LOD 2 finds {:?} for id {}", tops[1][i], ids[i])));
            }
            return Ok(Ok(true));
        }
        if new > 0 {
            return Ok(Err(format!("{what}: half an upsert: {exact} of 40 rows in, {new} of the 10 new ids")));
        }
        let ran = run_bin(&bins.writer, &["rows", &d, &file.display().to_string()])?;
        if ran.code != Some(0) || ran.stdout.trim() != format!("ok {ROWS}") {
            return Ok(Err(format!(
                "{what}: not upserted, but the old rows changed: {} {}",
                ran.stdout.trim(),
                ran.stderr.trim()
            )));
        }
        for (id, was) in ids[..5].iter().zip(&before) {
            let now = own(*id)?;
            if now != *was {
                return Ok(Err(format!(
                    "{what}: not upserted, but id {id}'s own row now answers {now:?}, was {was:?}"
                )));
            }
        }
        Ok(Ok(false))
    };
    match check(&at)? {
        Err(e) => return Ok(Err(e)),
        Ok(true) => return Ok(Ok(())),
        Ok(false) => {}
    }
    let ran = run_bin(&bins.m2m, &["upsert", &d, &v, "--rows", &r])?;
    if ran.code != Some(0) {
        return Ok(Err(format!("the rerun {at} failed: {}", ran.stderr.trim())));
    }
    Ok(match check(&format!("the rerun {at}"))? {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("the rerun {at} succeeded but its rows are not in")),
        Err(e) => Err(e),
    })
}

fn full_disk(
    bins: &Bins,
    trial: &Path,
    big: &Path,
    planted: &mut Vec<(PathBuf, Vec<u8>)>,
) -> Result<Option<Result<(), String>>> {
    let mnt = trial.join("small");
    std::fs::create_dir_all(&mnt)?;
    let m = mnt.display().to_string();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs", &m]).status()?;
    if !mounted.success() {
        // Not a trial: nothing was tested.
        return Ok(None);
    }
    planted.extend(plant(&mnt));
    let db = mnt.join("db");
    let (d, f) = (db.display().to_string(), big.display().to_string());
    let inside = vec![format!("{d}/")];
    let verdict = (|| -> Result<Result<(), String>> {
        let r = run_bin(&bins.m2m, &["ingest", &d, &f, "--chunk", "1000"])?;
        if r.code == Some(0) {
            return Ok(Err("an ingest larger than the disk succeeded".into()));
        }
        if let Err(e) = judge(&r, "ingest on a full disk", &inside) {
            return Ok(Err(e));
        }
        for args in [vec!["info", &d], vec!["verify", &d]] {
            if let Err(e) = judge(&run_bin(&bins.m2m, &args)?, &args.join(" "), &inside) {
                return Ok(Err(e));
            }
        }
        Ok(untouched(planted))
    })();
    let _ = Command::new("umount").arg(&m).status();
    planted.retain(|(p, _)| !p.starts_with(&mnt));
    verdict.map(Some)
}
