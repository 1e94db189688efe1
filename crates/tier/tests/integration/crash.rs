//! SIGKILL in the middle of ingest, many times: every acknowledged batch survives, and no partial batch
//! ever appears.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use m2m_tier::Wal;
use m2m_tier::testing::crash_batch;

const DIM: usize = 16;

#[test]
fn kill_9_during_ingest_never_loses_an_acknowledged_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.wal");
    let exe = env!("CARGO_BIN_EXE_m2m-tier-crash-writer");
    let mut acknowledged = 0u64;
    // A fixed, varied schedule of how many acknowledgements to wait for before each kill.
    for (round, wait_for) in [1u64, 7, 3, 12, 2, 25, 5, 1, 9, 17, 4, 30].into_iter().enumerate() {
        let mut child = Command::new(exe)
            .arg(&path)
            .arg(DIM.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the writer");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = 0;
        while seen < wait_for {
            let line = lines.next().expect("writer ended early").expect("read ack");
            let n: u64 = line.strip_prefix("ack ").and_then(|n| n.parse().ok()).expect("an ack line");
            acknowledged = acknowledged.max(n + 1);
            seen += 1;
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        // The writer ran on while we read: every ack it printed before dying is still in the pipe.
        for line in lines.map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("ack ").and_then(|n| n.parse::<u64>().ok()) {
                acknowledged = acknowledged.max(n + 1);
            }
        }

        let records = Wal::read(&path).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let batches: Vec<m2m_tier::WalBatch> = records
            .into_iter()
            .map(|r| match r {
                m2m_tier::WalRecord::Batch(b) => b,
                other => panic!("round {round}: unexpected {other:?}"),
            })
            .collect();
        let n = batches.len() as u64;
        // Every acknowledged batch is there; at most the one in flight beyond them.
        assert!(n >= acknowledged, "round {round}: {n} batches recovered, {acknowledged} acknowledged");
        assert!(n <= acknowledged + 1, "round {round}: {n} batches recovered, {acknowledged} acknowledged");
        for (i, b) in batches.iter().enumerate() {
            let want = crash_batch(i as u64, DIM);
            assert_eq!(
                (b.seq, b.columns.ids.as_slice(), b.columns.mu.as_slice()),
                (i as u64, want.ids(), want.mu()),
                "round {round}"
            );
        }
        // A batch written but not acknowledged counts as acknowledged from now on (it is in the log).
        acknowledged = n;
    }
    assert!(acknowledged >= 100, "only {acknowledged} batches over all rounds");
}

#[test]
fn kill_9_during_ingest_flush_and_compaction_loses_nothing_acknowledged() {
    use m2m_tier::{Db, DbOptions};
    let dir = tempfile::tempdir().unwrap();
    let db_dir = dir.path().join("db");
    let exe = env!("CARGO_BIN_EXE_m2m-tier-crash-writer");
    let mut acknowledged = 0u64;
    for (round, wait_for) in [3u64, 11, 6, 19, 2, 8, 13, 5].into_iter().enumerate() {
        let mut child = Command::new(exe)
            .args(["db".as_ref(), db_dir.as_os_str(), DIM.to_string().as_ref()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the writer");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        for _ in 0..wait_for {
            let line = lines.next().expect("writer ended early").expect("read ack");
            let n: u64 = line.strip_prefix("ack ").and_then(|n| n.parse().ok()).expect("an ack line");
            acknowledged = acknowledged.max(n + 1);
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        // The writer ran on while we read: every ack it printed before dying is still in the pipe.
        for line in lines.map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("ack ").and_then(|n| n.parse::<u64>().ok()) {
                acknowledged = acknowledged.max(n + 1);
            }
        }

        let db = Db::open(&db_dir, DbOptions::default()).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let snap = db.snapshot();
        let mut present: std::collections::BTreeMap<u64, Vec<(u64, Vec<f32>)>> = Default::default();
        for p in snap.parts() {
            for (i, &id) in p.ids.iter().enumerate() {
                present.entry(id / 1000).or_default().push((id, p.mu[i * p.dim..(i + 1) * p.dim].to_vec()));
            }
        }
        let batches = present.len() as u64;
        assert!(
            batches >= acknowledged && batches <= acknowledged + 1,
            "round {round}: {batches} batches, {acknowledged} acknowledged"
        );
        for (n, mut rows) in present {
            assert!(n < batches, "round {round}: batch {n} beyond a gap");
            let want = crash_batch(n, DIM);
            rows.sort_by_key(|r| r.0);
            assert_eq!(rows.len(), want.len(), "round {round}: batch {n} is partial");
            for (i, (id, mu)) in rows.iter().enumerate() {
                assert_eq!((*id, mu.as_slice()), (want.ids()[i], want.mu_row(i)), "round {round}");
            }
        }
        acknowledged = batches;
    }
    assert!(acknowledged >= 60, "only {acknowledged} batches over all rounds");
}

#[test]
fn a_write_failure_leaves_the_log_at_its_last_good_record() {
    // The kernel itself fails the write: `ulimit -f` caps the file size (SIGXFSZ ignored, so the write
    // returns EFBIG), and the writer dies on the error as a process would.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.wal");
    let exe = env!("CARGO_BIN_EXE_m2m-tier-crash-writer");
    let script = format!("trap '' XFSZ; ulimit -f 64; exec '{exe}' '{}' {DIM}", path.display());
    let out = Command::new("sh").arg("-c").arg(&script).stdin(Stdio::null()).output().expect("run the writer");
    assert!(!out.status.success(), "the writer never hit the size limit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let acknowledged =
        stdout.lines().filter_map(|l| l.strip_prefix("ack ")?.parse::<u64>().ok()).map(|n| n + 1).max().unwrap_or(0);
    assert!(acknowledged > 5, "only {acknowledged} batches before the limit");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("File too large"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Reopen: exactly the acknowledged batches, and the file ends on a good record.
    let len_before = std::fs::metadata(&path).unwrap().len();
    let (wal, records) = Wal::open(&path, m2m_tier::Durability::Fsync).unwrap();
    assert_eq!(records.len() as u64, acknowledged);
    for (i, r) in records.iter().enumerate() {
        let m2m_tier::WalRecord::Batch(b) = r else { panic!("record {i} is not a batch") };
        assert_eq!(b.columns.ids.as_slice(), crash_batch(i as u64, DIM).ids());
    }
    assert_eq!(wal.len_bytes(), len_before, "the failed append left bytes behind");
}
