//! The database directory: ingest, flush, compaction, reopening, snapshots, orphans, the lock.

use std::collections::HashMap;
use std::fs;

use m2m_tier::testing::crash_batch;
use m2m_tier::{Db, DbOptions, Error, Snapshot};

const DIM: usize = 12;

/// Every (id -> (mu row, kappa)) in a snapshot.
fn rows(s: &Snapshot) -> HashMap<u64, (Vec<f32>, f32)> {
    let mut out = HashMap::new();
    for p in s.parts() {
        for (i, &id) in p.ids.iter().enumerate() {
            if !s.is_live(id) {
                continue;
            }
            assert!(out.insert(id, (p.mu[i * p.dim..(i + 1) * p.dim].to_vec(), p.kappa[i])).is_none(), "id {id} twice");
        }
    }
    out
}

/// Checks that a snapshot holds exactly batches 0..n of `crash_batch`.
fn assert_batches(s: &Snapshot, n: u64) {
    let got = rows(s);
    let mut expected = 0;
    for b in 0..n {
        let want = crash_batch(b, DIM);
        for (i, id) in want.ids().iter().enumerate() {
            let (mu, kappa) = got.get(id).unwrap_or_else(|| panic!("batch {b}: id {id} missing"));
            assert_eq!(mu.as_slice(), want.mu_row(i), "batch {b} id {id}");
            assert_eq!(*kappa, want.kappa()[i]);
        }
        expected += want.len();
    }
    assert_eq!(got.len(), expected, "rows beyond batches 0..{n}");
}

#[test]
fn ingest_flush_compact_and_reopen_keep_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
    for n in 0..10 {
        db.ingest(&crash_batch(n, DIM)).unwrap();
        if n % 3 == 2 {
            db.flush().unwrap();
        }
    }
    assert_eq!(db.manifest().segments.len(), 3);
    assert_batches(&db.snapshot(), 10);
    db.compact().unwrap();
    assert_eq!(db.manifest().segments.len(), 1);
    assert_batches(&db.snapshot(), 10);
    drop(db);
    let db = Db::open(dir.path(), DbOptions::default()).unwrap();
    assert_batches(&db.snapshot(), 10);
    // Exactly the files the manifest names, plus LOCK and MANIFEST.
    let mut files: Vec<String> =
        fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    let m = db.manifest();
    let mut want: Vec<String> = m.segments.iter().map(|s| s.file.clone()).chain(m.wal.clone()).collect();
    want.extend(["LOCK".to_string(), "MANIFEST".to_string()]);
    want.sort();
    assert_eq!(files, want);
}

#[test]
fn a_snapshot_does_not_change_while_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
    for n in 0..4 {
        db.ingest(&crash_batch(n, DIM)).unwrap();
    }
    db.flush().unwrap();
    db.ingest(&crash_batch(4, DIM)).unwrap();
    let snap = db.snapshot();
    for n in 5..9 {
        db.ingest(&crash_batch(n, DIM)).unwrap();
        db.flush().unwrap();
    }
    db.compact().unwrap();
    // The old segment files are gone from the directory, yet the snapshot still reads them.
    assert_batches(&snap, 5);
    assert_batches(&db.snapshot(), 9);
}

#[test]
fn leftovers_of_an_interrupted_flush_are_removed_and_the_lock_is_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
    db.ingest(&crash_batch(0, DIM)).unwrap();
    assert!(matches!(Db::open(dir.path(), DbOptions::default()), Err(Error::Locked { .. })));
    drop(db);
    let ours = [
        "0000000007.seg",
        "0000000009.wal",
        ".m2m-tmp.0000000008.seg.0123456789abcdef",
        ".m2m-tmp.MANIFEST.fedcba9876543210",
    ];
    // Names that merely look like ours belong to the user: never removed. A ten-digit name without our
    // magic bytes is the user's too (the name alone would delete it: the mutation this catches).
    let theirs = [
        "report.tmp",
        "MANIFEST.tmp",
        ".0000000008.seg.tmp",
        "notes.wal",
        "x.seg",
        "m2m-notes.blob",
        "0000000005.wal",
        "0000000006.seg",
    ];
    for stray in ours.iter().chain(&theirs) {
        fs::write(dir.path().join(stray), b"half written").unwrap();
    }
    // Ours carry our magic (a segment or log is renamed into place whole).
    fs::write(dir.path().join("0000000007.seg"), [&m2m_tier::SEGMENT_MAGIC[..], b"half"].concat()).unwrap();
    fs::write(dir.path().join("0000000009.wal"), [&m2m_tier::WAL_MAGIC[..], b"half"].concat()).unwrap();
    let db = Db::open(dir.path(), DbOptions::default()).unwrap();
    assert_batches(&db.snapshot(), 1);
    for stray in ours {
        assert!(!dir.path().join(stray).exists(), "{stray} left behind");
    }
    for file in theirs {
        assert_eq!(fs::read(dir.path().join(file)).unwrap(), b"half written", "{file} was touched");
    }
}

#[test]
fn a_foreign_directory_is_never_written_to_nor_emptied() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["report.tmp", "0000000001.wal"] {
        fs::write(dir.path().join(file), b"user data").unwrap();
    }
    match Db::create(dir.path(), DIM, DbOptions::default()) {
        // Either one is named (directory order): neither is ours (the `.wal` lacks our magic).
        Err(Error::NotOurs { found, .. }) => {
            assert!(found == dir.path().join("report.tmp") || found == dir.path().join("0000000001.wal"), "{found:?}")
        }
        other => panic!("creating in a foreign directory: {other:?}"),
    }
    assert!(matches!(Db::open(dir.path(), DbOptions::default()), Err(Error::Io { .. })));
    assert!(Db::read_snapshot(dir.path()).is_err());
    let mut names: Vec<String> =
        fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["0000000001.wal", "report.tmp"], "no lock file, nothing removed");
    assert_eq!(fs::read(dir.path().join("report.tmp")).unwrap(), b"user data");
}

#[test]
fn a_create_killed_before_its_manifest_can_be_created_again() {
    let dir = tempfile::tempdir().unwrap();
    // What a create leaves when killed between its first files and the manifest: the marker first.
    fs::write(dir.path().join("LOCK"), b"").unwrap();
    fs::write(dir.path().join(".m2m-creating"), b"").unwrap();
    fs::write(dir.path().join("0000000001.wal"), [&m2m_tier::WAL_MAGIC[..], b"half"].concat()).unwrap();
    fs::write(dir.path().join(".m2m-tmp.MANIFEST.0123456789abcdef"), b"half").unwrap();
    let mut db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
    db.ingest(&crash_batch(0, DIM)).unwrap();
    drop(db);
    assert!(!dir.path().join(".m2m-tmp.MANIFEST.0123456789abcdef").exists());
    assert!(!dir.path().join(".m2m-creating").exists(), "the marker outlived the create");
    assert_batches(&Db::open(dir.path(), DbOptions::default()).unwrap().snapshot(), 1);
}

/// Copies of our own segment and log in a directory without our create marker are a person's (a
/// backup), not leftovers of a killed create: create refuses the directory naming one and removes
/// nothing. Mutation caught: `check_creatable` accepting our data names without the marker (create then
/// deletes the user's copies, finding 2a of the second review).
#[test]
fn copies_of_our_files_without_the_create_marker_are_the_users() {
    let src = tempfile::tempdir().unwrap();
    let mut db = Db::create(src.path(), DIM, DbOptions::default()).unwrap();
    db.ingest(&crash_batch(0, DIM)).unwrap();
    db.flush().unwrap();
    drop(db);
    let bk = tempfile::tempdir().unwrap();
    fs::copy(src.path().join("0000000000.seg"), bk.path().join("0000000000.seg")).unwrap();
    fs::copy(src.path().join("0000000002.wal"), bk.path().join("0000000005.wal")).unwrap();
    let before = fs::read(bk.path().join("0000000000.seg")).unwrap();
    match Db::create(bk.path(), DIM, DbOptions::default()) {
        Err(Error::NotOurs { found, .. }) => assert!(found.starts_with(bk.path()), "{found:?}"),
        other => panic!("create over a backup: {other:?}"),
    }
    assert_eq!(fs::read(bk.path().join("0000000000.seg")).unwrap(), before);
    assert!(bk.path().join("0000000005.wal").exists(), "the user's log copy was removed");
    assert_eq!(fs::read_dir(bk.path()).unwrap().count(), 2, "something was written");
}

/// A `LOCK` that is a symbolic link is not followed: the writer refuses it (naming it) and creates no file
/// where it points. Mutation caught: opening `LOCK` without `O_NOFOLLOW` (the target is then created).
#[cfg(unix)]
#[test]
fn a_lock_that_is_a_link_is_refused_and_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    drop(Db::create(dir.path(), DIM, DbOptions::default()).unwrap());
    fs::remove_file(dir.path().join("LOCK")).unwrap();
    let target = elsewhere.path().join("lock2");
    std::os::unix::fs::symlink(&target, dir.path().join("LOCK")).unwrap();
    match Db::open(dir.path(), DbOptions::default()) {
        Err(Error::Occupied { path, .. }) => assert_eq!(path, dir.path().join("LOCK")),
        other => panic!("a linked LOCK: {other:?}"),
    }
    assert!(!target.exists(), "a file was created outside the database");
}

/// A file with a blob's name but without the blob magic is a person's: storing or removing that blob
/// leaves it as it is and names it. Mutation caught: `store_blob` or `remove_blob` without `claim_blob`
/// (finding 2b: `repair` removed `m2m-soc.blob`, `build` replaced `m2m-index.blob`).
#[test]
fn a_blob_name_without_blob_magic_is_never_replaced_nor_removed() {
    let dir = tempfile::tempdir().unwrap();
    drop(Db::create(dir.path(), DIM, DbOptions::default()).unwrap());
    let path = dir.path().join("m2m-soc.blob");
    fs::write(&path, b"notes\n").unwrap();
    for r in [
        m2m_tier::remove_blob(dir.path(), "m2m-soc.blob"),
        m2m_tier::store_blob(dir.path(), "m2m-soc.blob", b"x"),
        m2m_tier::load_blob(dir.path(), "m2m-soc.blob").map(drop),
    ] {
        match r {
            Err(Error::Occupied { path: p, .. }) => assert_eq!(p, path),
            other => panic!("a user's file of a blob name: {other:?}"),
        }
    }
    assert_eq!(fs::read(&path).unwrap(), b"notes\n");
    // Ours damaged (a flipped magic bit, a truncation) stays ours: removable.
    m2m_tier::store_blob(dir.path(), "m2m-other.blob", b"ours").unwrap();
    let other = dir.path().join("m2m-other.blob");
    let mut b = fs::read(&other).unwrap();
    b[2] ^= 4;
    fs::write(&other, &b).unwrap();
    assert!(matches!(m2m_tier::load_blob(dir.path(), "m2m-other.blob"), Err(Error::Corrupt { .. })));
    m2m_tier::remove_blob(dir.path(), "m2m-other.blob").unwrap();
    fs::write(&other, &b[..5]).unwrap();
    m2m_tier::remove_blob(dir.path(), "m2m-other.blob").unwrap();
    m2m_tier::store_blob(dir.path(), "m2m-other.blob", b"ours").unwrap();
    m2m_tier::store_blob(dir.path(), "m2m-other.blob", b"ours again").unwrap();
    m2m_tier::remove_blob(dir.path(), "m2m-other.blob").unwrap();
}

/// What is ours is decided by content, not by name: a non-empty `LOCK`, a ten-digit `.wal` or `.seg`
/// without our magic are the user's. Create refuses them, naming the file, and leaves them as they were;
/// a writer never replaces a user's file that stands where its next log or segment goes.
/// Mutations caught: `check_creatable` accepting any `LOCK` or any ten-digit name (create then empties
/// the directory), `Wal::create` or the segment rename writing over a file that is not ours.
#[test]
fn files_of_our_names_without_our_magic_are_the_users() {
    for (name, body) in [("LOCK", &b"my lock notes"[..]), ("0000000001.wal", b"notes"), ("0000000001.seg", b"")] {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(name), body).unwrap();
        match Db::create(dir.path(), DIM, DbOptions::default()) {
            Err(Error::NotOurs { found, .. }) => assert_eq!(found, dir.path().join(name)),
            other => panic!("{name}: {other:?}"),
        }
        assert_eq!(fs::read(dir.path().join(name)).unwrap(), body, "{name} was changed");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "{name}: something was written");
    }
    // Inside a database: the user's file where the next log (generation 2) and segment (id 0) go.
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
    db.ingest(&crash_batch(0, DIM)).unwrap();
    drop(db);
    fs::write(dir.path().join("0000000002.wal"), b"user log").unwrap();
    let mut db = Db::open(dir.path(), DbOptions::default()).unwrap();
    assert_eq!(fs::read(dir.path().join("0000000002.wal")).unwrap(), b"user log", "open removed it");
    match db.flush() {
        Err(Error::Occupied { path, .. }) => assert_eq!(path, dir.path().join("0000000002.wal")),
        other => panic!("flush over a user's log name: {other:?}"),
    }
    assert_eq!(fs::read(dir.path().join("0000000002.wal")).unwrap(), b"user log", "flush replaced it");
    drop(db);
    fs::remove_file(dir.path().join("0000000002.wal")).unwrap();
    fs::write(dir.path().join("0000000000.seg"), b"user segment").unwrap();
    let mut db = Db::open(dir.path(), DbOptions::default()).unwrap();
    match db.flush() {
        // Finding 6 of the second review: the message says the file stands where the next segment goes.
        Err(e @ Error::Occupied { .. }) => assert!(e.to_string().contains("the next segment"), "{e}"),
        other => panic!("flush over a user's segment name: {other:?}"),
    }
    assert_eq!(fs::read(dir.path().join("0000000000.seg")).unwrap(), b"user segment");
    drop(db);
    fs::remove_file(dir.path().join("0000000000.seg")).unwrap();
    let mut db = Db::open(dir.path(), DbOptions::default()).unwrap();
    db.flush().unwrap();
    assert_batches(&db.snapshot(), 1);
}

/// A manifest with a generation or segment id that ten digits cannot carry (forged with a valid
/// checksum) is `Corrupt` naming the manifest on every path; the largest allowed one opens, and the
/// flush that would pass it is a typed error, not an overflow. A foreign `MANIFEST` is not ours.
/// Mutations caught: removing the bound in `Manifest::decode` (open then accepts u64::MAX and the flush
/// panics in debug on `generation + 1`), `next_number` without its check.
#[test]
fn forged_huge_generations_are_corrupt_and_never_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
    db.ingest(&crash_batch(0, DIM)).unwrap();
    drop(db);
    let good = m2m_tier::Manifest::load(dir.path()).unwrap();
    for (generation, next_segment_id) in [(u64::MAX, 0), (m2m_tier::MAX_NUMBER + 1, 0), (0, 0), (5, u64::MAX)] {
        let mut m = good.clone();
        m.generation = generation;
        m.next_segment_id = next_segment_id;
        m.store(dir.path()).unwrap();
        for r in [Db::open(dir.path(), DbOptions::default()).map(drop), Db::check(dir.path()).map(drop)] {
            match r {
                Err(Error::Corrupt { path, .. }) => assert_eq!(path, dir.path().join("MANIFEST")),
                other => panic!("generation {generation}, next id {next_segment_id}: {other:?}"),
            }
        }
    }
    let mut m = good.clone();
    m.generation = m2m_tier::MAX_NUMBER;
    m.wal = Some(good.wal.clone().unwrap());
    m.store(dir.path()).unwrap();
    let mut db = Db::open(dir.path(), DbOptions::default()).unwrap();
    match db.flush() {
        Err(Error::Corrupt { path, .. }) => assert_eq!(path, dir.path().join("MANIFEST")),
        other => panic!("a flush past the last generation: {other:?}"),
    }
    drop(db);
    assert_batches(&Db::read_snapshot(dir.path()).unwrap(), 1);
    fs::write(dir.path().join("MANIFEST"), b"# my project manifest\n").unwrap();
    match Db::open(dir.path(), DbOptions::default()) {
        Err(Error::NotOurs { found, .. }) => assert_eq!(found, dir.path().join("MANIFEST")),
        other => panic!("a foreign MANIFEST: {other:?}"),
    }
}

/// A manifest that names a log that is not there, or whose dimension the log does not share (a forged
/// manifest, or a deleted log): the error names the manifest, and the log in its reason, on every path.
/// Mutations caught: `named_but_missing` left out (an Io error naming only the log), `dim_mismatch`
/// naming only the log.
#[test]
fn a_manifest_that_disagrees_with_its_log_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
    db.ingest(&crash_batch(0, DIM)).unwrap();
    drop(db);
    let good = m2m_tier::Manifest::load(dir.path()).unwrap();
    let manifest = dir.path().join("MANIFEST");
    for (wal, dim) in [("0004000001.wal", DIM), (good.wal.as_deref().unwrap(), DIM + 1)] {
        let mut m = good.clone();
        m.wal = Some(wal.into());
        m.dim = dim;
        m.store(dir.path()).unwrap();
        let results = [
            Db::open(dir.path(), DbOptions::default()).map(drop),
            Db::check(dir.path()).map(drop),
            Db::read_snapshot(dir.path()).map(drop),
        ];
        for r in results {
            match r {
                Err(Error::Corrupt { path, reason, .. }) => {
                    assert_eq!(path, manifest);
                    assert!(reason.contains(wal), "{reason}");
                }
                other => panic!("{wal}, dim {dim}: {other:?}"),
            }
        }
    }
    good.store(dir.path()).unwrap();
    assert_batches(&Db::open(dir.path(), DbOptions::default()).unwrap().snapshot(), 1);
}

/// A segment forged (checksums recomputed) so that an id repeats: the error names that segment, not the
/// manifest (found by the 30-minute torture). Mutation caught: naming `MANIFEST` as before.
#[test]
fn a_repeated_id_names_the_segment_that_repeats_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
    db.ingest(&crash_batch(1, DIM)).unwrap();
    db.flush().unwrap();
    let seg = dir.path().join(&db.manifest().segments[0].file);
    drop(db);
    let mut bytes = fs::read(&seg).unwrap();
    let ids_at = u64::from_le_bytes(bytes[40..48].try_into().unwrap()) as usize;
    let first: [u8; 8] = bytes[ids_at..ids_at + 8].try_into().unwrap();
    bytes[ids_at + 8..ids_at + 16].copy_from_slice(&first);
    m2m_tier::testing::decode::reseal_segment(&mut bytes);
    fs::write(&seg, &bytes).unwrap();
    for r in [Db::open(dir.path(), DbOptions::default()).map(drop), Db::check(dir.path()).map(drop)] {
        match r {
            Err(Error::Corrupt { path, reason, .. }) => {
                assert_eq!(path, seg);
                assert!(reason.contains("stored twice"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A flipped bit in a segment's vectors: the database opens (open reads no vector) and `Db::check`
/// reports the segment and the column. Mutation caught: `check` without the segments' `verify` (it
/// returns Ok).
#[test]
fn check_finds_a_damaged_vector_that_open_does_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
    db.ingest(&crash_batch(1, DIM)).unwrap();
    db.flush().unwrap();
    let seg = dir.path().join(&db.manifest().segments[0].file);
    drop(db);
    Db::check(dir.path()).unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let mu_at = u64::from_le_bytes(bytes[32..40].try_into().unwrap()) as usize;
    bytes[mu_at + 4 * DIM + 2] ^= 0x10;
    fs::write(&seg, &bytes).unwrap();
    drop(Db::open(dir.path(), DbOptions::default()).expect("open does not read the vectors"));
    match Db::check(dir.path()) {
        Err(Error::Corrupt { path, offset, reason }) => {
            assert_eq!((path, offset), (seg, mu_at as u64));
            assert!(reason.contains("mu"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

/// A writer's open that cuts a damaged tail says what it cut: the same bytes and rows `Db::check`
/// reported before. Mutation caught: `Wal::open` not recording the cut (`cut_tail` None).
#[test]
fn the_writer_reports_the_tail_it_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
    db.ingest(&crash_batch(0, DIM)).unwrap();
    db.ingest(&crash_batch(1, DIM)).unwrap();
    let wal = db.manifest().wal.clone().unwrap();
    drop(db);
    let path = dir.path().join(&wal);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let check = Db::check(dir.path()).unwrap();
    assert!(check.log.tail_bytes() > 0);
    let db = Db::open(dir.path(), DbOptions::default()).unwrap();
    let cut = db.cut_tail().expect("the cut is reported").clone();
    assert_eq!((cut.path.clone(), cut.at, cut.bytes), (path.clone(), check.log.end, check.log.tail_bytes()));
    assert_eq!(cut.rows, Some(crash_batch(1, DIM).len() as u64));
    assert!(cut.to_string().contains(&wal), "{cut}");
    assert_batches(&db.snapshot(), 1);
    drop(db);
    assert!(Db::open(dir.path(), DbOptions::default()).unwrap().cut_tail().is_none(), "a clean log cuts nothing");
}

#[test]
fn bad_batches_and_existing_databases_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
    db.ingest(&crash_batch(0, DIM)).unwrap();
    assert!(matches!(db.ingest(&crash_batch(0, DIM)), Err(Error::InvalidBatch { .. })), "duplicate ids accepted");
    assert!(matches!(db.ingest(&crash_batch(1, DIM + 1)), Err(Error::InvalidBatch { .. })));
    assert_eq!(db.len(), crash_batch(0, DIM).len());
    drop(db);
    match Db::create(dir.path(), DIM, DbOptions::default()) {
        Err(Error::AlreadyExists { path }) => assert_eq!(path, dir.path()),
        other => panic!("creating over a database: {other:?}"),
    }
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(Db::open(empty.path(), DbOptions::default()), Err(Error::Io { .. })));
}

#[test]
fn deletes_survive_reopen_flush_and_are_dropped_by_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
    for n in 0..3 {
        db.ingest(&crash_batch(n, DIM)).unwrap();
    }
    db.flush().unwrap(); // batches 0..3 now in a segment
    db.ingest(&crash_batch(3, DIM)).unwrap(); // batch 3 in memory
    let in_segment = crash_batch(1, DIM).ids()[0];
    let in_memory = crash_batch(3, DIM).ids()[0];
    assert_eq!(db.delete(&[in_segment, in_memory, in_segment, 999_999]).unwrap(), 2);
    assert_eq!(db.delete(&[in_segment]).unwrap(), 0, "deleted twice");
    let live = |s: &Snapshot| -> Vec<u64> {
        let mut v: Vec<u64> = s.parts().flat_map(|p| p.ids.to_vec()).filter(|&id| s.is_live(id)).collect();
        v.sort_unstable();
        v
    };
    let expect: Vec<u64> = {
        let mut v: Vec<u64> = (0..4)
            .flat_map(|n| crash_batch(n, DIM).ids().to_vec())
            .filter(|&id| id != in_segment && id != in_memory)
            .collect();
        v.sort_unstable();
        v
    };
    let before = db.snapshot();
    assert_eq!(live(&before), expect);
    assert_eq!(before.len(), expect.len());
    assert_eq!(db.len(), expect.len());
    // A deleted id still in a segment cannot come back before compaction.
    assert!(matches!(db.ingest(&crash_batch(1, DIM)), Err(Error::InvalidBatch { .. })));
    drop(db);

    // Reopen: the delete replays from the log.
    let mut db = Db::open(dir.path(), DbOptions::default()).unwrap();
    assert_eq!(live(&db.snapshot()), expect);
    // Flush retires the log: the tombstone moves into the manifest.
    db.flush().unwrap();
    assert_eq!(db.manifest().deleted, vec![in_segment]);
    drop(db);
    let mut db = Db::open(dir.path(), DbOptions::default()).unwrap();
    assert_eq!(live(&db.snapshot()), expect);
    // Compaction drops the row for good.
    db.compact().unwrap();
    assert!(db.manifest().deleted.is_empty());
    let after = db.snapshot();
    assert!(after.deleted.is_empty());
    let mut all: Vec<u64> = after.parts().flat_map(|p| p.ids.to_vec()).collect();
    all.sort_unstable();
    assert_eq!(all, expect);
    // The old snapshot still sees what it saw.
    assert_eq!(live(&before), expect);
    // And the id may be used again.
    let again = m2m_splat::SplatSet::from_vectors(&[1.0; DIM], DIM).unwrap();
    let mut reused = m2m_splat::SplatSet::new(DIM).unwrap();
    reused.append(m2m_splat::Batch::new(again.mu_row(0), DIM).ids(&[in_segment])).unwrap();
    db.ingest(&reused).unwrap();
}

#[test]
fn readers_on_other_threads_always_see_whole_batches() {
    use std::sync::mpsc;
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
    let (tx, rx) = mpsc::sync_channel::<Snapshot>(4);
    // Only the readers hold the receiver: if they die, the writer's send fails instead of blocking.
    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    let deleted: std::collections::HashSet<u64> =
        (0..120u64).filter(|n| n % 25 == 24).map(|n| (n - 3) * 1000).collect();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let rx = std::sync::Arc::clone(&rx);
            let deleted = deleted.clone();
            std::thread::spawn(move || {
                let mut checked = 0;
                loop {
                    let snap = match rx.lock().unwrap().recv() {
                        Ok(s) => s,
                        Err(_) => return checked,
                    };
                    // Every batch in the view is whole and byte-exact (deleted ids aside).
                    let got = rows(&snap);
                    let mut by_batch: HashMap<u64, usize> = HashMap::new();
                    for (&id, (mu, _)) in &got {
                        let n = id / 1000;
                        let want = crash_batch(n, DIM);
                        let i = (id % 1000) as usize;
                        assert_eq!(mu.as_slice(), want.mu_row(i));
                        *by_batch.entry(n).or_default() += 1;
                    }
                    for (n, count) in by_batch {
                        let gone = crash_batch(n, DIM).ids().iter().filter(|id| deleted.contains(id)).count();
                        // Whole: every row, or every row but those deleted (in views taken after the delete).
                        let len = crash_batch(n, DIM).len();
                        assert!(count == len || count + gone == len, "batch {n} partial: {count} of {len}");
                    }
                    checked += 1;
                }
            })
        })
        .collect();
    drop(rx);
    for n in 0..120 {
        db.ingest(&crash_batch(n, DIM)).unwrap();
        if n % 7 == 6 {
            db.flush().unwrap();
        }
        if n % 25 == 24 {
            db.delete(&[(n - 3) * 1000]).unwrap();
            db.compact().unwrap();
        }
        tx.send(db.snapshot()).expect("the readers died; see their panic above");
    }
    drop(tx);
    let checked: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert_eq!(checked, 120);
}

#[test]
fn snapshots_share_the_in_memory_rows_instead_of_copying_them() {
    use m2m_splat::{Batch, SplatSet};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::create(dir.path(), DIM, DbOptions::default()).unwrap();
    let big = |first: u64| {
        let raw: Vec<f32> = (0..300 * DIM).map(|i| 1.0 + (i % 13) as f32).collect();
        let ids: Vec<u64> = (first..first + 300).collect();
        let mut s = SplatSet::new(DIM).unwrap();
        s.append(Batch::new(&raw, DIM).ids(&ids)).unwrap();
        s
    };
    db.ingest(&big(0)).unwrap();
    let before = db.snapshot();
    db.ingest(&big(300)).unwrap();
    db.ingest(&big(600)).unwrap();
    let after = db.snapshot();
    assert_eq!(before.memtable.rows(), 300);
    assert_eq!(after.memtable.rows(), 900);
    assert!(Arc::ptr_eq(&before.memtable.chunks()[0], &after.memtable.chunks()[0]), "ingest copied old rows");
    // A delete rebuilds only the chunk that held the id; the old snapshot keeps its rows.
    db.delete(&[650]).unwrap();
    let deleted = db.snapshot();
    assert!(Arc::ptr_eq(&after.memtable.chunks()[1], &deleted.memtable.chunks()[1]));
    assert!(!Arc::ptr_eq(&after.memtable.chunks()[2], &deleted.memtable.chunks()[2]));
    assert_eq!(deleted.len(), 899);
    assert_eq!(after.len(), 900);
    db.flush().unwrap();
    drop(db);
    assert_eq!(Db::open(dir.path(), DbOptions::default()).unwrap().len(), 899);
}
