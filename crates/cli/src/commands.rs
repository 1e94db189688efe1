//! The subcommands.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use m2m::splat::{VectorReader, VectorWriter, read_vectors};
use m2m::{
    CONFIG_BLOB, DataLoaderConfig, INDEX_BLOB, LEARNED_BLOB, LangevinDynamics, Lod, M2m, M2mConfig, Metric,
    SearchParams,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{Cli, Command};

/// `println!` that ignores a closed stdout (`m2m info DB | head` must not panic on the broken pipe).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// Where `ingest` keeps, per file, the first id it gave that file's rows (so a rerun knows which rows
/// are in and resumes after them).
const INGEST_BLOB: &str = "m2m-ingest.blob";

#[derive(Serialize, Deserialize, Default)]
struct IngestLog {
    files: Vec<IngestedFile>,
}

#[derive(Serialize, Deserialize, Clone)]
struct IngestedFile {
    path: String,
    bytes: u64,
    rows: u64,
    base: u64,
    /// CRC32C of the file's rows (as little-endian f32, whatever the file format) when its range was
    /// logged: a file regenerated in place with the same shape is detected on resume. Absent in logs
    /// written before it existed.
    #[serde(default)]
    crc: Option<u32>,
    /// The running CRC32C after every `step` rows (the ingest's chunk, so after each acknowledged chunk):
    /// a rerun checks only the rows already in against it, so a file fixed in place after a failure
    /// past them resumes. Empty in logs written before it existed.
    #[serde(default)]
    checkpoints: Vec<u32>,
    #[serde(default)]
    step: u64,
}

impl IngestedFile {
    /// The CRC this entry logged for the file's first `rows` rows, if it logged one.
    fn crc_of_first(&self, rows: u64) -> Option<u32> {
        if rows == 0 {
            return Some(0);
        }
        if rows == self.rows {
            return self.crc;
        }
        let i = (self.step > 0 && rows.is_multiple_of(self.step)).then(|| rows / self.step - 1)?;
        self.checkpoints.get(usize::try_from(i).ok()?).copied()
    }
}

/// What [`file_crc`] found.
struct FileCrc {
    /// Of every row.
    all: u32,
    /// Of the first `prefix` rows, when the file holds that many.
    prefix: Option<u32>,
    /// Running CRC after every `step` rows.
    checkpoints: Vec<u32>,
}

/// Reads and checks the ingest log of `db` (empty when there is none). Like every decoded structure it
/// is validated before use: each file's rows fit in its bytes (4 bytes at least per row), its id range
/// `base..base + rows` does not overflow, and no two ranges overlap. A bad one is an error naming the
/// blob (`m2m repair` removes it).
fn load_ingest_log(db: &Path) -> Result<IngestLog> {
    let path = db.join(INGEST_BLOB);
    let bytes = match m2m::tier::load_blob(db, INGEST_BLOB) {
        Ok(bytes) => bytes,
        Err(m2m::tier::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(IngestLog::default());
        }
        Err(e) => return Err(e.into()),
    };
    let log: IngestLog =
        serde_json::from_slice(&bytes).with_context(|| format!("{}: undecodable ingest log", path.display()))?;
    let mut ranges = Vec::new();
    for (i, e) in log.files.iter().enumerate() {
        let end = e.base.checked_add(e.rows);
        let fits = e.rows.checked_mul(4).is_some_and(|b| b <= e.bytes);
        match end {
            Some(end) if fits && e.rows > 0 => ranges.push((e.base, end, i)),
            _ => bail!(
                "{}: corrupt ingest log: entry {i} ({}) claims {} rows from id {} in a file of {} bytes",
                path.display(),
                e.path,
                e.rows,
                e.base,
                e.bytes
            ),
        }
    }
    ranges.sort_unstable();
    if let Some(w) = ranges.windows(2).find(|w| w[1].0 < w[0].1) {
        bail!(
            "{}: corrupt ingest log: the id ranges of entries {} and {} overlap ({}..{} and {}..{})",
            path.display(),
            w[0].2,
            w[1].2,
            w[0].0,
            w[0].1,
            w[1].0,
            w[1].1
        );
    }
    if let Some(p) = log.files.iter().enumerate().find(|(i, e)| log.files[..*i].iter().any(|x| x.path == e.path)) {
        bail!("{}: corrupt ingest log: {} is listed twice", path.display(), p.1.path);
    }
    Ok(log)
}

pub(crate) fn run(cli: &Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Ingest { db, files, chunk, no_sync, metric, attributes } => {
            // The attributes file is read and checked whole (against the database's schema, when it
            // has one) before any vector is written: a bad line leaves the database as it was.
            let prepared = match attributes.as_deref() {
                Some(path) => {
                    regular_file(path)?;
                    let existing = if is_db(db) { Some(open_with(db, !no_sync)?) } else { None };
                    let schema = existing.as_ref().and_then(M2m::schema);
                    let prepared = crate::attributes::read_attributes(path, schema.as_ref())?;
                    // The rows this ingest can add at most (a file already in adds none); a file that
                    // does not open is the ingest's error to report, and bounds nothing here.
                    let incoming = files
                        .iter()
                        .map(|f| VectorReader::open(f).map_or(u64::MAX, |r| r.info().rows))
                        .fold(0u64, u64::saturating_add);
                    crate::attributes::check_ids(path, &prepared.ids, existing.as_ref(), incoming)?;
                    Some(prepared)
                }
                None => None,
            };
            let code = ingest(cli, db, files, *chunk, *no_sync, *metric)?;
            if let Some((path, prepared)) = attributes.as_deref().zip(prepared).filter(|_| code == ExitCode::SUCCESS) {
                let mut engine = open_with(db, !no_sync)?;
                let rows = crate::attributes::apply(&mut engine, path, prepared)?;
                if cli.json {
                    say!("{}", json!({ "attributes": rows, "file": path.display().to_string() }));
                } else {
                    say!("attributes of {rows} splats set from {}", path.display());
                }
            }
            Ok(code)
        }
        Command::Build { db, n_fine, n_coarse } => build(cli, db, *n_fine, *n_coarse),
        Command::Query { db, file, row, k, lod, nprobe, rerank, filter } => {
            let params = SearchParams { nprobe: nprobe.unwrap_or(0), rerank: rerank.unwrap_or(0), coarse_probe: 0 };
            let filter = match filter {
                Some(f) => Some(serde_json::from_str::<m2m::Filter>(f).context("--filter: not a filter")?),
                None => None,
            };
            query(cli, db, file.as_deref(), *row, *k, &Search { lod: *lod, params, filter })
        }
        Command::Stream {
            db,
            batch_size,
            importance,
            generate,
            epochs,
            seed,
            out,
            force,
            steps,
            temperature,
            step_size,
            dynamics,
        } => {
            let cfg = DataLoaderConfig {
                batch_size: *batch_size,
                importance_sampling: *importance,
                generate_samples: *generate,
                epochs: *epochs,
                seed: *seed,
                generate_steps: *steps,
                temperature: *temperature,
                step_size: step_size.or(DataLoaderConfig::default().step_size),
                dynamics: dynamics.as_deref().map(|d| {
                    if d == "underdamped" { LangevinDynamics::Underdamped } else { LangevinDynamics::Overdamped }
                }),
                ..DataLoaderConfig::default()
            };
            stream(cli, db, &cfg, out.as_deref(), *force)
        }
        Command::Info { db } => info(cli, db),
        Command::Verify { db } => verify(cli, db),
        Command::Repair { db } => repair(cli, db),
        Command::Compact { db } => compact(cli, db),
        Command::Upsert { db, vectors, rows } => upsert(cli, db, vectors, rows),
        Command::Bench { base, queries, k } => bench(cli, base, queries, *k),
    }
}

fn bar(cli: &Cli, len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if cli.json || !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn spinner(cli: &Cli, what: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    if cli.json || !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_message(what.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

fn is_db(db: &Path) -> bool {
    db.join(CONFIG_BLOB).exists()
}

fn not_a_db(db: &Path) -> anyhow::Error {
    anyhow::anyhow!("{}: not an M2M database (no {CONFIG_BLOB})", db.display())
}

/// The writer: `ingest`, `build`, `repair`.
fn open(db: &Path) -> Result<M2m> {
    if !is_db(db) {
        return Err(not_a_db(db));
    }
    M2m::open(db).with_context(|| format!("opening {}", db.display()))
}

/// A reader (`info`, `verify`, `query`, `stream`): no lock, no file changed, so it works beside a running
/// ingest and on read-only media.
fn open_reader(db: &Path) -> Result<M2m> {
    if !is_db(db) {
        return Err(not_a_db(db));
    }
    M2m::open_read_only(db).with_context(|| format!("opening {}", db.display()))
}

/// Refuses an input that is not a regular file (a FIFO, a device, a directory): vector files are read
/// by their header's row count and seeked in, so a pipe would read as an empty or short file.
fn regular_file(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "{}: not a regular file (a pipe, device or directory); write the vectors to a file first",
            path.display()
        );
    }
    Ok(())
}

/// CRC32C of every row of a vector file, read in chunks as f32; of its first `prefix` rows when the
/// file holds that many; and after every `step` rows.
fn file_crc(path: &Path, chunk: usize, prefix: u64, step: u64) -> Result<FileCrc> {
    let reader = VectorReader::open(path).with_context(|| format!("{}", path.display()))?;
    let dim = reader.info().dim;
    let mut out = FileCrc { all: 0, prefix: (prefix == 0).then_some(0u32), checkpoints: Vec::new() };
    let mut row = 0u64;
    let mut bytes = Vec::new();
    for c in reader.chunks::<f32>(chunk.min(65_536)) {
        let c = c.with_context(|| format!("{}", path.display()))?;
        bytes.clear();
        bytes.extend(c.iter().flat_map(|v| v.to_le_bytes()));
        let n = (c.len() / dim.max(1)) as u64;
        let upto = |r: u64| ((r - row) as usize) * dim * 4;
        if out.prefix.is_none() && row + n >= prefix {
            out.prefix = Some(crc32c::crc32c_append(out.all, &bytes[..upto(prefix)]));
        }
        let mut next = (row / step.max(1) + 1) * step.max(1);
        while step > 0 && next <= row + n {
            out.checkpoints.push(crc32c::crc32c_append(out.all, &bytes[..upto(next)]));
            next += step;
        }
        out.all = crc32c::crc32c_append(out.all, &bytes);
        row += n;
    }
    Ok(out)
}

/// How many of an entry's rows are in: rows go in in order, from the file's first, so they are its first.
fn rows_in(engine: &M2m, e: &IngestedFile) -> u64 {
    (0..e.rows).take_while(|r| engine.contains(e.base + r)).count() as u64
}

/// A refused chunk's error with its rows counted from the start of the file, not of the chunk.
fn at_file_row(e: m2m::Error, path: &Path, first: u64, rows: u64) -> anyhow::Error {
    use m2m::splat::Error as S;
    let file = path.display();
    let at = |row: usize| first + row as u64;
    match e {
        m2m::Error::Splat(S::NonFinite { row, column, value }) => {
            anyhow::anyhow!("{file}: non-finite value {value} at row {}, column {column}", at(row))
        }
        m2m::Error::Splat(S::ZeroNorm { row }) => {
            anyhow::anyhow!("{file}: row {} is a zero vector (no direction on the unit sphere)", at(row))
        }
        other => anyhow::Error::new(other).context(format!("{file}: rows {first}..{}", first + rows)),
    }
}

/// [`open`] with this run's durability.
fn open_with(db: &Path, durable: bool) -> Result<M2m> {
    if !is_db(db) {
        bail!("{}: not an M2M database (no {CONFIG_BLOB})", db.display());
    }
    M2m::open_with(db, durable).with_context(|| format!("opening {}", db.display()))
}

fn ingest(
    cli: &Cli,
    db: &Path,
    files: &[PathBuf],
    chunk: usize,
    no_sync: bool,
    metric: Option<Metric>,
) -> Result<ExitCode> {
    if chunk == 0 {
        bail!("--chunk: must be at least 1");
    }
    // Every file is opened (and its header checked) before anything is written.
    let mut readers = Vec::new();
    for f in files {
        regular_file(f)?;
        let r = VectorReader::open(f).with_context(|| format!("{}", f.display()))?;
        readers.push((f.clone(), r));
    }
    let dim = readers[0].1.info().dim;
    for (f, r) in &readers {
        // An empty file is refused as an empty .fvecs is: the ingest log records files of rows.
        if r.info().rows == 0 {
            bail!("{}: holds no rows (shape (0, {})): nothing to ingest", f.display(), r.info().dim);
        }
        if r.info().dim != dim {
            bail!("{}: dimension {} differs from {}'s {dim}", f.display(), r.info().dim, files[0].display());
        }
    }
    let create = |db: &Path| -> Result<M2m> {
        // The stored setting stays durable: `--no-sync` is this run's choice, applied by the open below.
        let config = M2mConfig::default().dim(dim).metric(metric.unwrap_or_default()).data_dir(db);
        match M2m::create(config) {
            Ok(e) => drop(e),
            // Another first ingest created it meanwhile: open it as a writer (locked while that one runs).
            Err(m2m::Error::Tier(m2m::tier::Error::AlreadyExists { .. })) if is_db(db) => {}
            Err(m2m::Error::Tier(m2m::tier::Error::AlreadyExists { .. })) => bail!(
                "{}: holds an M2M database without its settings (no {CONFIG_BLOB}) that is not empty; it is not \
                 created over: move it away",
                db.display()
            ),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("creating {}", db.display()))),
        }
        open_with(db, !no_sync)
    };
    let (mut engine, created) = if is_db(db) {
        let e = open_with(db, !no_sync)?;
        if e.config().dim == dim {
            (e, false)
        } else if e.stats_max_id().is_none() {
            // A database that never held a splat (an earlier first ingest failed) is not bound to its
            // dimension: it is discarded and created for this one.
            m2m::tier::remove_blob(db, INGEST_BLOB)?;
            e.discard().with_context(|| format!("discarding the empty database {}", db.display()))?;
            (create(db)?, true)
        } else {
            bail!("{}: dimension {dim} does not match the database's {}", files[0].display(), e.config().dim);
        }
    } else {
        (create(db)?, true)
    };
    if let Some(m) = metric.filter(|m| *m != engine.config().metric) {
        bail!("--metric {m}: the database {} uses {}", db.display(), engine.config().metric);
    }
    match ingest_into(cli, db, &mut engine, readers, chunk) {
        Ok(done) => report_ingest(cli, &mut engine, done),
        Err(e) => {
            // A first ingest that failed before any row leaves no database behind (so the directory is
            // not bound to this file's dimension); the error is what the user needs to see.
            if created && engine.stats_max_id().is_none() {
                let _ = m2m::tier::remove_blob(db, INGEST_BLOB);
                if let Err(d) = engine.discard() {
                    tracing::warn!("could not discard the empty database {}: {d}", db.display());
                }
            }
            Err(e)
        }
    }
}

/// What an ingest did: rows added, rows already in, whether Ctrl-C stopped it, when it started.
struct Ingested {
    added: u64,
    skipped: u64,
    interrupted: bool,
    start: Instant,
}

fn ingest_into(
    cli: &Cli,
    db: &Path,
    engine: &mut M2m,
    readers: Vec<(PathBuf, VectorReader)>,
    chunk: usize,
) -> Result<Ingested> {
    let dim = engine.config().dim;
    let mut log = load_ingest_log(db)?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        // A second handler cannot be installed in one process; the CLI installs one.
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }
    let start = Instant::now();
    let (mut added, mut skipped) = (0u64, 0u64);
    let mut interrupted = false;
    for (path, mut reader) in readers {
        let info = reader.info();
        let key = std::fs::canonicalize(&path).unwrap_or(path.clone()).display().to_string();
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        // The CRC of the whole file, and of the rows an earlier entry for this path logged (an
        // appended-to file keeps that prefix).
        let earlier = log.files.iter().find(|e| e.path == key).cloned();
        let prefix = earlier.as_ref().map_or(0, |e| e.rows);
        let step = (chunk as u64).max(1);
        let FileCrc { all: crc, prefix: prefix_crc, checkpoints } = file_crc(&path, chunk, prefix, step)?;

        if let Some(e) = earlier.as_ref().filter(|e| e.bytes != bytes || e.rows != info.rows) {
            // Another size than when its range was logged. If any of its rows are in, ingesting it again
            // under a new range would add them twice: refused, saying whether its first rows still match.
            // (Rows go in in order, from the file's first: if any is in, the first is.)
            if engine.contains(e.base) {
                let how = if info.rows > e.rows && e.crc.is_some_and(|c| Some(c) == prefix_crc) {
                    format!(
                        "grew from {} to {} rows (its first {} rows are unchanged): put the new rows in a file of \
                         their own and ingest that",
                        e.rows, info.rows, e.rows
                    )
                } else {
                    // Not "ingest it under another name": that adds the rows already in a second time.
                    format!(
                        "changed from {} rows ({} bytes) to {} rows ({} bytes): restore it as it was to resume, or \
                         ingest the changed file into a new database",
                        e.rows, e.bytes, info.rows, bytes
                    )
                };
                bail!(
                    "{}: {how}; its earlier rows are in as ids {}..{} (by {}), and ingesting it again would add them twice",
                    path.display(),
                    e.base,
                    e.base + e.rows,
                    db.join(INGEST_BLOB).display()
                );
            }
        }
        let entry = match log.files.iter().find(|e| e.path == key && e.bytes == bytes && e.rows == info.rows) {
            Some(e) if e.crc.is_some_and(|c| c != crc) => {
                // Only the rows already in must be unchanged (a file fixed in place after a failure past
                // them resumes); the entry then takes the file's new CRCs for the rest.
                let done = rows_in(engine, e);
                let prefix_now = match done {
                    0 => Some(0),
                    _ if done.is_multiple_of(step) => checkpoints.get((done / step - 1) as usize).copied(),
                    _ => None,
                };
                let unchanged = prefix_now.is_some() && e.crc_of_first(done) == prefix_now;
                if !unchanged {
                    // Not "ingest it under another name": that adds the rows already in a second time.
                    bail!(
                        "{}: the content changed since its rows were ingested (same size, other values in its first \
                         {done} rows, which are in as ids {}..{}, by the CRC in {}); restore it as it was to resume, \
                         or ingest the changed file into a new database",
                        path.display(),
                        e.base,
                        e.base + done,
                        db.join(INGEST_BLOB).display()
                    );
                }
                let e = IngestedFile { crc: Some(crc), checkpoints: checkpoints.clone(), step, ..e.clone() };
                for x in log.files.iter_mut().filter(|x| x.path == key) {
                    *x = e.clone();
                }
                m2m::tier::store_blob(db, INGEST_BLOB, &serde_json::to_vec(&log)?)?;
                e
            }
            Some(e) => e.clone(),
            None => {
                // A fresh range of ids, after every id in use; logged before any row is written.
                // (The log is validated: no range end overflows.)
                let after_log = log.files.iter().map(|e| e.base + e.rows).max().unwrap_or(0);
                let base = after_log.max(next_free_id(engine, db).with_context(|| format!("{}", path.display()))?);
                if base.checked_add(info.rows).is_none() {
                    bail!(
                        "{}: no range of {} ids is left after id {base} in {} (ids are 64-bit)",
                        path.display(),
                        info.rows,
                        db.display()
                    );
                }
                let e = IngestedFile {
                    path: key.clone(),
                    bytes,
                    rows: info.rows,
                    base,
                    crc: Some(crc),
                    checkpoints: checkpoints.clone(),
                    step,
                };
                log.files.retain(|x| x.path != key);
                log.files.push(e.clone());
                m2m::tier::store_blob(db, INGEST_BLOB, &serde_json::to_vec(&log)?)?;
                e
            }
        };
        let done = rows_in(engine, &entry);
        skipped += done;
        if done == entry.rows {
            continue;
        }
        reader.seek_row(done).with_context(|| format!("{}", path.display()))?;
        let pb = bar(cli, entry.rows, &path.display().to_string());
        pb.set_position(done);
        let mut row = done;
        for c in reader.chunks::<f32>(chunk) {
            if stop.load(Ordering::SeqCst) {
                interrupted = true;
                break;
            }
            // A failure past the file's first rows says what stays in: the chunks before it are
            // acknowledged, and the same command resumes after them once the file is fixed.
            let kept = |e: anyhow::Error| match row {
                0 => e,
                _ => anyhow::anyhow!(
                    "{e:#}; its rows 0..{row} are in (ids {}..{}): fix the file and run the same command to resume",
                    entry.base,
                    entry.base + row
                ),
            };
            let c = c.with_context(|| format!("{}", path.display())).map_err(kept)?;
            let n = (c.len() / dim) as u64;
            let ids: Vec<u64> = (entry.base + row..entry.base + row + n).collect();
            engine.add_splats_with(&c, &ids, None, None).map_err(|e| kept(at_file_row(e, &path, row, n)))?;
            // `m2m -v ingest` reports each acknowledged chunk (the torture test holds the CLI to them).
            tracing::info!("acknowledged rows {row}..{} of {} as ids {}..", row + n, path.display(), entry.base + row);
            row += n;
            added += n;
            pb.set_position(row);
        }
        pb.finish_and_clear();
        if interrupted {
            break;
        }
    }
    Ok(Ingested { added, skipped, interrupted, start })
}

fn report_ingest(cli: &Cli, engine: &mut M2m, done: Ingested) -> Result<ExitCode> {
    let Ingested { added, skipped, interrupted, start } = done;
    engine.flush()?;
    let secs = start.elapsed().as_secs_f64();
    if cli.json {
        say!(
            "{}",
            json!({ "added": added, "already_in": skipped, "splats": engine.len(), "seconds": secs, "interrupted": interrupted })
        );
    } else {
        say!(
            "ingested {added} splats ({skipped} already in) in {secs:.2} s ({:.0} splats/s); the database holds {}",
            added as f64 / secs.max(1e-9),
            engine.len()
        );
    }
    if interrupted {
        eprintln!("interrupted: every acknowledged chunk is stored; run the same command to resume");
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

/// An id above every id the engine holds, or an error naming the database when none is left (a stored
/// id of 2^64-1).
fn next_free_id(engine: &M2m, db: &Path) -> Result<u64> {
    match engine.stats_max_id() {
        None => Ok(0),
        Some(m) => m.checked_add(1).with_context(|| format!("{}: no id is left after id {m}", db.display())),
    }
}

/// `upsert`: the vectors and the rows read and checked whole (counts, dimension, finite values, the
/// rows' ids and attributes), then one atomic [`M2m::upsert`]. A database without a schema takes the
/// file's, set just before the upsert (after every check this command can make).
fn upsert(cli: &Cli, db: &Path, vectors: &Path, rows: &Path) -> Result<ExitCode> {
    let mut engine = open(db)?;
    let v = read_vectors::<f32>(vectors).with_context(|| format!("{}", vectors.display()))?;
    let dim = engine.config().dim;
    if v.dim != dim {
        bail!("{}: vectors of dimension {}, the database's is {dim}", vectors.display(), v.dim);
    }
    if let Some(i) = v.data.iter().position(|x| !x.is_finite()) {
        bail!("{}: row {}: a value that is not finite ({})", vectors.display(), i / dim, v.data[i]);
    }
    // What the engine would refuse after the schema is set (a refused upsert must change nothing).
    if let Some(r) = v.data.chunks_exact(dim.max(1)).position(|row| row.iter().all(|&x| x == 0.0)) {
        bail!("{}: row {r}: a zero vector has no direction", vectors.display());
    }
    let n = v.data.len() / dim.max(1);
    let prepared = crate::attributes::read_attributes(rows, engine.schema().as_ref())?;
    if prepared.ids.len() != n {
        bail!("{}: {} rows for the {n} vectors of {}", rows.display(), prepared.ids.len(), vectors.display());
    }
    if n == 0 {
        bail!("{}: no vectors", vectors.display());
    }
    if let Some(r) = prepared.ids.iter().position(|&id| id == u64::MAX) {
        bail!("{}: row {}: id {} is reserved", rows.display(), r + 1, u64::MAX);
    }
    let with_attrs = !prepared.batch.columns.is_empty();
    if with_attrs && engine.schema().is_none() {
        engine.set_schema(prepared.schema.clone()).with_context(|| format!("{}", rows.display()))?;
    }
    let replaced = prepared.ids.iter().filter(|&&id| engine.contains(id)).count();
    engine
        .upsert(&v.data, &prepared.ids, None, None, with_attrs.then_some(&prepared.batch))
        .with_context(|| format!("{}", db.display()))?;
    engine.flush()?;
    if cli.json {
        say!("{}", json!({ "replaced": replaced, "added": n - replaced, "splats": engine.len() }));
    } else {
        say!("{replaced} splats replaced, {} added ({} in all)", n - replaced, engine.len());
    }
    Ok(ExitCode::SUCCESS)
}

fn compact(cli: &Cli, db: &Path) -> Result<ExitCode> {
    let mut engine = open(db)?;
    engine.compact().with_context(|| format!("{}", db.display()))?;
    let s = engine.stats();
    if cli.json {
        say!("{}", json!({ "splats": s.splats, "segments": s.segments }));
    } else {
        say!("compacted: {} splats in {} segments", s.splats, s.segments);
    }
    Ok(ExitCode::SUCCESS)
}

fn build(cli: &Cli, db: &Path, n_fine: Option<usize>, n_coarse: Option<usize>) -> Result<ExitCode> {
    let mut engine = open(db)?;
    let pb = spinner(cli, "building the index");
    let t = Instant::now();
    engine.build_index_with(n_fine, n_coarse).with_context(|| format!("{}", db.display()))?;
    pb.finish_and_clear();
    let s = engine.stats();
    let (fine, coarse) = (s.fine_clusters.unwrap_or(0), s.coarse_clusters.unwrap_or(0));
    let secs = t.elapsed().as_secs_f64();
    // The index caps cluster counts by the data (a cluster needs members): say so rather than build
    // something else without a word.
    for (flag, asked, got) in [("--n-fine", n_fine, fine), ("--n-coarse", n_coarse, coarse)] {
        if let Some(asked) = asked.filter(|&a| a != got) {
            eprintln!(
                "note: {flag} {asked} asked, {got} built (empty clusters are dropped; counts are capped by the data)"
            );
        }
    }
    if cli.json {
        // The engine's statistics (the same fields as `m2m info --json` and Python's `m2m.Stats`).
        let mut out = serde_json::to_value(&s)?;
        out["seconds"] = json!(secs);
        say!("{out}");
    } else {
        say!(
            "built the index over {} splats in {secs:.2} s: {} fine / {} coarse clusters; kappa mean {:.2} (min {:.2}, max {:.2})",
            s.splats,
            fine,
            coarse,
            s.kappa_mean,
            s.kappa_min,
            s.kappa_max
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// How `query` searches: the level of detail, the search parameters, the filter.
struct Search {
    lod: Lod,
    params: SearchParams,
    filter: Option<m2m::Filter>,
}

fn query(cli: &Cli, db: &Path, file: Option<&Path>, row: Option<u64>, k: usize, search: &Search) -> Result<ExitCode> {
    let Search { lod, params, filter } = search;
    let (lod, params, filter) = (*lod, params, filter.as_ref());
    let engine = open_reader(db)?;
    if engine.index().is_none() {
        bail!("{}: no current index; run `m2m build {}`", db.display(), db.display());
    }
    let dim = engine.config().dim;
    let queries: Vec<f32> = match (file, row) {
        (Some(f), _) => {
            regular_file(f)?;
            let v = read_vectors::<f32>(f).with_context(|| format!("{}", f.display()))?;
            if v.dim != dim {
                bail!("{}: dimension {} does not match the database's {dim}", f.display(), v.dim);
            }
            if v.data.is_empty() {
                bail!("{}: holds no query vector", f.display());
            }
            v.data
        }
        (None, Some(id)) => engine.vector_of(id).with_context(|| format!("--row: no splat with id {id}"))?,
        (None, None) => bail!("--file or --row: one is needed"),
    };
    let t = Instant::now();
    let results = match filter {
        None => engine.retrieve_batch_with(&queries, k, lod, params),
        Some(f) => queries.chunks_exact(dim).map(|q| engine.retrieve_filtered_with(q, k, lod, params, f)).collect(),
    }
    .with_context(|| file.map_or_else(|| format!("--row {}", row.unwrap_or(0)), |f| f.display().to_string()))?;
    let with_attrs = engine.schema().is_some();
    // The engine answers at most every live splat (its one bound of k); the output says what it used.
    let k = k.min(engine.len());
    let secs = t.elapsed().as_secs_f64();
    if cli.json {
        let out: Vec<_> = results
            .iter()
            .map(|hits| {
                engine
                    .with_attributes(hits)
                    .iter()
                    .map(|(h, a)| {
                        let mut hit = json!({ "id": h.id, "score": h.score, "kappa": h.kappa, "alpha": h.alpha });
                        if with_attrs {
                            hit["attributes"] = crate::attributes::to_json(a);
                        }
                        hit
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        say!("{}", json!({ "lod": lod.level(), "lod_name": lod.name(), "k": k, "results": out, "seconds": secs }));
    } else {
        for (q, hits) in results.iter().enumerate() {
            say!("query {q}:");
            say!("  {:>4}  {:>12}  {:>10}  {:>7}  {:>7}", "rank", "id", "score", "kappa", "alpha");
            for (r, (h, a)) in engine.with_attributes(hits).iter().enumerate() {
                let attrs = if with_attrs { format!("  {}", crate::attributes::to_json(a)) } else { String::new() };
                say!("  {:>4}  {:>12}  {:>10.5}  {:>7.2}  {:>7.3}{attrs}", r + 1, h.id, h.score, h.kappa, h.alpha);
            }
        }
        say!("{} queries at LOD {} ({lod}) in {:.2} ms", results.len(), lod.level(), secs * 1e3);
    }
    Ok(ExitCode::SUCCESS)
}

fn stream(cli: &Cli, db: &Path, cfg: &DataLoaderConfig, out: Option<&Path>, force: bool) -> Result<ExitCode> {
    if let Some(p) = out.filter(|p| !force && std::fs::symlink_metadata(p).is_ok()) {
        bail!("{}: exists; --force replaces it", p.display());
    }
    // The loader's bounds, checked before the database is read (so `--epochs 2^64-1` is an answer, not a
    // run that never ends, nor an overflow in the progress bar's length).
    if cfg.epochs > m2m::MAX_EPOCHS {
        bail!("--epochs {}: at most {}", cfg.epochs, m2m::MAX_EPOCHS);
    }
    if cfg.generate_steps > m2m::MAX_GENERATE_STEPS {
        bail!("--steps {}: at most {}", cfg.generate_steps, m2m::MAX_GENERATE_STEPS);
    }
    let engine = open_reader(db)?;
    if (cfg.importance_sampling || cfg.generate_samples) && engine.index().is_none() {
        bail!("{}: --importance and --generate need an index; run `m2m build {}`", db.display(), db.display());
    }
    let dim = engine.config().dim;
    let mut writer = match out {
        Some(p) => Some(VectorWriter::<f32>::create(p, dim).with_context(|| format!("{}", p.display()))?),
        None => None,
    };
    let per_epoch = engine.len().div_ceil(cfg.batch_size.max(1)) as u64;
    let pb = bar(cli, per_epoch * cfg.epochs, "batches");
    let t = Instant::now();
    let (mut rows, mut generated, mut batches) = (0usize, 0usize, 0u64);
    // Generated rows of the first batch (up to 256) and their seeds, for the fidelity report.
    let (mut gen_seeds, mut gen_rows) = (Vec::new(), Vec::new());
    // Errors name the database (an empty one has nothing to stream).
    let in_db = || format!("{}", db.display());
    for b in engine.export_to_dataloader(cfg).with_context(in_db)? {
        let b = b.with_context(in_db)?;
        rows += b.len();
        generated += b.generated.iter().filter(|g| **g).count();
        batches += 1;
        if gen_seeds.is_empty() {
            for (i, _) in b.generated.iter().enumerate().filter(|(_, g)| **g).take(256) {
                gen_seeds.push(b.ids[i]);
                gen_rows.extend_from_slice(&b.mu[i * dim..(i + 1) * dim]);
            }
        }
        if let (Some(w), Some(p)) = (&mut writer, out) {
            w.write_rows(&b.mu).with_context(|| format!("{}", p.display()))?;
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    if let (Some(w), Some(p)) = (writer, out) {
        w.finish().with_context(|| format!("{}", p.display()))?;
    }
    let secs = t.elapsed().as_secs_f64();
    // What the rows were worth: the importance weights, the clipped kappa, the generated rows' fidelity.
    // Every error here names the database too (finding 4 of the second review: none may name no file).
    let weights = if cfg.importance_sampling { Some(engine.weight_report().with_context(in_db)?) } else { None };
    let fidelity = if gen_seeds.is_empty() {
        None
    } else {
        Some(engine.fidelity(&gen_seeds, &gen_rows, None).with_context(in_db)?)
    };
    let clipped = engine.stats().kappa_clipped;
    if cli.json {
        say!(
            "{}",
            json!({ "batches": batches, "rows": rows, "generated": generated, "seconds": secs, "splats_per_second": rows as f64 / secs,
                    "weights": weights.map(|w| json!({ "min": w.min, "max": w.max, "ess_share": w.ess_share })),
                    "kappa_clipped_share": clipped,
                    "fidelity": fidelity.map(|f| json!({ "rows": f.rows, "mean_cos_to_seed": f.mean_cos_to_seed, "in_band": f.in_band,
                        "within_16th": f.within_16th, "copies": f.copies, "max_cos_to_real": f.max_cos_to_real })) })
        );
    } else {
        say!(
            "streamed {batches} batches, {rows} rows ({generated} generated) in {secs:.2} s: {:.0} splats/s",
            rows as f64 / secs.max(1e-9)
        );
        match weights {
            Some(w) => say!(
                "importance weights: min {:.3}, max {:.3}, effective sample size {:.1}% of the draws",
                w.min,
                w.max,
                100.0 * w.ess_share
            ),
            None => say!("importance weights: none (every row once, weight 1)"),
        }
        if let Some(c) = clipped {
            say!("kappa clipped to [min_kappa, max_kappa]: {:.1}% of the splats", 100.0 * c);
        }
        if let Some(f) = fidelity {
            say!(
                "generated rows ({} measured): cosine to seed {:.3}, {:.1}% inside the seed's band of real neighbours (1st-16th), {:.1}% within its 16th, {} copies (max cosine to a real row {:.4})",
                f.rows,
                f.mean_cos_to_seed,
                100.0 * f.in_band,
                100.0 * f.within_16th,
                f.copies,
                f.max_cos_to_real
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn dir_bytes(db: &Path) -> Result<Vec<(String, u64)>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(db).with_context(|| format!("{}", db.display()))? {
        let e = e?;
        files.push((e.file_name().to_string_lossy().into_owned(), e.metadata()?.len()));
    }
    files.sort();
    Ok(files)
}

fn info(cli: &Cli, db: &Path) -> Result<ExitCode> {
    let engine = open_reader(db)?;
    let s = engine.stats();
    let files = dir_bytes(db)?;
    let total: u64 = files.iter().map(|f| f.1).sum();
    if cli.json {
        // The engine's statistics (`m2m::Stats`, Python's `m2m.Stats`: the same fields), then the files.
        let mut out = serde_json::to_value(&s)?;
        out["bytes"] = json!(total);
        out["schema"] = json!(engine.schema());
        out["files"] = json!(files.iter().map(|(n, b)| json!({ "name": n, "bytes": b })).collect::<Vec<_>>());
        say!("{out}");
    } else {
        say!("database   {}", db.display());
        say!("splats     {} x {}", s.splats, s.dim);
        say!("segments   {}", s.segments);
        say!("size       {:.1} MB in {} files", total as f64 / 1e6, files.len());
        match (s.fine_clusters, s.coarse_clusters) {
            (Some(f), Some(c)) => say!(
                "index      {f} fine / {c} coarse clusters; calibrated nprobe {}, rerank {}",
                s.nprobe.unwrap_or(0),
                s.rerank.unwrap_or(0)
            ),
            _ => say!("index      none (run `m2m build`)"),
        }
        say!("metric     {}", s.metric);
        match engine.schema() {
            Some(schema) => say!("schema     {}", crate::attributes::schema_line(&schema)),
            None => say!("schema     none (no attributes)"),
        }
        say!("kappa      mean {:.2}, min {:.2}, max {:.2}", s.kappa_mean, s.kappa_min, s.kappa_max);
        say!("device     {}", s.device);
        for (name, bytes) in &files {
            say!("  {name:<24} {bytes:>14}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What `verify` and `repair` find: the database's own files checked without changing them, and each
/// blob read and decoded.
struct Findings {
    check: m2m::tier::DbCheck,
    /// One line per problem, each naming its file.
    problems: Vec<String>,
    /// The damaged blobs that `repair` removes (each is rebuilt or optional), with what removing it costs.
    damaged: Vec<(&'static str, &'static str)>,
    /// The problems `repair` cannot fix (neither the log's tail nor a removable blob).
    unrepairable: Vec<String>,
    index: &'static str,
    /// The stored index's section files are damaged: `repair` drops the index through the manifest.
    bad_stored_index: bool,
}

/// The blobs `repair` may remove when damaged, and what their removal costs.
const REMOVABLE: [(&str, &str); 6] = [
    (INDEX_BLOB, "`m2m build` makes a new index"),
    // Without it a stored index would keep the old vectors of the ids upserted since it was written:
    // the index goes with it (below).
    (
        m2m::REPLACED_BLOB,
        "the stored index goes with it (it holds upserted ids' old vectors); `m2m build` makes a new one",
    ),
    (LEARNED_BLOB, "the learned kappa and alpha go back to the stored ones; `m2m build` learns them again"),
    (m2m::NEIGHBOURS_BLOB, "`m2m build` computes the neighbourhoods again"),
    (m2m::SOC_BLOB, "the sandpile's state starts afresh"),
    (
        INGEST_BLOB,
        "`m2m ingest` can no longer resume the files it listed: ingesting one again adds its rows again under new ids",
    ),
];

fn find(db: &Path) -> Result<Findings> {
    if !is_db(db) {
        return Err(not_a_db(db));
    }
    // The manifest, every segment's header and column checksums (every byte), every log record; a
    // damage that nothing can repair (a segment, the manifest, the middle of the log) is the error.
    let check = m2m::tier::Db::check(db)?;
    let mut problems = Vec::new();
    let log = &check.log;
    if log.tail_bytes() > 0 {
        let rows = log.tail_rows.map_or_else(String::new, |r| format!(", a record of {r} rows"));
        problems.push(format!(
            "{}: {} bytes after the last good record at byte {}{rows}: a torn write, or a damaged acknowledged \
             record; `m2m repair` cuts them",
            log.path.display(),
            log.tail_bytes(),
            log.end
        ));
    }
    // The blobs: the settings and the index, neighbourhoods and sandpile (decoded and checked by a
    // read-only open), the learned values (by the lake reader), the ingest log. The stored index's
    // section files were checked byte by byte by `Db::check`; a rebuild repairs them.
    let index_problem = check.index_problem.clone();
    let stored_index = db.join(INDEX_BLOB).exists() || !check.manifest.index.is_empty();
    let mut f = Findings {
        check,
        problems,
        damaged: Vec::new(),
        unrepairable: Vec::new(),
        index: "none",
        bad_stored_index: false,
    };
    if let Some(problem) = index_problem {
        f.bad_stored_index = true;
        f.problems.push(problem);
    }
    match M2m::open_read_only(db) {
        Ok(engine) if engine.index().is_some() => {
            f.index = "ok";
            // The saved sandpile, which the open leaves to its first use.
            if let Err(e) = engine.check_deferred() {
                let damaged = blob_of(&e);
                f.note(e.to_string(), damaged);
            }
        }
        Ok(_) if stored_index => f.index = "stale (rebuild with `m2m build`)",
        Ok(_) => {}
        Err(e) if names_index_file(&e) => {
            f.bad_stored_index = true;
            let line = e.to_string();
            if !f.problems.contains(&line) {
                f.problems.push(line);
            }
        }
        Err(e) => {
            let damaged = blob_of(&e);
            if damaged == Some(INDEX_BLOB) {
                f.index = "damaged";
            }
            f.note(e.to_string(), damaged);
        }
    }
    if f.bad_stored_index {
        f.index = "damaged";
    }
    if let Err(e) = m2m::LakeReader::open(db) {
        let damaged = blob_of(&e);
        f.note(e.to_string(), damaged);
    }
    if let Err(e) = load_ingest_log(db) {
        f.note(format!("{e:#}"), Some(INGEST_BLOB));
    }
    Ok(f)
}

/// Whether an error of a read-only open names one of the stored index's section files (`.idx`, `.vec`).
fn names_index_file(e: &m2m::Error) -> bool {
    matches!(e, m2m::Error::Tier(
        m2m::tier::Error::Corrupt { path, .. } | m2m::tier::Error::IncompatibleVersion { path, .. })
        if path.extension().is_some_and(|x| x == "idx" || x == "vec"))
}

/// The removable blob an error of a read-only open names (damaged or of another format version).
fn blob_of(e: &m2m::Error) -> Option<&'static str> {
    match e {
        m2m::Error::Tier(
            m2m::tier::Error::Corrupt { path, .. } | m2m::tier::Error::IncompatibleVersion { path, .. },
        ) => REMOVABLE.iter().map(|r| r.0).find(|b| path.ends_with(b)),
        _ => None,
    }
}

impl Findings {
    /// Files one problem: a damaged removable blob (once), or one `repair` cannot fix. The same line from
    /// two checks is listed once.
    fn note(&mut self, line: String, blob: Option<&'static str>) {
        if self.problems.contains(&line) {
            return;
        }
        self.problems.push(line.clone());
        match blob.and_then(|b| REMOVABLE.iter().find(|r| r.0 == b)) {
            Some(r) if !self.damaged.iter().any(|d| d.0 == r.0) => self.damaged.push(*r),
            Some(_) => {}
            None => self.unrepairable.push(line),
        }
    }
}

fn verify(cli: &Cli, db: &Path) -> Result<ExitCode> {
    let f = find(db)?;
    let splats = f.check.snapshot.len();
    let segments = f.check.manifest.segments.len();
    if cli.json {
        say!(
            "{}",
            json!({ "ok": f.problems.is_empty(), "splats": splats, "segments": segments, "index": f.index, "problems": f.problems })
        );
    } else if f.problems.is_empty() {
        say!("OK: {splats} splats, {segments} segments, every checksum and blob verified; index {}", f.index);
    } else {
        for p in &f.problems {
            say!("DAMAGED: {p}");
        }
    }
    match f.problems.first() {
        None => Ok(ExitCode::SUCCESS),
        Some(first) if f.problems.len() == 1 => bail!("{first}"),
        Some(first) => bail!("{first} (and {} more problems)", f.problems.len() - 1),
    }
}

fn repair(cli: &Cli, db: &Path) -> Result<ExitCode> {
    let mut dropped = Vec::new();
    // A read-only open stops at the first damaged blob: find, remove, and look again, until no
    // removable blob is damaged (each round removes at least one, so at most one round per blob).
    let mut f = find(db)?;
    for _ in 0..=REMOVABLE.len() + 1 {
        let replaced_damaged = f.damaged.iter().any(|d| d.0 == m2m::REPLACED_BLOB);
        let drop_stored = (f.bad_stored_index || replaced_damaged) && !f.check.manifest.index.is_empty();
        if replaced_damaged && db.join(INDEX_BLOB).exists() && !f.damaged.iter().any(|d| d.0 == INDEX_BLOB) {
            // An index stored as a blob (older builds) goes with the upsert bookkeeping too, first.
            let lock = m2m::tier::DirLock::acquire(db)?;
            m2m::tier::remove_blob(db, INDEX_BLOB)?;
            dropped.push(format!("{}: removed with {}", db.join(INDEX_BLOB).display(), m2m::REPLACED_BLOB));
            drop(lock);
        }
        if f.damaged.is_empty() && !drop_stored {
            break;
        }
        if drop_stored {
            // The stored index's section files: dropped through the manifest (the writer's open).
            let mut tier = m2m::tier::Db::open(db, m2m::tier::DbOptions::default())?;
            if let Some(cut) = tier.cut_tail() {
                dropped.push(cut.to_string());
            }
            tier.drop_index()?;
            let why = if f.bad_stored_index { "damaged" } else { "with the damaged upsert bookkeeping" };
            for name in &f.check.manifest.index {
                dropped.push(format!("{}: removed ({why}); `m2m build` makes a new index", db.join(name).display()));
            }
        }
        if !f.damaged.is_empty() {
            // Under the writer's lock: no writer is changing the blobs meanwhile.
            let lock = m2m::tier::DirLock::acquire(db)?;
            for (blob, cost) in &f.damaged {
                m2m::tier::remove_blob(db, blob)?;
                dropped.push(format!("{}: removed (damaged); {cost}", db.join(blob).display()));
            }
            drop(lock);
        }
        f = find(db)?;
    }
    // The writer's open cuts the log's tail and says what it cut.
    let engine = open(db)?;
    if let Some(cut) = engine.cut_tail() {
        dropped.push(cut.to_string());
    }
    drop(engine);
    let left = &f.unrepairable;
    if cli.json {
        say!("{}", json!({ "dropped": dropped, "not_repaired": left }));
    } else if dropped.is_empty() && left.is_empty() {
        say!("nothing to repair");
    } else {
        for d in &dropped {
            say!("dropped: {d}");
        }
    }
    if let Some(first) = left.first() {
        bail!("not repaired: {first}");
    }
    Ok(ExitCode::SUCCESS)
}

fn bench(cli: &Cli, base: &Path, queries: &Path, k: usize) -> Result<ExitCode> {
    regular_file(base)?;
    regular_file(queries)?;
    let b = read_vectors::<f32>(base).with_context(|| format!("{}", base.display()))?;
    let q = read_vectors::<f32>(queries).with_context(|| format!("{}", queries.display()))?;
    if b.dim != q.dim {
        bail!("{}: dimension {} does not match {}'s {}", queries.display(), q.dim, base.display(), b.dim);
    }
    if q.data.is_empty() {
        bail!("{}: holds no query vector", queries.display());
    }
    let mut engine = M2m::create(M2mConfig::default().dim(b.dim))?;
    let t = Instant::now();
    engine.add_splats(&b.data)?;
    let ingest = t.elapsed().as_secs_f64();
    let pb = spinner(cli, "building the index");
    let t = Instant::now();
    engine.build_index()?;
    let build = t.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let nq = q.data.len() / q.dim;
    let exact: Vec<HashSet<u64>> =
        engine.retrieve_batch(&q.data, k, Lod::Exact)?.iter().map(|h| h.iter().map(|x| x.id).collect()).collect();
    let mut rows = Vec::new();
    for (name, lod) in [("0", Lod::Centroids), ("1", Lod::Codes), ("2", Lod::Rerank), ("exact", Lod::Exact)] {
        let t = Instant::now();
        let res = engine.retrieve_batch(&q.data, k, lod)?;
        let qps = nq as f64 / t.elapsed().as_secs_f64();
        let found: usize = res.iter().zip(&exact).map(|(h, e)| h.iter().filter(|x| e.contains(&x.id)).count()).sum();
        // Against the exact answers' own sizes: k beyond the rows returns every row, and that is recall 1.
        let wanted: usize = exact.iter().map(HashSet::len).sum();
        rows.push((name, found as f64 / wanted.max(1) as f64, qps));
    }
    if cli.json {
        let lods: Vec<_> = rows.iter().map(|(n, r, q)| json!({ "lod": n, "recall": r, "qps": q })).collect();
        say!(
            "{}",
            json!({ "rows": b.data.len() / b.dim, "dim": b.dim, "queries": nq, "k": k.min(b.data.len() / b.dim), "ingest_seconds": ingest, "build_seconds": build, "lods": lods })
        );
    } else {
        say!(
            "{} x {} ingested in {ingest:.2} s, index built in {build:.2} s; {nq} queries, k = {}",
            b.data.len() / b.dim,
            b.dim,
            k.min(b.data.len() / b.dim)
        );
        say!("  {:>5}  {:>9}  {:>10}", "LOD", "recall", "QPS");
        for (n, r, q) in rows {
            say!("  {n:>5}  {r:>9.4}  {q:>10.0}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
