//! The engine through its whole path: ingest, build, retrieve at every LOD with recall against exact
//! search, energy, generation, deletes, inserts after the build, reopen after close, and bad input.

use std::collections::HashSet;

use m2m::{DataLoaderConfig, Error, Lod, M2m, M2mConfig, create_m2m, digits_on_sphere};

const DIM: usize = 64;

fn digits(rows: usize, queries: usize) -> m2m::splat::DigitsSphere {
    digits_on_sphere(&m2m::DigitsConfig { rows, queries, dim: DIM, ..Default::default() }).unwrap()
}

fn recall(engine: &M2m, queries: &[f32], lod: Lod) -> f64 {
    let mut found = 0;
    let mut total = 0;
    for q in queries.chunks_exact(DIM) {
        let exact: HashSet<u64> = engine.retrieve(q, 10, Lod::Exact).unwrap().iter().map(|h| h.id).collect();
        found += engine.retrieve(q, 10, lod).unwrap().iter().filter(|h| exact.contains(&h.id)).count();
        total += 10;
    }
    found as f64 / total as f64
}

#[test]
fn ingest_build_retrieve_generate_and_delete_in_memory() {
    let d = digits(4_000, 50);
    let mut engine = create_m2m(M2mConfig::default().dim(DIM)).unwrap();
    let ids = engine.add_splats(&d.base).unwrap();
    assert_eq!(ids, (0..4_000).collect::<Vec<u64>>());
    assert!(matches!(engine.retrieve(&d.queries[..DIM], 10, Lod::Rerank), Err(Error::NoIndex { .. })));
    engine.build_index().unwrap();
    let s = engine.stats();
    assert_eq!(s.splats, 4_000);
    assert!(s.fine_clusters.is_some() && s.coarse_clusters.is_some() && s.nprobe.is_some());
    // Learned kappa: inside the range (per dimension of the fit's sphere) and not the constant 10.
    let p = engine.kappa_fit().unwrap().sphere_dimension;
    let hi = (50.0 * (p - 1.0)) as f32;
    assert!(s.kappa_min >= 1.0 && s.kappa_max <= hi * 1.001 && s.kappa_max > s.kappa_min, "{s:?}");

    // Recall against exact search, measured: LOD 2 is calibrated for 0.95.
    let r2 = recall(&engine, &d.queries, Lod::Rerank);
    let r0 = recall(&engine, &d.queries, Lod::Centroids);
    assert!(r2 >= 0.9, "LOD 2 recall {r2}");
    assert!(r0 < r2, "LOD 0 {r0} below LOD 2 {r2}");
    let batch = engine.retrieve_batch(&d.queries, 10, Lod::Rerank).unwrap();
    assert_eq!(batch[3], engine.retrieve(&d.queries[3 * DIM..4 * DIM], 10, Lod::Rerank).unwrap());

    // Energy: lower on the data than far from it; generation moves seeds and keeps them unit.
    let on = engine.energy(&d.base[..DIM]).unwrap();
    let off: Vec<f32> = d.base[..DIM].iter().map(|v| -v).collect();
    assert!(on < engine.energy(&off).unwrap());
    let generated = engine.generate(&d.queries[..4 * DIM], 20).unwrap();
    assert_eq!(generated.len(), 4 * DIM);
    assert_ne!(generated, d.queries[..4 * DIM].to_vec());
    assert!(generated.chunks_exact(DIM).all(|r| (r.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-4));
    assert_eq!(engine.generate_n(3, 5).unwrap().len(), 3 * DIM);

    // Inserts after the build are found without a rebuild; deletes leave results at once.
    let new_ids = engine.add_splats(&d.queries[..2 * DIM]).unwrap();
    let hit = engine.retrieve(&d.queries[..DIM], 1, Lod::Rerank).unwrap();
    assert_eq!(hit[0].id, new_ids[0], "the inserted copy of the query is its own nearest neighbour");
    assert_eq!(engine.delete(&[new_ids[0], 999_999]).unwrap(), 1);
    let hit = engine.retrieve(&d.queries[..DIM], 10, Lod::Rerank).unwrap();
    assert!(hit.iter().all(|h| h.id != new_ids[0]));
    assert_eq!(engine.len(), 4_001);
    engine.build_index().unwrap();
    assert_eq!(engine.stats().deleted, 0);
}

#[test]
fn a_directory_engine_reopens_with_every_acknowledged_splat() {
    let d = digits(1_500, 5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let mut engine =
            M2m::create(M2mConfig { durable: false, ..M2mConfig::default().dim(DIM).data_dir(&path) }).unwrap();
        engine.add_splats(&d.base[..1_000 * DIM]).unwrap();
        engine.flush().unwrap();
        engine.add_splats(&d.base[1_000 * DIM..]).unwrap();
        engine.delete(&[7, 1_200]).unwrap();
        assert!(
            matches!(M2m::open(&path), Err(Error::Tier(m2m::tier::Error::Locked { .. }))),
            "a second engine on the same directory is refused"
        );
    }
    let mut engine = M2m::open(&path).unwrap();
    assert_eq!(engine.len(), 1_498);
    assert!(!engine.config().durable, "settings come back from the directory");
    engine.build_index().unwrap();
    let hits = engine.retrieve(&d.base[8 * DIM..9 * DIM], 1, Lod::Exact).unwrap();
    assert_eq!(hits[0].id, 8);
    assert!(engine.retrieve(&d.base[7 * DIM..8 * DIM], 1, Lod::Exact).unwrap()[0].id != 7, "7 stays deleted");
    let ids = engine.add_splats(&d.queries[..DIM]).unwrap();
    assert_eq!(ids, vec![1_500], "new ids continue after the stored ones");
    engine.build_index().unwrap();
    let before = engine.retrieve(&d.queries[..DIM], 10, Lod::Rerank).unwrap();
    drop(engine);
    // The index comes back with the engine: no build needed, the same answers.
    let engine = M2m::open(&path).unwrap();
    assert!(engine.index().is_some(), "the stored index is loaded");
    assert_eq!(engine.retrieve(&d.queries[..DIM], 10, Lod::Rerank).unwrap(), before);
}

#[test]
fn a_read_only_engine_reads_beside_the_writer_and_refuses_changes() {
    let d = digits(1_200, 5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut writer =
        M2m::create(M2mConfig { durable: false, ..M2mConfig::default().dim(DIM).data_dir(&path) }).unwrap();
    writer.add_splats(&d.base[..800 * DIM]).unwrap();
    writer.flush().unwrap();
    writer.add_splats(&d.base[800 * DIM..1_000 * DIM]).unwrap();
    writer.delete(&[3, 900]).unwrap();
    writer.build_index().unwrap();
    // While the writer holds the directory: a segment, a log with a batch and a delete, and the index.
    let mut reader = M2m::open_read_only(&path).unwrap();
    assert!(reader.is_read_only());
    assert_eq!(reader.len(), 998);
    assert!(!reader.contains(3) && !reader.contains(900) && reader.contains(950));
    assert!(reader.index().is_some(), "the stored index is loaded");
    assert_eq!(
        reader.retrieve(&d.queries[..DIM], 10, Lod::Rerank).unwrap(),
        writer.retrieve(&d.queries[..DIM], 10, Lod::Rerank).unwrap()
    );
    for r in [
        reader.add_splats(&d.base[1_000 * DIM..1_001 * DIM]).map(|_| ()),
        reader.delete(&[5]).map(|_| ()),
        reader.flush(),
    ] {
        assert!(matches!(r, Err(Error::ReadOnly { .. })), "{r:?}");
    }
    assert_eq!(reader.len(), 998, "nothing changed");
    // It shows what was acknowledged when it opened; a later reader sees the writer's later changes,
    // the writer keeps working, and nothing the reader did touched the files.
    writer.add_splats(&d.base[1_000 * DIM..]).unwrap();
    writer.flush().unwrap();
    assert_eq!(reader.len(), 998);
    assert_eq!(M2m::open_read_only(&path).unwrap().len(), 1_198);
    drop(reader);
    drop(writer);
    assert_eq!(M2m::open(&path).unwrap().len(), 1_198);
    assert!(matches!(M2m::open_read_only(dir.path().join("missing")), Err(Error::Tier(_))));
}

#[test]
fn the_data_lake_streams_from_the_tiers_with_the_same_rows() {
    use m2m::Source;
    let d = digits(3_000, 0);
    let dir = tempfile::tempdir().unwrap();
    // A warm budget of a few blocks (1 MiB blocks of 4,096 rows at d = 64): blocks are evicted and
    // read again across epochs.
    let config = M2mConfig {
        durable: false,
        warm_budget_bytes: 600_000,
        ..M2mConfig::default().dim(DIM).data_dir(dir.path().join("db"))
    };
    let mut engine = M2m::create(config).unwrap();
    engine.add_splats(&d.base[..1_800 * DIM]).unwrap();
    engine.flush().unwrap();
    engine.add_splats(&d.base[1_800 * DIM..]).unwrap(); // some rows only in the log
    engine.delete(&[4, 2_500]).unwrap();
    engine.build_index().unwrap();
    let collect = |cfg: &DataLoaderConfig| -> Vec<m2m::TrainingBatch> {
        engine.export_to_dataloader(cfg).unwrap().map(|b| b.unwrap()).collect()
    };
    let base = DataLoaderConfig { batch_size: 128, seed: 9, epochs: 2, ..Default::default() };
    let tiers = collect(&DataLoaderConfig { source: Source::Tiers, ..base.clone() });
    // The default reads the tiers where a data directory exists (mutation caught: `Auto` as `Memory`).
    assert_eq!(tiers, collect(&DataLoaderConfig { source: Source::Auto, ..base.clone() }), "auto reads the tiers");
    assert_eq!(tiers, collect(&DataLoaderConfig { source: Source::Tiers, ..base.clone() }), "deterministic");
    let memory = collect(&DataLoaderConfig { source: Source::Memory, ..base.clone() });
    assert_ne!(tiers, memory, "a block-ordered plan, not the row-shuffled one");
    // Each epoch: every live splat once, with the vector, kappa and alpha the engine holds.
    for epoch in 0..2 {
        let mut rows: Vec<(u64, Vec<f32>, f32, f32)> = tiers
            .iter()
            .filter(|b| b.epoch == epoch)
            .flat_map(|b| {
                (0..b.len()).map(move |i| (b.ids[i], b.mu[i * DIM..(i + 1) * DIM].to_vec(), b.kappa[i], b.alpha[i]))
            })
            .collect();
        rows.sort_by_key(|r| r.0);
        let ids: Vec<u64> = rows.iter().map(|r| r.0).collect();
        let want: Vec<u64> = (0..3_000).filter(|&i| i != 4 && i != 2_500).collect();
        assert_eq!(ids, want);
        let mut mem: Vec<(u64, Vec<f32>, f32, f32)> = memory
            .iter()
            .filter(|b| b.epoch == epoch)
            .flat_map(|b| {
                (0..b.len()).map(move |i| (b.ids[i], b.mu[i * DIM..(i + 1) * DIM].to_vec(), b.kappa[i], b.alpha[i]))
            })
            .collect();
        mem.sort_by_key(|r| r.0);
        assert_eq!(rows.len(), mem.len());
        // The same rows as from RAM (whose mu a build with deletes re-normalised: within 1e-6).
        for (a, b) in rows.iter().zip(&mem) {
            let worst = a.1.iter().zip(&b.1).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(a.0 == b.0 && a.2 == b.2 && a.3 == b.3 && worst < 1e-6, "row {}: mu differs by {worst}", a.0);
        }
    }
    // The epoch is still mixed: consecutive batch ids are not runs of storage order.
    let first = &tiers[0].ids;
    let runs = first.windows(2).filter(|w| w[1] == w[0] + 1).count();
    assert!(runs < first.len() / 4, "{runs} consecutive pairs in a batch of {}", first.len());
    // Shards stay disjoint and covering; importance sampling draws the same rows with the same weights.
    let mut seen = Vec::new();
    for rank in 0..3 {
        let cfg = DataLoaderConfig { rank, world_size: 3, epochs: 1, source: Source::Tiers, ..base.clone() };
        seen.extend(collect(&cfg).iter().flat_map(|b| b.ids.clone()));
    }
    seen.sort_unstable();
    assert_eq!(seen.len(), 2_998);
    seen.dedup();
    assert_eq!(seen.len(), 2_998);
    let weighted = |source| {
        let cfg = DataLoaderConfig { importance_sampling: true, epochs: 1, source, ..base.clone() };
        let mut rows: Vec<(u64, u32)> = collect(&cfg)
            .iter()
            .flat_map(|b| b.ids.iter().copied().zip(b.weights.iter().map(|w| w.to_bits())).collect::<Vec<_>>())
            .collect();
        rows.sort_unstable();
        rows
    };
    assert_eq!(weighted(Source::Tiers), weighted(Source::Memory));
    // An engine in memory has no tiers.
    let mut mem_engine = create_m2m(M2mConfig::default().dim(DIM)).unwrap();
    mem_engine.add_splats(&d.base[..100 * DIM]).unwrap();
    let r = mem_engine.export_to_dataloader(&DataLoaderConfig { source: Source::Tiers, ..Default::default() });
    assert!(matches!(r, Err(Error::Config { field: "source", .. })), "{r:?}");
    // There the default reads RAM (mutation caught: `Auto` refusing an engine without a directory).
    let rows = |source| -> Vec<m2m::TrainingBatch> {
        let cfg = DataLoaderConfig { source, batch_size: 32, seed: 4, ..Default::default() };
        mem_engine.export_to_dataloader(&cfg).unwrap().map(|b| b.unwrap()).collect()
    };
    assert_eq!(rows(Source::Auto), rows(Source::Memory));
}

#[test]
fn a_lake_reader_streams_what_a_read_only_engine_streams() {
    use m2m::{LakeReader, Source};
    let d = digits(2_500, 0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut writer =
        M2m::create(M2mConfig { durable: false, ..M2mConfig::default().dim(DIM).data_dir(&path) }).unwrap();
    writer.add_splats(&d.base[..1_500 * DIM]).unwrap();
    writer.flush().unwrap();
    writer.add_splats(&d.base[1_500 * DIM..2_200 * DIM]).unwrap();
    writer.delete(&[10, 1_600]).unwrap();
    writer.build_index().unwrap();
    let same = |label: &str| {
        let reader = LakeReader::open(&path).unwrap();
        let engine = M2m::open_read_only(&path).unwrap();
        assert_eq!(reader.len(), engine.len(), "{label}");
        for cfg in [
            DataLoaderConfig { batch_size: 100, seed: 3, epochs: 2, ..Default::default() },
            DataLoaderConfig { batch_size: 64, rank: 1, world_size: 3, drop_last: true, ..Default::default() },
            DataLoaderConfig { batch_size: 50, shuffle: false, skip_batches: 7, ..Default::default() },
        ] {
            let from_reader: Vec<_> = reader.export_to_dataloader(&cfg).unwrap().map(|b| b.unwrap()).collect();
            let tiers = DataLoaderConfig { source: Source::Tiers, ..cfg.clone() };
            let from_engine: Vec<_> = engine.export_to_dataloader(&tiers).unwrap().map(|b| b.unwrap()).collect();
            assert!(!from_reader.is_empty());
            assert_eq!(from_reader, from_engine, "{label}: {cfg:?}");
        }
        reader
    };
    // Beside the writer, after a build: the learned kappa and alpha.
    let reader = same("after the build");
    let learned: Vec<f32> = reader
        .export_to_dataloader(&DataLoaderConfig { batch_size: 4_000, ..Default::default() })
        .unwrap()
        .flat_map(|b| b.unwrap().kappa)
        .collect();
    assert!(learned.iter().any(|&k| k != 10.0), "learned, not the initial kappa");
    // Rows added since the build make the learned values stale: both fall back to the stored ones.
    writer.add_splats(&d.base[2_200 * DIM..]).unwrap();
    let reader = same("stale");
    assert_eq!(reader.len(), 2_498);
    for cfg in [
        DataLoaderConfig { importance_sampling: true, ..Default::default() },
        DataLoaderConfig { generate_samples: true, ..Default::default() },
        DataLoaderConfig { source: Source::Memory, ..Default::default() },
        DataLoaderConfig { batch_size: 0, ..Default::default() },
    ] {
        let r = reader.export_to_dataloader(&cfg);
        assert!(matches!(r, Err(Error::Config { .. })), "{cfg:?}: {r:?}");
    }
    assert!(matches!(LakeReader::open(dir.path().join("missing")), Err(Error::Tier(_))));
}

#[test]
fn the_data_lake_covers_shards_once_and_is_deterministic() {
    let d = digits(2_000, 0);
    let mut engine = create_m2m(M2mConfig::default().dim(DIM)).unwrap();
    engine.add_splats(&d.base).unwrap();
    engine.build_index().unwrap();
    let collect = |cfg: &DataLoaderConfig| -> Vec<m2m::TrainingBatch> {
        engine.export_to_dataloader(cfg).unwrap().map(|b| b.unwrap()).collect()
    };
    // Two shards: disjoint, together every splat once; the same seed gives the same batches.
    let mut seen = Vec::new();
    for rank in 0..2 {
        let cfg = DataLoaderConfig { batch_size: 100, rank, world_size: 2, seed: 5, ..Default::default() };
        let batches = collect(&cfg);
        assert_eq!(batches, collect(&cfg), "deterministic");
        seen.extend(batches.iter().flat_map(|b| b.ids.iter().copied()));
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..2_000).collect::<Vec<u64>>());

    // Importance sampling with generated rows: each batch's real rows, then one generated row per real
    // row carrying its seed's id and weight (their fidelity is tested in training.rs).
    let cfg = DataLoaderConfig {
        batch_size: 250,
        importance_sampling: true,
        generate_samples: true,
        epochs: 2,
        ..Default::default()
    };
    let batches = collect(&cfg);
    assert_eq!(batches.len(), 16);
    assert!(batches.iter().all(|b| b.len() == 500 && b.generated.iter().filter(|g| **g).count() == 250));
    let b = &batches[0];
    assert_eq!(b.ids[..250], b.ids[250..]);
    assert_eq!(b.weights[..250], b.weights[250..]);
    assert!(b.generated[..250].iter().all(|g| !g) && b.generated[250..].iter().all(|g| *g));

    // Resuming: skipping the first 11 batches (into the second epoch) gives exactly the rest, on a pool
    // of one thread as well as the default.
    let rest = collect(&DataLoaderConfig { skip_batches: 11, threads: 1, ..cfg.clone() });
    assert_eq!(rest, batches[11..]);
    assert!(collect(&DataLoaderConfig { skip_batches: 16, ..cfg.clone() }).is_empty());

    // A running loader keeps the splats as they were at export while the engine changes.
    let loader = engine
        .export_to_dataloader(&DataLoaderConfig { batch_size: 500, shuffle: false, ..Default::default() })
        .unwrap();
    engine.add_splats(&d.base[..DIM]).unwrap();
    engine.delete(&[0, 1, 2]).unwrap();
    let ids: Vec<u64> = loader.flat_map(|b| b.unwrap().ids).collect();
    assert_eq!(ids, (0..2_000).collect::<Vec<u64>>());

    // Dropping the loader early stops its thread (the test would hang otherwise).
    let mut early = engine.export_to_dataloader(&DataLoaderConfig { batch_size: 10, ..Default::default() }).unwrap();
    assert!(early.next().is_some());
    drop(early);
}

#[test]
fn bad_input_gets_a_typed_error_and_changes_nothing() {
    let mut engine = create_m2m(M2mConfig::default().dim(4)).unwrap();
    assert!(matches!(engine.add_splats(&[1.0, 2.0, 3.0]), Err(Error::Splat(_))), "wrong dimension");
    assert!(matches!(engine.add_splats(&[1.0, f32::NAN, 0.0, 0.0]), Err(Error::Splat(_))));
    assert!(matches!(engine.add_splats(&[]), Err(Error::Splat(_))), "empty batch");
    let r = engine.add_splats_with(&[1.0, 0.0, 0.0, 0.0], &[3], Some(&[0.0]), None);
    assert!(matches!(r, Err(Error::Splat(_))), "kappa 0: {r:?}");
    assert_eq!(engine.len(), 0);
    assert!(matches!(engine.build_index(), Err(Error::Empty)));
    assert!(matches!(
        create_m2m(M2mConfig { dim: 0, ..M2mConfig::default() }),
        Err(Error::Config { field: "dim", .. })
    ));
    assert!(matches!(
        create_m2m(M2mConfig { min_kappa: 60.0, ..M2mConfig::default() }),
        Err(Error::Config { field: "min_kappa", .. })
    ));
    let missing = tempfile::tempdir().unwrap();
    assert!(matches!(M2m::open(missing.path().join("nope")), Err(Error::Tier(m2m::tier::Error::Io { .. }))));
    engine.add_splats(&[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]).unwrap();
    assert!(matches!(
        engine.export_to_dataloader(&DataLoaderConfig { batch_size: 0, ..Default::default() }),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        engine.export_to_dataloader(&DataLoaderConfig { rank: 2, world_size: 2, ..Default::default() }),
        Err(Error::Config { field: "rank", .. })
    ));
}

/// Catches: a reopen that loses rows added after the build (they must be routed into the stored index),
/// one that still returns rows deleted since, an index that is not read from the mapped file after open,
/// and a change larger than the build that is not left for a rebuild.
#[test]
fn a_reopened_engine_serves_rows_added_and_deleted_since_its_build_without_a_rebuild() {
    let d = digits(3_000, 0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut writer =
        M2m::create(M2mConfig { durable: false, ..M2mConfig::default().dim(DIM).data_dir(&path) }).unwrap();
    writer.add_splats(&d.base[..2_000 * DIM]).unwrap();
    writer.build_index().unwrap();
    assert!(writer.index().is_some_and(m2m::index::Index::is_cold), "the built index reads the mapped file");
    // Added after the build: some flushed into a segment, some only in the log.
    let added = writer.add_splats(&d.base[2_000 * DIM..2_600 * DIM]).unwrap();
    writer.flush().unwrap();
    let logged = writer.add_splats(&d.base[2_600 * DIM..2_800 * DIM]).unwrap();
    writer.delete(&[3, 4, 2_100, 2_700]).unwrap();
    drop(writer);
    for (label, engine) in [("writer", M2m::open(&path).unwrap()), ("reader", M2m::open_read_only(&path).unwrap())] {
        let index = engine.index().unwrap_or_else(|| panic!("{label}: no index after adds and deletes"));
        assert!(index.is_cold(), "{label}");
        assert_eq!(index.len(), 2_800 - 4, "{label}");
        for &id in added.iter().chain(&logged).step_by(37) {
            let q = &d.base[id as usize * DIM..][..DIM];
            let top = engine.retrieve(q, 1, Lod::Rerank).unwrap();
            if [2_100, 2_700].contains(&id) {
                assert_ne!(top[0].id, id, "{label}: deleted id {id} found");
            } else {
                assert_eq!(top[0].id, id, "{label}: added id {id} not found by itself");
            }
        }
        let all = engine.retrieve(&d.base[..DIM], 3_000, Lod::Exact).unwrap();
        assert_eq!(all.len(), 2_796, "{label}");
        assert!(all.iter().all(|h| ![3, 4, 2_100, 2_700].contains(&h.id)), "{label}: a deleted id is returned");
    }
    // A change larger than the build: left stale, and built again on request.
    let mut writer = M2m::open(&path).unwrap();
    writer.delete(&(0..1_500).collect::<Vec<u64>>()).unwrap();
    writer.add_splats(&d.base[2_800 * DIM..]).unwrap();
    drop(writer);
    let mut writer = M2m::open(&path).unwrap();
    assert!(writer.index().is_none(), "a change larger than the build was patched in");
    writer.build_index().unwrap();
    // Ids 3 and 4 were among the 1,500 deleted already; 2,100 and 2,700 are not.
    assert_eq!(writer.index().unwrap().len(), 3_000 - 1_500 - 2);
}

/// Catches: a compaction that keeps deleted ids blocked, one that does not store the index again (the
/// reopened index would serve a re-added id with the vector it had before its delete), and rows added
/// since the build lost from the stored index.
#[test]
fn after_compact_a_deleted_id_is_added_again_with_its_new_vector_and_survives_a_reopen() {
    let d = digits(1_200, 0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut e = M2m::create(M2mConfig { durable: false, ..M2mConfig::default().dim(DIM).data_dir(&path) }).unwrap();
    e.add_splats(&d.base[..1_000 * DIM]).unwrap();
    e.build_index().unwrap();
    e.add_splats(&d.base[1_000 * DIM..1_100 * DIM]).unwrap();
    e.delete(&[1, 2]).unwrap();
    let old = d.base[DIM..2 * DIM].to_vec();
    let new = d.base[1_150 * DIM..1_151 * DIM].to_vec();
    assert!(e.add_splats_with(&new, &[1], None, None).is_err(), "a deleted id is refused before compaction");
    e.compact().unwrap();
    assert_eq!(e.stats().deleted, 0);
    e.add_splats_with(&new, &[1], None, None).unwrap();
    let check = |e: &M2m, label: &str| {
        assert_eq!(e.len(), 1_099, "{label}");
        let hit = e.retrieve(&new, 1, Lod::Rerank).unwrap()[0];
        assert!(hit.id == 1 && hit.score > 0.999, "{label}: {hit:?}");
        let hit = e.retrieve(&old, 1, Lod::Exact).unwrap()[0];
        assert!(!(hit.id == 1 && hit.score > 0.999), "{label}: the old vector of id 1 is served");
        assert!(e.retrieve(&d.base[1_050 * DIM..1_051 * DIM], 1, Lod::Rerank).unwrap()[0].id == 1_050, "{label}");
        assert!(e.index().is_some_and(|i| i.len() == 1_099), "{label}");
    };
    check(&e, "after compact");
    drop(e);
    check(&M2m::open(&path).unwrap(), "reopened");
    check(&M2m::open_read_only(&path).unwrap(), "read-only");
    // In memory: the same rule.
    let mut m = create_m2m(M2mConfig::default().dim(DIM)).unwrap();
    m.add_splats(&d.base[..300 * DIM]).unwrap();
    m.build_index().unwrap();
    m.delete(&[7]).unwrap();
    assert!(m.add_splats_with(&new, &[7], None, None).is_err());
    m.compact().unwrap();
    m.add_splats_with(&new, &[7], None, None).unwrap();
    assert_eq!(m.retrieve(&new, 1, Lod::Exact).unwrap()[0].id, 7);
}
