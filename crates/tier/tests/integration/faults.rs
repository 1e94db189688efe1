//! Injected storage faults (`m2m_tier::fault`): every write, sync, create and rename of a sequence of
//! database operations is made to fail in turn, with ENOSPC, EIO or a short write followed by ENOSPC. Each
//! time the failing operation reports an I/O error, the handle refuses further changes, and the reopened
//! database holds exactly what was acknowledged before the failure.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use m2m_tier::fault::{self, Fault};
use m2m_tier::testing::crash_batch;
use m2m_tier::{Db, DbOptions, Error, MANIFEST_FILE};

const DIM: usize = 8;
const FAULTS: [Fault; 3] = [Fault::NoSpace, Fault::Eio, Fault::ShortWrite];

/// Logical content: id -> (mu bits, kappa bits, alpha bits).
type Model = BTreeMap<u64, (Vec<u32>, u32, u32)>;

fn content(db: &Db) -> Model {
    let s = db.snapshot();
    let mut out = Model::new();
    for p in s.parts() {
        for (i, &id) in p.ids.iter().enumerate().filter(|(_, id)| s.is_live(**id)) {
            let mu = p.mu[i * p.dim..(i + 1) * p.dim].iter().map(|x| x.to_bits()).collect();
            assert!(out.insert(id, (mu, p.kappa[i].to_bits(), p.alpha[i].to_bits())).is_none(), "id {id} twice");
        }
    }
    out
}

fn add(model: &mut Model, n: u64) {
    let b = crash_batch(n, DIM);
    for (i, &id) in b.ids().iter().enumerate() {
        let mu = b.mu_row(i).iter().map(|x| x.to_bits()).collect();
        model.insert(id, (mu, b.kappa()[i].to_bits(), b.alpha()[i].to_bits()));
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Ingest(u64),
    Delete(&'static [u64]),
    Flush,
    Compact,
}

/// Batch 1 is in a segment and batch 3 in the log when the sequence starts: the delete hits both.
const OPS: [Op; 7] = [
    Op::Ingest(10),
    Op::Delete(&[1000, 3000, 10_000]),
    Op::Flush,
    Op::Ingest(11),
    Op::Delete(&[11_000]),
    Op::Compact,
    Op::Ingest(12),
];

fn apply(db: &mut Db, model: &mut Model, op: Op) -> Result<(), Error> {
    match op {
        Op::Ingest(n) => db.ingest(&crash_batch(n, DIM)).map(|()| add(model, n)),
        Op::Delete(ids) => db.delete(ids).map(|_| ids.iter().for_each(|id| drop(model.remove(id)))),
        Op::Flush => db.flush(),
        Op::Compact => db.compact(),
    }
}

/// A database with batches 0..3 in a segment and 3..5 in the log; returns its content.
fn build_base(dir: &Path) -> Model {
    let mut db = Db::create(dir, DIM, DbOptions::default()).unwrap();
    for n in 0..5 {
        db.ingest(&crash_batch(n, DIM)).unwrap();
        if n == 2 {
            db.flush().unwrap();
        }
    }
    content(&db)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn os_error(fault: Fault) -> i32 {
    if fault == Fault::Eio { 5 } else { 28 }
}

#[test]
fn every_failing_write_leaves_the_last_acknowledged_state() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    let base_model = build_base(&base);
    let mut runs = 0;
    for fault in FAULTS {
        for at in 0.. {
            let dir = root.path().join(format!("run-{fault:?}-{at}"));
            copy_dir(&base, &dir);
            let mut db = Db::open(&dir, DbOptions::default()).unwrap();
            let mut model = base_model.clone();
            let guard = fault::arm(at, fault);
            let mut failed = None;
            for op in OPS {
                if let Err(e) = apply(&mut db, &mut model, op) {
                    failed = Some((op, e));
                    break;
                }
            }
            let fired = fault::fired();
            let points = fault::points();
            drop(guard);
            runs += 1;
            let Some((op, err)) = failed else {
                assert!(!fired, "{fault:?} at point {at} fired but no operation failed");
                assert!(at >= 20, "only {at} fault points in the whole sequence");
                assert_eq!(content(&db), model);
                break;
            };
            assert!(fired, "{op:?} failed without the fault firing: {err}");
            match &err {
                Error::Io { path, source } => {
                    assert_eq!(source.raw_os_error(), Some(os_error(fault)), "{op:?} at point {at}: {err}");
                    assert!(path.starts_with(&dir), "{err} names a path outside the database");
                }
                other => panic!("{fault:?} at point {at} ({points} points): {op:?} gave {other}"),
            }
            // The handle is poisoned: no further change, whatever it is.
            assert!(matches!(db.ingest(&crash_batch(13, DIM)), Err(Error::Poisoned { .. })));
            assert!(matches!(db.flush(), Err(Error::Poisoned { .. })));
            drop(db);
            // Reopened (faults off): exactly what was acknowledged, and the database works again.
            let mut db = Db::open(&dir, DbOptions::default())
                .unwrap_or_else(|e| panic!("{fault:?} at point {at} during {op:?}: reopen failed: {e}"));
            assert_eq!(content(&db), model, "{fault:?} at point {at} during {op:?}");
            db.ingest(&crash_batch(14, DIM)).unwrap();
            db.compact().unwrap();
            add(&mut model, 14);
            assert_eq!(content(&db), model);
            drop(db);
            fs::remove_dir_all(&dir).unwrap();
        }
    }
    assert!(runs > 60, "{runs} runs");
}

#[test]
fn a_failed_create_leaves_nothing_and_can_be_retried() {
    let root = tempfile::tempdir().unwrap();
    for fault in FAULTS {
        for at in 0.. {
            let dir = root.path().join(format!("create-{fault:?}-{at}"));
            let guard = fault::arm(at, fault);
            let created = Db::create(&dir, DIM, DbOptions::default());
            let fired = fault::fired();
            drop(guard);
            match created {
                Ok(db) => {
                    assert!(!fired, "{fault:?} at {at} fired but create succeeded");
                    assert!(at >= 4, "only {at} fault points in create");
                    drop(db);
                    break;
                }
                Err(Error::Io { source, .. }) => {
                    assert_eq!(source.raw_os_error(), Some(os_error(fault)));
                    let names: Vec<String> =
                        fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
                    assert!(names.iter().all(|n| n == "LOCK"), "{fault:?} at {at}: left {names:?} behind");
                    assert!(!dir.join(MANIFEST_FILE).exists());
                    let mut db = Db::create(&dir, DIM, DbOptions::default()).unwrap();
                    db.ingest(&crash_batch(0, DIM)).unwrap();
                }
                Err(other) => panic!("{fault:?} at {at}: {other}"),
            }
        }
    }
}
