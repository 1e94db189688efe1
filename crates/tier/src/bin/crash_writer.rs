//! Test helper for the crash tests of m2m-tier.
//!
//! * `m2m-tier-crash-writer WAL_PATH DIM`: opens (or creates) a log and appends batch after batch.
//! * `m2m-tier-crash-writer db DIR DIM`: opens (or creates) a database directory and ingests batch after
//!   batch, flushing after every 4th and compacting after every 10th, so that a kill can land in any step.
//!
//! Either way it prints `ack N` on standard output once batch N is acknowledged, and runs until killed.
//! Batch N's content is a function of N alone (`testing::crash_batch`), so the test that kills this
//! process with SIGKILL can check every recovered batch byte for byte.
//!
//! For `cargo xtask torture` it also checks and damages:
//!
//! * `m2m-tier-crash-writer check DIR DIM ACKED`: opens the database as the writer would after a crash and
//!   checks that batches 0..=ACKED (`-` for none) are each present exactly once with their exact bytes,
//!   that any later batch is present whole or not at all, and that no other row exists. Prints `ok ROWS`.
//! * `m2m-tier-crash-writer rows DIR FILE`: a database made by `m2m ingest DIR FILE` (ids are file rows)
//!   read without changing it: every row present is the file's row of that number, byte for byte (unit
//!   `mu`, norm), once. Prints `ok ROWS`.
//! * `m2m-tier-crash-writer forge KIND FILE SEED`: changes a byte of a log, segment, manifest or blob
//!   file (KIND `log`, `segment`, `sealed`) chosen by SEED, then recomputes its checksums, so that the
//!   damage reaches the decoders behind them; a length or count field is the target half of the time.
//! * `m2m-tier-crash-writer forge huge FILE SEED`: a structure-aware forgery of the numbers that must
//!   never overflow, with valid checksums: a manifest's generation or next segment id near 2^64 or past
//!   ten digits; a segment row's id near 2^64; a log record (appended by the log writer itself) with an
//!   id near 2^64; an ingest log (`m2m-ingest.blob`, JSON) entry whose base or row count is huge.

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line helper reports to its terminal")]

use std::io::Write;
use std::path::PathBuf;

use m2m_tier::testing::crash_batch;
use m2m_tier::{Db, DbOptions, Durability, Wal};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = std::io::stdout().lock();
    let mut ack = |n: u64| writeln!(out, "ack {n}").and_then(|()| out.flush()).expect("stdout");
    match args.as_slice() {
        // The files the manifest of DIR names, one per line (none when it has no readable manifest).
        [mode, dir] if mode == "named" => {
            if let Ok(m) = m2m_tier::Manifest::load(&PathBuf::from(dir)) {
                for name in m
                    .segments
                    .iter()
                    .map(|s| s.file.as_str())
                    .chain(m.wal.as_deref())
                    .chain(m.index.iter().map(String::as_str))
                {
                    writeln!(out, "{name}").expect("stdout");
                }
            }
        }
        [mode, dir, dim] if mode == "db" => {
            let dir = PathBuf::from(dir);
            let dim: usize = dim.parse().expect("DIM is a number");
            let mut db = if dir.join(m2m_tier::MANIFEST_FILE).exists() {
                Db::open(&dir, DbOptions::default()).expect("open")
            } else {
                Db::create(&dir, dim, DbOptions::default()).expect("create")
            };
            // Batch n holds ids 1000 n + row: the next batch follows the largest id present.
            let snap = db.snapshot();
            let mut n = snap.parts().flat_map(|p| p.ids.iter().copied()).max().map_or(0, |id| id / 1000 + 1);
            drop(snap);
            loop {
                db.ingest(&crash_batch(n, dim)).expect("ingest");
                ack(n);
                if n % 4 == 3 {
                    db.flush().expect("flush");
                }
                if n % 10 == 9 {
                    db.compact().expect("compact");
                }
                n += 1;
            }
        }
        [path, dim] => {
            let path = PathBuf::from(path);
            let dim: usize = dim.parse().expect("DIM is a number");
            let mut wal = if path.exists() {
                Wal::open(&path, Durability::Fsync).expect("open").0
            } else {
                Wal::create(&path, dim, Durability::Fsync).expect("create")
            };
            loop {
                let n = wal.batches();
                wal.append(&crash_batch(n, dim)).expect("append");
                ack(n);
            }
        }
        [mode, dir, dim, acked] if mode == "check" => {
            let dim: usize = dim.parse().expect("DIM is a number");
            let acked: Option<u64> = (acked != "-").then(|| acked.parse().expect("ACKED is a number or -"));
            finish(check(&PathBuf::from(dir), dim, acked));
        }
        [mode, dir, file] if mode == "rows" => finish(rows(&PathBuf::from(dir), &PathBuf::from(file))),
        [mode, kind, file, seed] if mode == "forge" => {
            finish(forge(kind, &PathBuf::from(file), seed.parse().expect("SEED is a number")).map(|()| 0));
        }
        _ => {
            eprintln!(
                "usage: m2m-tier-crash-writer WAL_PATH DIM | db DIR DIM | check DIR DIM ACKED | rows DIR FILE | named DIR | forge KIND FILE SEED"
            );
            std::process::exit(2);
        }
    }
}

fn finish(result: Result<usize, String>) {
    match result {
        Ok(rows) => println!("ok {rows}"),
        Err(e) => {
            eprintln!("FAILED: {e}");
            std::process::exit(1);
        }
    }
}

/// Every row of a snapshot by id: (mu, norm, kappa, alpha) as bits.
type Rows = std::collections::HashMap<u64, (Vec<u32>, u32, u32, u32)>;

fn rows_of(snap: &m2m_tier::Snapshot) -> Result<Rows, String> {
    let mut out = Rows::new();
    for part in snap.parts() {
        for (r, &id) in part.ids.iter().enumerate() {
            if !snap.is_live(id) {
                continue;
            }
            let mu = part.mu[r * part.dim..(r + 1) * part.dim].iter().map(|v| v.to_bits()).collect();
            let row = (mu, part.norms[r].to_bits(), part.kappa[r].to_bits(), part.alpha[r].to_bits());
            if out.insert(id, row).is_some() {
                return Err(format!("id {id} present twice"));
            }
        }
    }
    Ok(out)
}

fn check(dir: &std::path::Path, dim: usize, acked: Option<u64>) -> Result<usize, String> {
    let db = Db::open(dir, DbOptions::default()).map_err(|e| format!("open after the kill: {e}"))?;
    let mut rows = rows_of(&db.snapshot())?;
    let total = rows.len();
    let mut n = 0u64;
    loop {
        let want = crash_batch(n, dim);
        let present = want.ids().iter().filter(|id| rows.contains_key(id)).count();
        if present == 0 {
            if acked.is_some_and(|a| n <= a) {
                return Err(format!("acknowledged batch {n} is missing"));
            }
            break;
        }
        if present != want.len() {
            return Err(format!("batch {n}: {present} of its {} rows present", want.len()));
        }
        for (r, id) in want.ids().iter().enumerate() {
            let (mu, norm, kappa, alpha) = rows.remove(id).unwrap_or_default();
            let want_mu: Vec<u32> = want.mu_row(r).iter().map(|v| v.to_bits()).collect();
            if mu != want_mu
                || norm != want.norms()[r].to_bits()
                || kappa != want.kappa()[r].to_bits()
                || alpha != want.alpha()[r].to_bits()
            {
                return Err(format!("batch {n}, row {r} (id {id}): bytes differ"));
            }
        }
        n += 1;
    }
    if let Some(id) = rows.keys().next() {
        return Err(format!("row {id} belongs to no batch in order (a batch after a missing one)"));
    }
    Ok(total)
}

fn rows(dir: &std::path::Path, file: &std::path::Path) -> Result<usize, String> {
    let snap = Db::read_snapshot(dir).map_err(|e| e.to_string())?;
    let rows = rows_of(&snap)?;
    let v = m2m_splat::read_vectors::<f32>(file).map_err(|e| e.to_string())?;
    let set = m2m_splat::SplatSet::from_vectors(&v.data, v.dim).map_err(|e| e.to_string())?;
    for (&id, (mu, norm, _, _)) in &rows {
        let r = usize::try_from(id).ok().filter(|&r| r < set.len()).ok_or(format!("id {id} is no row of the file"))?;
        let want_mu: Vec<u32> = set.mu_row(r).iter().map(|v| v.to_bits()).collect();
        if *mu != want_mu || *norm != set.norms()[r].to_bits() {
            return Err(format!("row {r}: bytes differ from the file's"));
        }
    }
    Ok(rows.len())
}

/// Numbers near the edges: 2^64-1, 2^64-2, 2^64-60, the largest ten-digit number and the one after.
const HUGE: [u64; 5] = [u64::MAX, u64::MAX - 1, u64::MAX - 60, m2m_tier::MAX_NUMBER, m2m_tier::MAX_NUMBER + 1];

fn forge_huge(file: &std::path::Path, seed: u64) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", file.display());
    let dir = file.parent().unwrap_or(std::path::Path::new("."));
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let huge = HUGE[(seed % HUGE.len() as u64) as usize];
    if name == m2m_tier::MANIFEST_FILE {
        let mut m = m2m_tier::Manifest::load(dir).map_err(|e| err(&e))?;
        if (seed / 8).is_multiple_of(2) {
            m.generation = huge
        } else {
            m.next_segment_id = huge
        }
        return m.store(dir).map_err(|e| err(&e));
    }
    if name.ends_with(".wal") {
        let (mut wal, _) = Wal::open(file, Durability::Fsync).map_err(|e| err(&e))?;
        let dim = wal.dim();
        let mut set = m2m_splat::SplatSet::new(dim).map_err(|e| err(&e))?;
        set.append(m2m_splat::Batch::new(&vec![0.5; dim], dim).ids(&[huge])).map_err(|e| err(&e))?;
        return wal.append(&set).map(drop).map_err(|e| err(&e));
    }
    let mut bytes = std::fs::read(file).map_err(|e| err(&e))?;
    if name.ends_with(".seg") {
        // The ids are the second column (after the directions): its offset is the header's second.
        let at = bytes.get(40..48).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize);
        let rows = bytes.get(16..24).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
        let row = (seed / 8) % rows.max(1);
        let Some(slot) = at.and_then(|a| bytes.get_mut(a + 8 * row as usize..a + 8 * row as usize + 8)) else {
            return Err(err(&"no id column"));
        };
        slot.copy_from_slice(&huge.to_le_bytes());
        m2m_tier::testing::decode::reseal_segment(&mut bytes);
        return std::fs::write(file, &bytes).map_err(|e| err(&e));
    }
    if name == "m2m-ingest.blob" {
        let text = String::from_utf8(m2m_tier::load_blob(dir, name).map_err(|e| err(&e))?).map_err(|e| err(&e))?;
        let field = if (seed / 8).is_multiple_of(2) { "\"base\":" } else { "\"rows\":" };
        let Some(start) = text.find(field).map(|i| i + field.len()) else { return Err(err(&"no field")) };
        let end = start + text[start..].bytes().take_while(u8::is_ascii_digit).count();
        let forged = format!("{}{huge}{}", &text[..start], &text[end..]);
        return m2m_tier::store_blob(dir, name, forged.as_bytes()).map_err(|e| err(&e));
    }
    // Other blobs: the generic forgery.
    forge("sealed", file, seed)
}

fn forge(kind: &str, file: &std::path::Path, seed: u64) -> Result<(), String> {
    if kind == "huge" {
        return forge_huge(file, seed);
    }
    let mut bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    if bytes.is_empty() {
        return Ok(());
    }
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // Half the time a length or count field: the record lengths and row counts of a log, the row
    // count and column offsets of a segment, the first bytes of a sealed payload (postcard's lengths).
    let fields: Vec<usize> = match kind {
        "log" => (32..bytes.len().min(32 + 24)).collect(),
        "segment" => (12..72).collect(),
        _ => (20..bytes.len().min(40)).collect(),
    };
    let at = if next() % 2 == 0 && !fields.is_empty() {
        fields[(next() % fields.len() as u64) as usize]
    } else {
        (next() % bytes.len() as u64) as usize
    };
    bytes[at] ^= 1 << (next() % 8);
    match kind {
        "log" => m2m_tier::testing::decode::reseal_log(&mut bytes),
        "segment" => m2m_tier::testing::decode::reseal_segment(&mut bytes),
        "sealed" => m2m_tier::testing::decode::reseal_manifest(&mut bytes),
        other => return Err(format!("unknown kind {other}")),
    }
    std::fs::write(file, &bytes).map_err(|e| format!("{}: {e}", file.display()))
}
