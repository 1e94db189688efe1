//! The `m2m` binary, run as a user would: each command on small real data (the built-in digits written
//! to files), each error case with its one-line message and exit code, and Ctrl-C during ingest followed
//! by a resume.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use m2m::splat::write_vectors;

fn m2m(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_m2m")).args(args).output().expect("run m2m")
}

fn ok(args: &[&str]) -> serde_json::Value {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let out = m2m(&full);
    assert!(out.status.success(), "m2m {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("m2m {args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Runs a failing command: its exit code and its stderr, which must be one line.
fn fails(args: &[&str]) -> (i32, String) {
    let out = m2m(args);
    assert!(!out.status.success(), "m2m {args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    (out.status.code().unwrap_or(-1), err)
}

fn digits(dir: &Path, rows: usize, dim: usize) -> (String, String) {
    let d = m2m::digits_on_sphere(&m2m::DigitsConfig { rows, queries: 5, dim, ..Default::default() }).unwrap();
    let (a, b) = (dir.join("a.npy"), dir.join("b.fvecs"));
    let half = rows / 2 * dim;
    write_vectors(&a, &d.base[..half], dim).unwrap();
    write_vectors(&b, &d.base[half..], dim).unwrap();
    write_vectors(dir.join("q.npy"), &d.queries, dim).unwrap();
    (a.display().to_string(), b.display().to_string())
}

#[test]
fn a_whole_session_ingest_build_query_stream_info_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = digits(dir.path(), 3_000, 32);
    let db = dir.path().join("db").display().to_string();
    let q = dir.path().join("q.npy").display().to_string();

    let r = ok(&["ingest", &db, &a, &b, "--chunk", "700"]);
    assert_eq!(r["added"], 3_000);
    let r = ok(&["ingest", &db, &a, &b]);
    assert_eq!((r["added"].as_u64(), r["already_in"].as_u64()), (Some(0), Some(3_000)), "a rerun adds nothing");
    assert!(m2m(&["query", &db, "--file", &q]).stderr.starts_with(b"error: "), "query before build");

    // The index honours the requested cluster count (empty clusters are dropped, so about 40).
    let r = ok(&["build", &db, "--n-fine", "40"]);
    let fine = r["fine_clusters"].as_u64().unwrap();
    assert!((30..=40).contains(&fine), "{fine} fine clusters");
    let r = ok(&["query", &db, "--file", &q, "--k", "5", "--lod", "exact"]);
    assert_eq!(r["results"].as_array().unwrap().len(), 5);
    // A stored row is its own nearest neighbour (ids are row numbers across the two files).
    let r = ok(&["query", &db, "--row", "1700", "--k", "1"]);
    assert_eq!(r["results"][0][0]["id"], 1700);
    let score = r["results"][0][0]["score"].as_f64().unwrap();
    assert!(score > 0.999, "its cosine with itself: {score}");

    let out = dir.path().join("batches.npy").display().to_string();
    let r = ok(&["stream", &db, "--batch-size", "256", "--importance", "--generate", "--out", &out]);
    assert_eq!((r["rows"].as_u64(), r["generated"].as_u64()), (Some(6_000), Some(3_000)));
    // The honest part of the report: the weights' spread and the generated rows' fidelity.
    let ess = r["weights"]["ess_share"].as_f64().unwrap();
    assert!(ess > 0.0 && ess <= 1.0, "{r}");
    assert_eq!(r["fidelity"]["rows"].as_u64(), Some(256), "{r}");
    assert_eq!(r["fidelity"]["copies"].as_u64(), Some(0), "{r}");
    let written = m2m::splat::read_vectors::<f32>(&out).unwrap();
    assert_eq!(written.data.len(), 6_000 * 32);

    let r = ok(&["info", &db]);
    assert_eq!((r["splats"].as_u64(), r["dim"].as_u64()), (Some(3_000), Some(32)));
    assert_eq!(r["fine_clusters"].as_u64(), Some(fine));
    let r = ok(&["verify", &db]);
    assert_eq!((r["ok"].as_bool(), r["index"].as_str()), (Some(true), Some("ok")));

    // People get tables.
    let human = m2m(&["info", &db]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("splats     3000 x 32"));
    let r = ok(&["bench", "--base", &a, "--queries", &q, "--k", "5"]);
    assert_eq!(r["lods"].as_array().unwrap().len(), 4);
}

#[test]
fn every_error_is_one_line_with_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = digits(dir.path(), 400, 16);
    let db = dir.path().join("db").display().to_string();
    assert!(m2m(&["ingest", &db, &a]).status.success());

    let (code, err) = fails(&["ingest", &db, "nowhere.npy"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: nowhere.npy") && err.lines().count() == 1, "{err}");

    let other = dir.path().join("wide.npy");
    write_vectors(&other, &vec![0.5f32; 4 * 24], 24).unwrap();
    let (code, err) = fails(&["ingest", &db, &other.display().to_string()]);
    assert_eq!(code, 1);
    assert!(err.contains("dimension 24 does not match the database's 16"), "{err}");

    let (code, err) = fails(&["query", &db, "--row", "3", "--lod", "7"]);
    assert_eq!(code, 2, "a bad flag value is a usage error: {err}");
    let (code, err) = fails(&["info", &dir.path().join("none").display().to_string()]);
    assert_eq!(code, 1);
    assert!(err.contains("not an M2M database"), "{err}");

    // Locked: another writer holds the directory. Writers are refused; readers open beside it.
    {
        let _holder = m2m::M2m::open(&db).unwrap();
        let (code, err) = fails(&["build", &db]);
        assert_eq!(code, 1);
        assert!(err.contains("locked"), "{err}");
        for args in [["info", &db], ["verify", &db]] {
            let out = m2m(&args);
            assert!(out.status.success(), "{args:?} beside a writer: {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    // Corrupt: a byte flipped in the middle of the segment's data.
    let seg =
        std::fs::read_dir(&db).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|x| x == "seg"));
    let seg = seg.expect("ingest flushed a segment");
    let mut bytes = std::fs::read(&seg).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let (code, err) = fails(&["verify", &db]);
    assert_eq!(code, 1);
    assert!(err.contains(".seg") && err.contains("corrupt"), "{err}");
}

#[test]
fn ctrl_c_during_ingest_leaves_a_usable_database_and_a_rerun_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 16;
    let rows = 400_000;
    let data: Vec<f32> = (0..rows * dim).map(|i| 1.0 + ((i * 7919) % 101) as f32).collect();
    let file = dir.path().join("big.npy");
    write_vectors(&file, &data, dim).unwrap();
    let db = dir.path().join("db").display().to_string();
    let f = file.display().to_string();

    let child = Command::new(env!("CARGO_BIN_EXE_m2m"))
        // Chunks of 20 rows, each fsynced: thousands of acknowledgements, so the signal lands mid-way.
        .args(["ingest", &db, &f, "--chunk", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The ingest log appears once the Ctrl-C handler is installed and before the first row is written:
    // wait for it (a loaded machine may take a while to get there), then interrupt mid-way.
    let marker = Path::new(&db).join("m2m-ingest.blob");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !marker.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(150));
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let out = child.wait_with_output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    assert_eq!(code, 130, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("run the same command to resume"));

    // Usable, with every acknowledged chunk; then the rerun completes exactly.
    let before = ok(&["info", &db])["splats"].as_u64().unwrap();
    assert!(before > 0 && before < rows as u64 && before.is_multiple_of(20), "{before}");
    let r = ok(&["ingest", &db, &f, "--chunk", "20000"]);
    assert_eq!(r["already_in"].as_u64(), Some(before));
    assert_eq!(r["splats"].as_u64(), Some(rows as u64), "no row twice, none missing");
}

fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    n.sort();
    n
}

#[test]
fn files_that_are_not_ours_are_never_touched() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = digits(dir.path(), 400, 16);
    // A directory that is not a database: refused, nothing written into it, nothing removed.
    let s = dir.path().join("s");
    std::fs::create_dir(&s).unwrap();
    std::fs::write(s.join("report.tmp"), b"mine").unwrap();
    let (code, err) = fails(&["ingest", &s.display().to_string(), &a]);
    assert_eq!(code, 1);
    assert!(err.contains("not empty and not an M2M database") && err.contains("report.tmp"), "{err}");
    assert_eq!(names(&s), ["report.tmp"]);
    // Inside a database: files that merely look like ours survive every command.
    let db = dir.path().join("db");
    let d = db.display().to_string();
    assert!(m2m(&["ingest", &d, &a]).status.success());
    let foreign = ["report.tmp", "notes.wal", "x.seg", "MANIFEST.tmp", ".0000000001.seg.tmp", "m2m-notes.blob"];
    for f in foreign {
        std::fs::write(db.join(f), f.as_bytes()).unwrap();
    }
    for args in [
        &["info", &d][..],
        &["verify", &d],
        &["build", &d],
        &["query", &d, "--row", "1"],
        &["repair", &d],
        &["ingest", &d, &a],
    ] {
        assert!(m2m(args).status.success(), "{args:?}");
    }
    for f in foreign {
        assert_eq!(std::fs::read(db.join(f)).unwrap(), f.as_bytes(), "{f} touched");
    }
}

#[test]
fn a_failed_first_ingest_leaves_no_database_bound_to_its_dimension() {
    let dir = tempfile::tempdir().unwrap();
    let bad = |name: &str, row: usize| {
        let path = dir.path().join(name);
        let mut rows = vec![0.5f32; 30 * 8];
        rows[row * 8 + 3] = f32::NAN;
        write_vectors(&path, &rows, 8).unwrap();
        path.display().to_string()
    };
    // A bad row in the second chunk: reported by its row in the file, not in the chunk.
    let d1 = dir.path().join("db1").display().to_string();
    let (code, err) = fails(&["ingest", &d1, &bad("late.npy", 17), "--chunk", "10"]);
    assert_eq!(code, 1);
    assert!(err.contains("late.npy") && err.contains("row 17, column 3"), "{err}");
    // What stays in is said: the first chunk was acknowledged, and the command resumes after it.
    assert!(err.contains("rows 0..10 are in (ids 0..10)") && err.contains("resume"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // A bad row in the first chunk: the database it created is gone, the directory as before.
    let db = dir.path().join("db2");
    std::fs::create_dir(&db).unwrap();
    let d = db.display().to_string();
    let (code, err) = fails(&["ingest", &d, &bad("early.npy", 7), "--chunk", "10"]);
    assert!(code == 1 && err.contains("row 7, column 3"), "{err}");
    assert!(names(&db).is_empty(), "{:?}", names(&db));
    let (a, _) = digits(dir.path(), 100, 16);
    let r = ok(&["ingest", &d, &a]);
    assert_eq!(r["splats"], 50, "the directory takes a file of another dimension");
}

#[test]
fn verify_only_reports_and_repair_says_what_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = digits(dir.path(), 400, 16);
    let db = dir.path().join("db");
    let d = db.display().to_string();
    assert!(m2m(&["ingest", &d, &a]).status.success());
    {
        // 100 acknowledged rows still in the log (not flushed).
        let mut e = m2m::M2m::open(&db).unwrap();
        e.add_splats_with(&vec![0.25; 100 * 16], &(1000..1100).collect::<Vec<u64>>(), None, None).unwrap();
    }
    let wal =
        std::fs::read_dir(&db).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|x| x == "wal"));
    let wal = wal.unwrap();
    let mut bytes = std::fs::read(&wal).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x04;
    std::fs::write(&wal, &bytes).unwrap();
    let (code, err) = fails(&["verify", &d]);
    assert_eq!(code, 1);
    assert!(err.contains(".wal") && err.contains("100 rows") && err.contains("m2m repair"), "{err}");
    assert_eq!(std::fs::read(&wal).unwrap(), bytes, "verify changed the log");
    let out = m2m(&["repair", &d]);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("dropped") && said.contains("100 rows"), "{said}");
    assert_eq!(ok(&["verify", &d])["splats"], 200);

    // A zero tail: reported by verify, harmless to every reader, cut by repair.
    let wal =
        std::fs::read_dir(&db).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|x| x == "wal"));
    let wal = wal.unwrap();
    let mut bytes = std::fs::read(&wal).unwrap();
    bytes.extend_from_slice(&[0; 8]);
    std::fs::write(&wal, &bytes).unwrap();
    assert_eq!(fails(&["verify", &d]).0, 1);
    assert_eq!(ok(&["info", &d])["splats"], 200);
    assert!(m2m(&["repair", &d]).status.success());
    assert_eq!(ok(&["verify", &d])["ok"], true);

    // A damaged index: reported, dropped by repair, and never in the way of build. Its vector file is
    // not read whole when the index opens; verify reads every byte of it.
    assert!(m2m(&["build", &d]).status.success());
    assert_eq!(ok(&["verify", &d])["index"], "ok");
    let file = |ext: &str| {
        std::fs::read_dir(&db).unwrap().map(|e| e.unwrap().path()).find(|p| p.extension().is_some_and(|x| x == ext))
    };
    let vec = file("vec").expect("the index's vector file");
    let mut bytes = std::fs::read(&vec).unwrap();
    bytes[64 + 4 * 16 * 37 + 5] ^= 0x01;
    std::fs::write(&vec, &bytes).unwrap();
    let (_, err) = fails(&["verify", &d]);
    assert!(err.contains(".vec") && err.contains("checksum"), "{err}");
    let out = m2m(&["repair", &d]);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(".vec: removed"), "{said}");
    assert!(file("vec").is_none() && file("idx").is_none(), "repair left the damaged index");
    assert_eq!(ok(&["verify", &d])["index"], "none");
    assert!(m2m(&["build", &d]).status.success());
    let idx = file("idx").unwrap();
    let mut bytes = std::fs::read(&idx).unwrap();
    bytes.truncate(bytes.len() - 1);
    std::fs::write(&idx, &bytes).unwrap();
    let (_, err) = fails(&["verify", &d]);
    assert!(err.contains(".idx"), "{err}");
    assert!(m2m(&["build", &d]).status.success(), "build over a damaged index");
    assert_eq!(ok(&["verify", &d])["index"], "ok");
}

#[test]
fn huge_k_empty_queries_and_changed_files_get_answers_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = digits(dir.path(), 200, 16);
    let d = dir.path().join("db").display().to_string();
    assert!(m2m(&["ingest", &d, &a]).status.success());
    assert!(m2m(&["build", &d]).status.success());
    for k in ["18446744073709551615", "1000000000"] {
        let r = ok(&["query", &d, "--row", "42", "--k", k, "--lod", "exact"]);
        assert_eq!(r["results"][0].as_array().unwrap().len(), 100, "k {k}");
        assert_eq!(r["k"], 100);
    }
    let empty = dir.path().join("empty.npy");
    write_vectors::<f32>(&empty, &[], 16).unwrap();
    let (code, err) = fails(&["query", &d, "--file", &empty.display().to_string()]);
    assert!(code == 1 && err.contains("empty.npy") && err.contains("no query vector"), "{err}");
    // An empty file is not ingested (it once logged a zero-row entry that made the next ingest's log
    // corrupt); the ingest after it still reads the log.
    let (code, err) = fails(&["ingest", &d, &empty.display().to_string()]);
    assert!(code == 1 && err.contains("empty.npy") && err.contains("no rows"), "{err}");
    assert!(m2m(&["ingest", &d, &a]).status.success(), "the log stays readable after the refusal");
    let nan = dir.path().join("nan.npy");
    let mut q = vec![0.5f32; 3 * 16];
    q[2 * 16 + 1] = f32::NAN;
    write_vectors(&nan, &q, 16).unwrap();
    let (_, err) = fails(&["query", &d, "--file", &nan.display().to_string()]);
    assert!(err.contains("nan.npy") && err.contains("row 2"), "{err}");
    // Exact recall with k beyond the rows is every row found: 1.
    let r = ok(&["bench", "--base", &a, "--queries", &a, "--k", "1000"]);
    let exact = r["lods"].as_array().unwrap().iter().find(|l| l["lod"] == "exact").unwrap();
    assert_eq!(exact["recall"], 1.0);
    // The same file regenerated in place (same shape, other values) is refused on resume.
    let b = m2m::splat::read_vectors::<f32>(&a).unwrap();
    let changed: Vec<f32> = b.data.iter().map(|v| v + 0.125).collect();
    write_vectors(&a, &changed, 16).unwrap();
    let (code, err) = fails(&["ingest", &d, &a]);
    assert!(code == 1 && err.contains("content changed") && err.contains("m2m-ingest.blob"), "{err}");
}

#[test]
fn errors_on_an_empty_database_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    drop(m2m::M2m::create(m2m::M2mConfig::default().dim(8).data_dir(&db)).unwrap());
    let d = db.display().to_string();
    for args in [["stream", &d], ["build", &d]] {
        let (code, err) = fails(&args);
        assert!(code == 1 && err.contains(&d) && err.contains("no splat"), "{args:?}: {err}");
    }
}

#[test]
fn one_vocabulary_lod_names_search_parameters_metric_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = digits(dir.path(), 3_000, 32);
    let db = dir.path().join("db").display().to_string();
    let q = dir.path().join("q.npy").display().to_string();

    // --metric in any case; --no-sync is this run's choice and is not stored.
    ok(&["ingest", &db, &a, "--metric", "COSINE", "--no-sync"]);
    let (code, err) = fails(&["ingest", &db, &a, "--metric", "l2"]);
    assert_eq!(code, 1);
    assert!(err.contains("--metric l2") && err.contains("cosine"), "{err}");
    {
        let engine = m2m::M2m::open(&db).unwrap();
        assert!(engine.config().durable, "--no-sync must not be stored");
    }
    let built = ok(&["build", &db, "--n-fine", "40"]);

    // Levels by number and by name give the same answers.
    for (number, name) in [("0", "centroids"), ("1", "codes"), ("2", "rerank"), ("3", "EXACT")] {
        let by_number = ok(&["query", &db, "--file", &q, "--k", "5", "--lod", number]);
        let by_name = ok(&["query", &db, "--file", &q, "--k", "5", "--lod", name]);
        assert_eq!(by_number["results"], by_name["results"], "--lod {number} / {name}");
        assert_eq!(by_number["lod"].as_u64(), number.parse::<u64>().ok());
    }

    // --nprobe reaches the index: the CLI answers what the facade answers with the same parameters,
    // which on this data differs from the calibrated default.
    let engine = m2m::M2m::open_read_only(&db).unwrap();
    let queries = m2m::splat::read_vectors::<f32>(&q).unwrap().data;
    let one = m2m::SearchParams { nprobe: 1, rerank: 0, coarse_probe: 0 };
    let ids =
        |hits: Vec<Vec<m2m::Hit>>| -> Vec<Vec<u64>> { hits.iter().map(|h| h.iter().map(|x| x.id).collect()).collect() };
    let narrow = ids(engine.retrieve_batch_with(&queries, 50, m2m::Lod::Rerank, &one).unwrap());
    let default = ids(engine.retrieve_batch(&queries, 50, m2m::Lod::Rerank).unwrap());
    assert_ne!(narrow, default, "the test needs data where nprobe 1 changes the answer");
    let r = ok(&["query", &db, "--file", &q, "--k", "50", "--nprobe", "1"]);
    let cli: Vec<Vec<u64>> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hits| hits.as_array().unwrap().iter().map(|h| h["id"].as_u64().unwrap()).collect())
        .collect();
    assert_eq!(cli, narrow);
    // 0 is refused as Python refuses it (leaving the option out is the calibrated default).
    for opt in ["--nprobe", "--rerank"] {
        let (code, err) = fails(&["query", &db, "--file", &q, opt, "0"]);
        assert!(code == 2 && err.contains("at least 1"), "{opt}: {err}");
    }

    // `info --json` is the facade's Stats, field for field.
    let info = ok(&["info", &db]);
    let stats = serde_json::to_value(engine.stats()).unwrap();
    for (field, value) in stats.as_object().unwrap() {
        // The device and the batch-retrieval counters belong to the process, not to the database.
        if field != "device" && field != "retrieval" {
            assert_eq!(&info[field], value, "info --json field {field}");
        }
    }
    assert_eq!(built["fine_clusters"], stats["fine_clusters"]);
    assert_eq!(info["metric"], "cosine");
}

/// Catches: `m2m compact` that does not merge the segments or leaves deleted ids blocked, or that loses
/// the index (verify must still find it, current, after the compaction).
#[test]
fn compact_merges_segments_and_frees_deleted_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = digits(dir.path(), 400, 16);
    let db = dir.path().join("db");
    let d = db.display().to_string();
    assert!(m2m(&["ingest", &d, &a]).status.success());
    assert!(m2m(&["build", &d]).status.success());
    {
        let mut e = m2m::M2m::open(&db).unwrap();
        e.add_splats(&vec![0.25; 10 * 16]).unwrap();
        e.flush().unwrap();
        e.delete(&[3, 5]).unwrap();
    }
    assert_eq!(ok(&["info", &d])["segments"], 2);
    let r = ok(&["compact", &d]);
    assert_eq!((r["splats"].as_u64(), r["segments"].as_u64()), (Some(208), Some(1)), "{r}");
    let v = ok(&["verify", &d]);
    assert_eq!((v["index"].as_str(), v["splats"].as_u64()), (Some("ok"), Some(208)), "{v}");
    let mut e = m2m::M2m::open(&db).unwrap();
    e.add_splats_with(&[0.5; 16], &[3], None, None).expect("a deleted id is free after compact");
}

/// Forged ids, ingest logs and manifests (valid checksums), damaged optional blobs, an appended-to
/// input, and a user's LOCK or ten-digit log: each a one-line error naming the file or an honest
/// repair, never a panic or a lost row. Mutations caught (each fails an assertion here):
/// `next_free_id` as `max + 1` (panics: exit 101), `load_ingest_log` without its range checks (the
/// forged base overflows in `base + rows`: exit 101), the manifest bound removed (exit 101 in ingest's
/// flush), `repair` removing the index with the learned blob or not removing soc/neighbours/ingest
/// blobs, the facade not reporting the cut tail, the appended file ingested again, `stream --out`
/// replacing a file, `check_creatable` accepting a non-empty LOCK.
#[test]
fn forged_numbers_damaged_blobs_and_grown_files_are_named_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = digits(dir.path(), 200, 16);
    let no_panic = |args: &[&str]| -> String {
        let (code, err) = fails(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        err
    };
    // The largest ids: no id (or range) is left for a new file.
    // (`u64::MAX` itself is reserved: the facade refuses it.)
    for top in [u64::MAX - 1, u64::MAX - 2, u64::MAX - 60] {
        let db = dir.path().join(format!("top{top}"));
        let mut e = m2m::M2m::create(m2m::M2mConfig::default().dim(16).data_dir(&db)).unwrap();
        e.add_splats_with(&[0.5; 16], &[top], None, None).unwrap();
        drop(e);
        let err = no_panic(&["ingest", &db.display().to_string(), &a]);
        assert!(err.contains("no id is left") || err.contains("no range of 100 ids"), "{err}");
    }
    let db = dir.path().join("db");
    let d = db.display().to_string();
    assert!(m2m(&["ingest", &d, &a]).status.success());
    // A forged ingest log: a range that overflows, an absurd row count, overlapping ranges.
    let good = m2m::tier::load_blob(&db, "m2m-ingest.blob").unwrap();
    let log: serde_json::Value = serde_json::from_slice(&good).unwrap();
    let entry = log["files"][0].clone();
    for (base, rows) in [(u64::MAX - 5, 100u64), (0, 10_000_000_000_000_000_000)] {
        let mut forged = entry.clone();
        forged["base"] = base.into();
        forged["rows"] = rows.into();
        let blob = serde_json::to_vec(&serde_json::json!({ "files": [forged] })).unwrap();
        m2m::tier::store_blob(&db, "m2m-ingest.blob", &blob).unwrap();
        for cmd in ["ingest", "verify"] {
            let args: Vec<&str> = if cmd == "ingest" { vec![cmd, &d, &a] } else { vec![cmd, &d] };
            let err = no_panic(&args);
            assert!(err.contains("m2m-ingest.blob"), "{cmd}: {err}");
        }
    }
    let mut twice = entry.clone();
    twice["path"] = "/elsewhere.npy".into();
    twice["base"] = 50.into();
    let blob = serde_json::to_vec(&serde_json::json!({ "files": [entry, twice] })).unwrap();
    m2m::tier::store_blob(&db, "m2m-ingest.blob", &blob).unwrap();
    assert!(no_panic(&["ingest", &d, &a]).contains("overlap"));
    let out = m2m(&["repair", &d]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("m2m-ingest.blob: removed"), "{said}");
    assert!(!db.join("m2m-ingest.blob").exists());
    assert_eq!(ok(&["verify", &d])["splats"], 100);
    m2m::tier::store_blob(&db, "m2m-ingest.blob", &good).unwrap();

    // Damaged optional blobs: repair removes each (and only it); the learned blob never takes the index.
    assert!(m2m(&["build", &d]).status.success());
    for blob in ["m2m-learned.blob", "m2m-neighbours.blob", "m2m-soc.blob"] {
        let had: Vec<String> = names(&db);
        m2m::tier::store_blob(&db, blob, b"forged, with a valid checksum").unwrap();
        assert!(no_panic(&["verify", &d]).contains(blob));
        let out = m2m(&["repair", &d]);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && said.contains(&format!("{blob}: removed")), "{blob}: {said}");
        assert!(!db.join(blob).exists());
        let left: Vec<String> = had.into_iter().filter(|n| n != blob).collect();
        assert_eq!(names(&db), left, "{blob}: repair removed something else");
        assert_eq!(ok(&["info", &d])["splats"], 100, "{blob}");
    }
    assert!(names(&db).iter().any(|n| n.ends_with(".idx")), "the intact index was removed");
    assert_eq!(ok(&["verify", &d])["index"], "ok");

    // A writer that cuts a damaged tail says so on stderr (one line).
    {
        let mut e = m2m::M2m::open(&db).unwrap();
        e.add_splats_with(&vec![0.25; 7 * 16], &(5000..5007).collect::<Vec<u64>>(), None, None).unwrap();
    }
    let wal = names(&db).into_iter().find(|n| n.ends_with(".wal")).unwrap();
    let mut bytes = std::fs::read(db.join(&wal)).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 1;
    std::fs::write(db.join(&wal), &bytes).unwrap();
    let out = m2m(&["build", &d]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&wal) && err.contains("7 rows") && err.contains("cut"), "{err}");

    // A file appended to since its rows went in: refused, nothing added twice.
    let all: Vec<f32> =
        [m2m::splat::read_vectors::<f32>(&a).unwrap().data, m2m::splat::read_vectors::<f32>(&b).unwrap().data].concat();
    write_vectors(&a, &all, 16).unwrap();
    let err = no_panic(&["ingest", &d, &a]);
    assert!(err.contains("grew from 100 to 200 rows") && err.contains("unchanged"), "{err}");
    assert_eq!(ok(&["info", &d])["splats"], 100);

    // `stream --out` never replaces a file without --force; bench says the k it used.
    let out_file = dir.path().join("out.npy");
    std::fs::write(&out_file, b"mine").unwrap();
    let o = out_file.display().to_string();
    assert!(no_panic(&["stream", &d, "--out", &o]).contains("--force"));
    assert_eq!(std::fs::read(&out_file).unwrap(), b"mine");
    ok(&["stream", &d, "--out", &o, "--force"]);
    assert_eq!(m2m::splat::read_vectors::<f32>(&out_file).unwrap().data.len(), 100 * 16);
    assert_eq!(ok(&["bench", "--base", &b, "--queries", &b, "--k", "1000"])["k"], 100);

    // A user's non-empty LOCK, or a ten-digit log without our magic: the directory is not ours.
    for (name, body) in [("LOCK", &b"my lock"[..]), ("0000000001.wal", b"notes")] {
        let s = dir.path().join(format!("s-{name}"));
        std::fs::create_dir(&s).unwrap();
        std::fs::write(s.join(name), body).unwrap();
        let err = no_panic(&["ingest", &s.display().to_string(), &b]);
        assert!(err.contains("not an M2M database") && err.contains(name), "{err}");
        assert_eq!(names(&s), [name]);
        assert_eq!(std::fs::read(s.join(name)).unwrap(), body);
    }
    // A FIFO input: named as what it is, not as an empty file. Mutation caught: `regular_file` left out.
    let fifo = dir.path().join("pipe.npy");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let err = no_panic(&["ingest", &d, &fifo.display().to_string()]);
    assert!(err.contains("pipe.npy") && err.contains("not a regular file"), "{err}");
    // A forged manifest generation: a one-line error naming MANIFEST from every command.
    let mut m = m2m::tier::Manifest::load(&db).unwrap();
    m.generation = u64::MAX;
    m.store(&db).unwrap();
    for args in [&["ingest", &d, &b][..], &["info", &d], &["verify", &d], &["repair", &d]] {
        assert!(no_panic(args).contains("MANIFEST"), "{args:?}");
    }
}

/// A file that failed mid-ingest (a NaN past the rows already in) and was then fixed in place resumes
/// after the rows already in, adding each row once; a file whose rows already in changed is refused
/// without advice that would add them twice ("under another name"). Mutations caught: the resume check
/// comparing the whole file's CRC (the fixed file is then refused, finding 3 of the second review), or
/// accepting a file whose ingested prefix changed.
#[test]
fn a_file_fixed_in_place_after_a_failure_resumes_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let d = m2m::digits_on_sphere(&m2m::DigitsConfig { rows: 300, queries: 1, dim: 16, ..Default::default() }).unwrap();
    let f = dir.path().join("nan.fvecs");
    let mut bad = d.base.clone();
    bad[250 * 16 + 3] = f32::NAN;
    write_vectors(&f, &bad, 16).unwrap();
    let db = dir.path().join("db").display().to_string();
    let fs = f.display().to_string();
    let (code, err) = fails(&["ingest", &db, &fs, "--chunk", "100"]);
    assert!(code != 0 && err.contains("row 250"), "{err}");
    assert_eq!(ok(&["info", &db])["splats"], 200);
    write_vectors(&f, &d.base, 16).unwrap();
    let r = ok(&["ingest", &db, &fs, "--chunk", "100"]);
    assert_eq!((r["added"].as_u64(), r["already_in"].as_u64()), (Some(100), Some(200)), "{r}");
    assert_eq!(ok(&["info", &db])["splats"], 300);
    // Now a value among the rows already in changes: refused, and the advice adds nothing twice.
    let mut changed = d.base.clone();
    changed[5] += 0.5;
    write_vectors(&f, &changed, 16).unwrap();
    let (_, err) = fails(&["ingest", &db, &fs, "--chunk", "100"]);
    assert!(err.contains("content changed") && !err.contains("another name"), "{err}");
    assert_eq!(ok(&["info", &db])["splats"], 300);
}

/// Forged settings (valid checksum) are named by every command: a dimension that differs from the
/// manifest's is `m2m-config.blob` corrupt (not a bare "dimension mismatch"), a metric that differs from
/// the index's names the settings too, and no message repeats "invalid config: config". Mutations caught:
/// `stored_config` without the manifest's dimension check, `index_matches` naming only the index
/// (finding 5 of the second review).
#[test]
fn forged_settings_name_the_settings_blob() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = digits(dir.path(), 200, 16);
    let db = dir.path().join("db");
    let d = db.display().to_string();
    assert!(m2m(&["ingest", &d, &a]).status.success());
    assert!(m2m(&["build", &d]).status.success());
    let good = m2m::tier::load_blob(&db, "m2m-config.blob").unwrap();
    let json: serde_json::Value = serde_json::from_slice(&good).unwrap();
    let mut dim = json.clone();
    dim["dim"] = 17.into();
    m2m::tier::store_blob(&db, "m2m-config.blob", &serde_json::to_vec(&dim).unwrap()).unwrap();
    for cmd in ["info", "verify", "stream", "build"] {
        let (_, err) = fails(&[cmd, &d]);
        assert!(err.contains("m2m-config.blob") && err.contains("MANIFEST"), "{cmd}: {err}");
        assert!(!err.contains("invalid config: config"), "{cmd}: {err}");
    }
    let metric = if json["metric"] == "L2" { "Cosine" } else { "L2" };
    let mut m = json.clone();
    m["metric"] = metric.into();
    m2m::tier::store_blob(&db, "m2m-config.blob", &serde_json::to_vec(&m).unwrap()).unwrap();
    let (_, err) = fails(&["query", &d, "--row", "1"]);
    assert!(err.contains("m2m-config.blob"), "{err}");
}

/// `--epochs` and `--steps` beyond their bounds are one-line errors, not runs that never end. Mutation
/// caught: removing the bounds (the test then runs for ever, or overflows `per_epoch * epochs`).
#[test]
fn unbounded_stream_counts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = digits(dir.path(), 100, 16);
    let d = dir.path().join("db").display().to_string();
    assert!(m2m(&["ingest", &d, &a]).status.success());
    for (flag, bound) in [("--epochs", "1000000"), ("--steps", "100000")] {
        let (code, err) = fails(&["stream", &d, flag, "18446744073709551615"]);
        assert!(code == 1 && err.contains(flag) && err.contains(bound), "{err}");
    }
}

/// `ingest --attributes` (JSON lines by id), `query --filter` and the schema in `info`. Mutations caught:
/// a query that ignores the filter (a hit of another label), attributes not stored (no "attributes" in
/// the hits, or other values), a bad filter or attribute file answered instead of refused.
#[test]
fn attributes_from_json_lines_filter_queries_and_show_in_info() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = digits(dir.path(), 1_000, 16);
    let db = dir.path().join("db").display().to_string();
    let q = dir.path().join("q.npy").display().to_string();
    let attrs = dir.path().join("attrs.jsonl");
    let lines: Vec<String> = (0..1_000)
        .map(|id| {
            format!(
                r#"{{"id": {id}, "label": {}, "tenant": "t{}", "tags": ["x"], "doc": {{"n": {id}}}}}"#,
                id % 4,
                id % 2
            )
        })
        .collect();
    std::fs::write(&attrs, lines.join("\n")).unwrap();
    let out = m2m(&["ingest", &db, &a, &b, "--attributes", &attrs.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ok(&["build", &db]);
    let filter = r#"{"eq": {"field": "label", "value": 2}}"#;
    let r = ok(&["query", &db, "--file", &q, "--k", "5", "--lod", "exact", "--filter", filter]);
    let results = r["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    for hits in results {
        assert_eq!(hits.as_array().unwrap().len(), 5);
        for h in hits.as_array().unwrap() {
            let id = h["id"].as_u64().unwrap();
            assert_eq!(id % 4, 2, "{h}");
            assert_eq!(h["attributes"]["label"], 2, "{h}");
            assert_eq!(h["attributes"]["tenant"], format!("t{}", id % 2));
            assert_eq!(h["attributes"]["doc"]["n"], id, "{h}");
        }
    }
    let info = ok(&["info", &db]);
    let fields = info["schema"]["fields"].as_array().unwrap();
    assert!(fields.iter().any(|f| f["name"] == "label" && f["type"] == "label"), "{info}");
    assert!(fields.iter().any(|f| f["name"] == "tags" && f["type"] == "tags"), "{info}");
    let (code, err) = fails(&["query", &db, "--file", &q, "--filter", r#"{"eq": {"field": "nope", "value": 1}}"#]);
    assert_eq!(code, 1);
    assert!(err.contains("nope") && !err.contains('\n'), "{err}");
    std::fs::write(&attrs, r#"{"id": 3, "label": "three"}"#).unwrap();
    let (code, err) = fails(&["ingest", &db, &a, "--attributes", &attrs.display().to_string()]);
    assert_eq!(code, 1);
    assert!(err.contains("line 1") && err.contains("label"), "{err}");
}

/// `ingest --attributes FILE.parquet`: a file pyarrow wrote (`tests/data/make_attrs_parquet.py`: snappy
/// pages, a null every 7th score, a list column, a timestamp and a binary column) sets every splat's
/// attributes, typed by the Parquet schema, and a filter reads them. Mutations caught: a Parquet file
/// read as JSON lines (refused at line 1), a column dropped or read from the wrong row (values differ
/// from the generator's formulas), a timestamp column inferred as a plain integer (the schema's type),
/// a binary column read as a string or base64 (the payload's bytes differ), nulls read as values, a
/// truncated file accepted or reported without the file's name, a panic of the Parquet reader on a
/// forged footer let through (exit 101), an empty file taken for zero attributes.
#[test]
fn attributes_from_parquet_are_typed_by_their_columns() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = digits(dir.path(), 1_000, 16);
    let db = dir.path().join("db").display().to_string();
    let q = dir.path().join("q.npy").display().to_string();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/attrs.parquet");
    let pq = fixture.display().to_string();
    // A truncated copy: Parquet's magic bytes, then nothing readable. Refused before any vector is in.
    let cut = dir.path().join("cut.parquet");
    std::fs::write(&cut, &std::fs::read(&fixture).unwrap()[..200]).unwrap();
    let (code, err) = fails(&["ingest", &db, &a, "--attributes", &cut.display().to_string()]);
    assert_eq!(code, 1);
    assert!(err.contains("cut.parquet") && err.contains("Parquet") && !err.contains('\n'), "{err}");
    assert!(!dir.path().join("db").exists(), "a database was created by a refused ingest");
    // A footer with three bytes changed (found by a reviewer's mutation run) made the Parquet reader
    // panic; an empty file is no attributes file. Both refused in one line, nothing created.
    let forged = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/forged_footer.parquet");
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    for (bad, want) in [(forged, "not a readable Parquet file"), (empty, "no rows")] {
        let (code, err) = fails(&["ingest", &db, &a, "--attributes", &bad.display().to_string()]);
        assert!(code == 1 && err.contains(want) && !err.contains('\n'), "{err}");
        assert!(!dir.path().join("db").exists(), "a database was created by a refused ingest");
    }

    let out = m2m(&["ingest", &db, &a, &b, "--attributes", &pq]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ok(&["build", &db]);
    let info = ok(&["info", &db]);
    let fields = info["schema"]["fields"].as_array().unwrap();
    let ty = |name: &str| fields.iter().find(|f| f["name"] == name).map(|f| f["type"].clone());
    for (name, want) in [
        ("label", "label"),
        ("tenant", "keyword"),
        ("score", "float"),
        ("flag", "bool"),
        ("ts", "timestamp"),
        ("tags", "tags"),
        ("blob", "payload"),
    ] {
        assert_eq!(ty(name), Some(want.into()), "{name}: {info}");
    }
    let filter = r#"{"and": [{"eq": {"field": "label", "value": 1}}, {"eq": {"field": "flag", "value": false}}]}"#;
    let r = ok(&["query", &db, "--file", &q, "--k", "8", "--lod", "exact", "--filter", filter]);
    let mut seen = 0;
    for hits in r["results"].as_array().unwrap() {
        for h in hits.as_array().unwrap() {
            let id = h["id"].as_u64().unwrap();
            let at = &h["attributes"];
            assert_eq!((id % 4, at["label"].as_u64()), (1, Some(1)), "{h}");
            assert_eq!(at["flag"], false, "{h}");
            assert_eq!(at["tenant"], format!("t{}", id % 2), "{h}");
            if id % 7 == 0 {
                assert!(at["score"].is_null(), "{h}");
            } else {
                assert!((at["score"].as_f64().unwrap() - id as f64 / 10.0).abs() < 1e-9, "{h}");
            }
            assert_eq!(at["ts"].as_i64(), Some(1_767_225_600_000_000 + id as i64 * 1_000_000), "{h}");
            assert_eq!(at["tags"], serde_json::json!(["x", format!("t{}", id % 3)]), "{h}");
            let hex: String = (id as u32).to_le_bytes().iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(at["blob"]["bytes_hex"], hex, "{h}");
            seen += 1;
        }
    }
    assert_eq!(seen, 5 * 8, "{r}");
}

/// `upsert DB VECTORS --rows ROWS`: ids 5 and 7 replaced (vector and attributes: a field a row leaves
/// out becomes null), id 1000 added, the built index follows; bad runs change nothing. Mutations caught:
/// rows paired with the wrong vectors (the replaced vector's nearest hit is another id), attributes not
/// replaced or merged instead of replaced (label 1 or tenant kept), the count check missing (a short
/// rows file accepted), a refused run that still writes (the splat count moves), a damaged upsert
/// blob that `repair` cannot remove (or removes without the stored index).
#[test]
fn upsert_replaces_by_id_and_refuses_bad_input_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = digits(dir.path(), 400, 16);
    let db = dir.path().join("db").display().to_string();
    let attrs = dir.path().join("attrs.jsonl");
    let lines: Vec<String> = (0..200).map(|id| format!(r#"{{"id": {id}, "label": 1, "tenant": "t"}}"#)).collect();
    std::fs::write(&attrs, lines.join("\n")).unwrap();
    let out = m2m(&["ingest", &db, &a, "--attributes", &attrs.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ok(&["build", &db]);
    // Three vectors far from the digits: each its own direction.
    let mut v = vec![0f32; 3 * 16];
    for (r, row) in v.chunks_exact_mut(16).enumerate() {
        row[r] = 1.0;
        row[15 - r] = -1.0;
    }
    let vecs = dir.path().join("up.npy");
    write_vectors(&vecs, &v, 16).unwrap();
    let vecs = vecs.display().to_string();
    let rows = dir.path().join("rows.jsonl");
    let rows_s = rows.display().to_string();
    std::fs::write(&rows, "{\"id\": 5, \"label\": 3}\n{\"id\": 7}\n{\"id\": 1000, \"label\": 2, \"tenant\": \"new\"}")
        .unwrap();
    let out = ok(&["upsert", &db, &vecs, "--rows", &rows_s]);
    assert_eq!(
        (out["replaced"].as_u64(), out["added"].as_u64(), out["splats"].as_u64()),
        (Some(2), Some(1), Some(201))
    );
    let r = ok(&["query", &db, "--file", &vecs, "--k", "1"]);
    let top: Vec<&serde_json::Value> = r["results"].as_array().unwrap().iter().map(|h| &h[0]).collect();
    assert_eq!(top.iter().map(|h| h["id"].as_u64().unwrap()).collect::<Vec<_>>(), [5, 7, 1000], "{r}");
    assert_eq!((top[0]["attributes"]["label"].as_i64(), top[0]["attributes"]["tenant"].is_null()), (Some(3), true));
    assert!(top[1]["attributes"]["label"].is_null() && top[1]["attributes"]["tenant"].is_null(), "{r}");
    assert_eq!(top[2]["attributes"]["tenant"], "new", "{r}");
    let splats = |db: &str| ok(&["info", db])["splats"].as_u64().unwrap();
    // Refused whole: too few rows, an id twice, a vector that is not finite, the wrong dimension.
    let nan = dir.path().join("nan.npy");
    let mut bad = v.clone();
    bad[20] = f32::NAN;
    write_vectors(&nan, &bad, 16).unwrap();
    let wide = dir.path().join("wide.npy");
    write_vectors(&wide, &vec![0.5f32; 3 * 17], 17).unwrap();
    let cases: [(&str, &str, &[&str]); 4] = [
        (&vecs, "{\"id\": 9}\n{\"id\": 10}", &["2 rows for the 3 vectors"]),
        (&vecs, "{\"id\": 9}\n{\"id\": 9}\n{\"id\": 11}", &["line 2", "id 9 again"]),
        (&nan.display().to_string(), "{\"id\": 9}\n{\"id\": 10}\n{\"id\": 11}", &["row 1", "not finite"]),
        (&wide.display().to_string(), "{\"id\": 9}\n{\"id\": 10}\n{\"id\": 11}", &["dimension 17", "16"]),
    ];
    for (file, text, want) in cases {
        std::fs::write(&rows, text).unwrap();
        let (code, err) = fails(&["upsert", &db, file, "--rows", &rows_s]);
        assert_eq!(code, 1, "{text}");
        for w in want {
            assert!(err.contains(w), "{text}: {err} lacks {w}");
        }
        assert_eq!(splats(&db), 201, "{text}: the database changed");
    }
    let (_, err) = fails(&["upsert", &dir.path().join("nope").display().to_string(), &vecs, "--rows", &rows_s]);
    assert!(err.contains("not an M2M database"), "{err}");
    // A damaged upsert bookkeeping blob: named, and `repair` drops it with the stored index it belongs to
    // (kept alone, the index would answer with the upserted ids' old vectors); `build` makes a new one.
    let blob = dir.path().join("db").join(m2m::REPLACED_BLOB);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&blob, &bytes).unwrap();
    let (_, err) = fails(&["info", &db]);
    assert!(err.contains(m2m::REPLACED_BLOB), "{err}");
    let out = m2m(&["repair", &db]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said} {}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains(m2m::REPLACED_BLOB) && said.contains("stored index goes with it"), "{said}");
    assert!(!blob.exists());
    assert!(ok(&["info", &db])["fine_clusters"].is_null(), "the stored index was kept without its blob");
    ok(&["build", &db]);
    let r = ok(&["query", &db, "--file", &vecs, "--k", "1"]);
    let top: Vec<u64> = r["results"].as_array().unwrap().iter().map(|h| h[0]["id"].as_u64().unwrap()).collect();
    assert_eq!(top, [5, 7, 1000], "{r}");
}

/// Bad `--attributes` files are one-line errors naming the line, and leave the database as it was: the
/// vectors of the same command are not ingested either. Mutations caught: duplicate ids accepted (the
/// later line silently wins); an integer past i64 read as a float; a field whose kind changes between
/// lines accepted or reported without the line; the file checked after the vector ingest (the splat
/// count grows); the schema declared before the ids are checked (the schema is set by a failed run);
/// integers and floats in one field refused instead of read as floats.
#[test]
fn bad_attribute_files_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = digits(dir.path(), 400, 8);
    let db = dir.path().join("db").display().to_string();
    let attrs = dir.path().join("attrs.jsonl");
    let path = attrs.display().to_string();
    ok(&["ingest", &db, &a]);
    let splats = |db: &str| ok(&["info", db])["splats"].as_u64().unwrap();
    let before = splats(&db);
    assert_eq!(before, 200);
    let cases: [(&str, &[&str]); 7] = [
        ("{\"id\": 1, \"label\": 1}\n{\"id\": 1, \"label\": 2}", &["line 2", "id 1 again", "line 1"]),
        ("{\"id\": 1, \"n\": 18446744073709551615}", &["line 1", "\"n\"", "signed"]),
        ("{\"id\": 1, \"t\": \"a\"}\n{\"id\": 2, \"t\": 3}", &["line 2", "\"t\"", "line 1"]),
        ("{\"label\": 1}", &["line 1", "id"]),
        ("{\"id\": -4, \"label\": 1}", &["line 1", "id"]),
        ("{\"id\": 1, \"t\": \"a\"}\n{\"id\": 2, \"t\": \"\"}", &["line 2", "keyword"]),
        ("{\"id\": 1}\n{\"id\": 2, \"tags\": [\"a\", 3]}", &["line 2", "tags"]),
    ];
    for (text, want) in cases {
        std::fs::write(&attrs, text).unwrap();
        let (code, err) = fails(&["ingest", &db, &b, "--attributes", &path]);
        assert_eq!(code, 1, "{text}");
        for w in want {
            assert!(err.contains(w), "{text}: {err} lacks {w}");
        }
        assert_eq!(splats(&db), before, "{text}: the vectors were ingested");
        assert!(ok(&["info", &db])["schema"].is_null(), "{text}: a schema was set");
    }
    // Ids that can be no splat (not in the database, past the rows this ingest adds): refused before
    // the vectors go in (they went in, and only the attributes were refused, before).
    std::fs::write(&attrs, "{\"id\": 1, \"label\": 1}\n{\"id\": 99999, \"label\": 2}").unwrap();
    let (_, err) = fails(&["ingest", &db, "--attributes", &path, &b]);
    assert!(err.contains("99999") && err.contains("not a splat"), "{err}");
    assert_eq!(splats(&db), before, "the vectors were ingested by a run whose attributes name no splat");
    assert!(ok(&["info", &db])["schema"].is_null(), "a schema was set by a failed run");
    // Integers and floats in one field make a float field.
    std::fs::write(&attrs, "{\"id\": 1, \"w\": 2}\n{\"id\": 2, \"w\": 0.5}").unwrap();
    let out = m2m(&["ingest", &db, &a, "--attributes", &path]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fields = ok(&["info", &db])["schema"]["fields"].clone();
    assert_eq!(fields[0]["type"], "float", "{fields}");
    // A new database: the ids this ingest adds (0..400 from two files of 200) are accepted, one past
    // them is refused before the database is created.
    let fresh = dir.path().join("fresh").display().to_string();
    std::fs::write(&attrs, "{\"id\": 0, \"label\": 1}\n{\"id\": 400, \"label\": 2}").unwrap();
    let (_, err) = fails(&["ingest", &fresh, &a, &b, "--attributes", &path]);
    assert!(err.contains("400") && err.contains("not a splat"), "{err}");
    assert!(!dir.path().join("fresh").exists(), "a database was created by a refused ingest");
    std::fs::write(&attrs, "{\"id\": 0, \"label\": 1}\n{\"id\": 399, \"label\": 2}").unwrap();
    let out = m2m(&["ingest", &fresh, &a, &b, "--attributes", &path]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(splats(&fresh), 400);
    assert_eq!(ok(&["info", &fresh])["schema"]["fields"][0]["name"], "label");
}
