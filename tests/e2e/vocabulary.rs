//! One vocabulary across the faces: per-query search parameters, the statistics object, durability
//! per session, and the data lake's epochs and worker strides (what Python's dataset relies on).

use m2m::{DataLoaderConfig, Lod, M2m, M2mConfig, SearchParams, TrainingBatch, create_m2m, digits_on_sphere};

const DIM: usize = 32;

fn engine(rows: usize) -> (M2m, Vec<f32>) {
    let d = digits_on_sphere(&m2m::DigitsConfig { rows, queries: 20, dim: DIM, ..Default::default() }).unwrap();
    let mut e = create_m2m(M2mConfig::default().dim(DIM)).unwrap();
    e.add_splats(&d.base).unwrap();
    e.build_index_with(Some(40), None).unwrap();
    (e, d.queries)
}

fn ids(hits: &[Vec<m2m::Hit>]) -> Vec<Vec<u64>> {
    hits.iter().map(|h| h.iter().map(|x| x.id).collect()).collect()
}

#[test]
fn search_parameters_reach_the_index_per_query() {
    let (e, q) = engine(3_000);
    let index = e.index().unwrap();
    let default = e.retrieve_batch(&q, 50, Lod::Rerank).unwrap();
    assert_eq!(ids(&e.retrieve_batch_with(&q, 50, Lod::Rerank, &SearchParams::default()).unwrap()), ids(&default));
    let narrow = SearchParams { nprobe: 1, ..SearchParams::default() };
    let got = e.retrieve_batch_with(&q, 50, Lod::Rerank, &narrow).unwrap();
    let want = index.search_batch(&q, 50, Lod::Rerank, &narrow).unwrap();
    let want: Vec<Vec<u64>> = want.iter().map(|h| h.iter().map(|x| x.id).collect()).collect();
    assert_eq!(ids(&got), want);
    assert_ne!(ids(&got), ids(&default), "nprobe 1 must narrow the answer on this data");
    let one = e.retrieve_with(&q[..DIM], 50, Lod::Rerank, &narrow).unwrap();
    assert_eq!(one.iter().map(|h| h.id).collect::<Vec<_>>(), want[0]);
}

#[test]
fn stats_carry_the_calibrated_parameters_and_serialise_by_name() {
    let (e, _) = engine(2_000);
    let s = e.stats();
    let index = e.index().unwrap();
    assert_eq!((s.fine_clusters, s.coarse_clusters), (Some(index.n_fine()), Some(index.n_coarse())));
    // With the adaptive probe rule the calibration may choose, nprobe is the rule's cap.
    let rule = index.probe_rule();
    let nprobe = rule.map_or(index.default_nprobe(), |r| r.max_probe);
    assert_eq!((s.nprobe, s.rerank), (Some(nprobe), Some(index.default_rerank())));
    assert_eq!(s.probe_margin, rule.map(|r| r.margin));
    assert_eq!(s.metric, "cosine");
    let json = serde_json::to_value(&s).unwrap();
    for field in ["splats", "deleted", "dim", "metric", "device", "segments", "fine_clusters", "kappa_mean"] {
        assert!(json.get(field).is_some(), "{field} in {json}");
    }
    let back: m2m::Stats = serde_json::from_value(json).unwrap();
    assert_eq!(back, s);
}

#[test]
fn durability_given_at_open_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    drop(create_m2m(M2mConfig::default().dim(4).data_dir(&path)).unwrap());
    let mut e = M2m::open_with(&path, false).unwrap();
    assert!(!e.config().durable);
    e.add_splats(&[1.0, 2.0, 3.0, 4.0]).unwrap();
    drop(e);
    let mut e = M2m::open(&path).unwrap();
    assert!(e.config().durable, "the stored setting is unchanged");
    assert_eq!(e.len(), 1);
    e.flush().unwrap();
    // A reader beside the writer reports the same statistics (the segment it sees included).
    let reader = M2m::open_read_only(&path).unwrap();
    assert_eq!(reader.stats(), e.stats());
    assert_eq!(reader.stats().segments, 1);
}

fn collect(e: &M2m, cfg: &DataLoaderConfig) -> Vec<TrainingBatch> {
    e.export_to_dataloader(cfg).unwrap().map(|b| b.unwrap()).collect()
}

#[test]
fn worker_strides_interleave_back_into_the_in_process_stream() {
    let (e, _) = engine(2_000);
    let base = DataLoaderConfig {
        batch_size: 96,
        importance_sampling: true,
        generate_samples: true,
        epochs: 2,
        seed: 3,
        ..Default::default()
    };
    for skip in [0u64, 5] {
        let whole = collect(&e, &DataLoaderConfig { skip_batches: skip, ..base.clone() });
        assert_eq!(whole.len() as u64, base.batch_count(2_000) - skip);
        for workers in [2usize, 3] {
            let parts: Vec<Vec<TrainingBatch>> = (0..workers)
                .map(|w| {
                    collect(
                        &e,
                        &DataLoaderConfig {
                            skip_batches: skip,
                            batch_stride: workers,
                            batch_offset: w,
                            ..base.clone()
                        },
                    )
                })
                .collect();
            // The DataLoader's round-robin over its workers.
            let mut merged = Vec::new();
            for i in 0.. {
                let Some(b) = parts[i % workers].get(i / workers) else { break };
                merged.push(b.clone());
            }
            assert_eq!(merged.len(), whole.len(), "skip {skip}, {workers} workers");
            assert!(merged == whole, "skip {skip}, {workers} workers: another order or other rows");
        }
    }
}

#[test]
fn start_epoch_gives_that_epochs_order_and_batch_count_is_exact() {
    let (e, _) = engine(1_000);
    let three = collect(&e, &DataLoaderConfig { batch_size: 100, epochs: 3, seed: 9, ..Default::default() });
    let third = collect(&e, &DataLoaderConfig { batch_size: 100, start_epoch: 2, seed: 9, ..Default::default() });
    assert_eq!(third, three[20..]);
    assert!(third.iter().all(|b| b.epoch == 2));
    assert_ne!(three[0].ids, three[10].ids, "epochs differ in order");
    for (batch_size, drop_last, rank, world_size) in
        [(128, false, 0, 1), (128, true, 0, 1), (70, false, 1, 3), (70, true, 2, 3)]
    {
        let cfg = DataLoaderConfig { batch_size, drop_last, rank, world_size, epochs: 2, ..Default::default() };
        assert_eq!(collect(&e, &cfg).len() as u64, cfg.batch_count(1_000), "{cfg:?}");
    }
    let bad = DataLoaderConfig { batch_stride: 2, batch_offset: 2, ..Default::default() };
    assert!(matches!(e.export_to_dataloader(&bad), Err(m2m::Error::Config { field: "batch_offset", .. })));
}
