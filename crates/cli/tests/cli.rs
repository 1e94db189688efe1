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

    // Locked: another writer holds the directory.
    {
        let _holder = m2m::M2m::open(&db).unwrap();
        let (code, err) = fails(&["info", &db]);
        assert_eq!(code, 1);
        assert!(err.contains("locked"), "{err}");
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
    let r = ok(&["query", &db, "--file", &q, "--k", "50", "--nprobe", "1", "--rerank", "0"]);
    let cli: Vec<Vec<u64>> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hits| hits.as_array().unwrap().iter().map(|h| h["id"].as_u64().unwrap()).collect())
        .collect();
    assert_eq!(cli, narrow);

    // `info --json` is the facade's Stats, field for field.
    let info = ok(&["info", &db]);
    let stats = serde_json::to_value(engine.stats()).unwrap();
    for (field, value) in stats.as_object().unwrap() {
        if field != "device" {
            assert_eq!(&info[field], value, "info --json field {field}");
        }
    }
    assert_eq!(built["fine_clusters"], stats["fine_clusters"]);
    assert_eq!(info["metric"], "cosine");
}
