//! The training science through the product: the generated rows a user gets stay in their seeds'
//! neighbourhoods, training feedback steers the next epoch (and survives inserts, deletes, rebuilds and
//! reopening), and the routed energy's truncation at learned kappa is measured.

use m2m::{DataLoaderConfig, Error, LakeReader, M2m, M2mConfig, TrainingBatch, create_m2m, digits_on_sphere};

/// The README's shape at a test's size: digits projected to S^639.
fn engine_640(rows: usize) -> (M2m, Vec<u8>) {
    let d = digits_on_sphere(&m2m::DigitsConfig { rows, queries: 0, ..Default::default() }).unwrap();
    let mut engine = create_m2m(M2mConfig::default()).unwrap();
    engine.add_splats(&d.base).unwrap();
    engine.build_index().unwrap();
    (engine, d.base_labels)
}

/// The generated rows of `batches` with their seeds.
fn generated(batches: &[TrainingBatch], dim: usize) -> (Vec<u64>, Vec<f32>) {
    let (mut seeds, mut rows) = (Vec::new(), Vec::new());
    for b in batches {
        for i in (0..b.len()).filter(|&i| b.generated[i]) {
            seeds.push(b.ids[i]);
            rows.extend_from_slice(&b.mu[i * dim..(i + 1) * dim]);
        }
    }
    (seeds, rows)
}

#[test]
fn generated_rows_stay_in_their_seeds_neighbourhood_at_the_defaults() {
    // Targets of the defaults: at least 90% of generated rows inside their seed's band of real
    // neighbours (1st to 16th), label agreement of their nearest real row within 5 points of the real
    // rows' own 1-NN agreement, no copy of a real row. The same run with the temperature applied
    // literally in 640 dimensions (no scaling to the dimension kappa was fitted in: T = 1 / ((p - 1) /
    // 639)) or routed from the clusters' far members fails them, so the test can fail.
    let (engine, labels) = engine_640(3_000);
    let dim = engine.config().dim;
    let label = |id: u64| labels.get(id as usize).map(|&l| u32::from(l));
    let run = |cfg: &DataLoaderConfig| {
        let batches: Vec<TrainingBatch> =
            engine.export_to_dataloader(cfg).unwrap().take(2).map(|b| b.unwrap()).collect();
        let (seeds, rows) = generated(&batches, dim);
        assert_eq!(seeds.len(), 512);
        // Generated rows carry their seed's id, kappa, alpha and weight right after the real rows.
        let b = &batches[0];
        assert_eq!(b.ids[..256], b.ids[256..]);
        assert_eq!(b.kappa[..256], b.kappa[256..]);
        engine.fidelity(&seeds, &rows, Some(&label)).unwrap()
    };
    let cfg = DataLoaderConfig { batch_size: 256, generate_samples: true, seed: 3, ..Default::default() };
    let f = run(&cfg);
    let real = f.real_label_agreement.unwrap();
    assert!(f.in_band >= 0.9, "{f:?}");
    assert!(f.label_agreement.unwrap() >= real - 0.05, "{f:?}");
    assert_eq!(f.copies, 0, "{f:?}");
    assert!(f.max_cos_to_real < 0.9999, "{f:?}");

    let p = engine.kappa_fit().unwrap().sphere_dimension;
    let literal = DataLoaderConfig { temperature: Some((639.0 / (p - 1.0)) as f32), ..cfg.clone() };
    let wrong = run(&literal);
    assert!(wrong.in_band < 0.5 && wrong.mean_cos_to_seed < f.mean_cos_to_seed - 0.2, "{wrong:?} vs {f:?}");
}

#[test]
fn fidelity_holds_where_the_fit_sees_many_dimensions_and_the_clip_share_follows_the_input() {
    // 6,000 digits are about four noisy copies of each image: a row's two nearest neighbours are
    // copies, and the TwoNN dimension jumps from ~2.7 (3,000 rows) to ~42, fitted kappa to ~150-900
    // (10,000 rows: p ~ 60, kappa ~240-1,900). With kappa clipped at an absolute 50 (the old bound)
    // every splat clipped and generated rows fell out of their band (measured: 0% in band, cosine
    // 0.79 to the seed); with kappa unclipped but the step not scaled to it, 2 kappa dt ~ 3.4 per step
    // and they fell out too (2.5% in band). Both are run here: the unscaled step must fail the targets
    // the defaults meet, the old clip must show in the clipped share (its rows are now brought back
    // into their band by the per-seed temperature), so the test catches dropping either.
    let (engine, labels) = engine_640(6_000);
    let dim = engine.config().dim;
    let fit = engine.kappa_fit().unwrap();
    assert!(fit.sphere_dimension > 10.0, "{fit:?}");
    assert_eq!(engine.stats().kappa_clipped, Some(0.0), "{fit:?}");
    let label = |id: u64| labels.get(id as usize).map(|&l| u32::from(l));
    let measure = |engine: &M2m, cfg: &DataLoaderConfig| {
        let batches: Vec<TrainingBatch> =
            engine.export_to_dataloader(cfg).unwrap().take(2).map(|b| b.unwrap()).collect();
        let (seeds, rows) = generated(&batches, dim);
        engine.fidelity(&seeds, &rows, Some(&label)).unwrap()
    };
    let cfg = DataLoaderConfig { batch_size: 256, generate_samples: true, seed: 5, ..Default::default() };
    let f = measure(&engine, &cfg);
    assert!(f.in_band >= 0.9, "{f:?}");
    assert!(f.label_agreement.unwrap() >= f.real_label_agreement.unwrap() - 0.05, "{f:?}");
    assert_eq!(f.copies, 0, "{f:?}");

    // The step applied literally (undoing the scaling by init_kappa / mean kappa).
    let mean = f64::from(engine.stats().kappa_mean);
    let default_step = DataLoaderConfig::default().step_size.unwrap();
    let literal = DataLoaderConfig { step_size: Some((default_step * mean as f32 / 10.0).min(1.0)), ..cfg.clone() };
    let wrong = measure(&engine, &literal);
    assert!(wrong.in_band < 0.5, "{wrong:?} vs {f:?}");

    // The old absolute clip at 50: the clipped share follows the input (all of these splats).
    let d = digits_on_sphere(&m2m::DigitsConfig { rows: 6_000, queries: 0, ..Default::default() }).unwrap();
    let config = M2mConfig { max_kappa: (50.0 / (fit.sphere_dimension - 1.0)) as f32, ..M2mConfig::default() };
    let mut clipped = create_m2m(config).unwrap();
    clipped.add_splats(&d.base).unwrap();
    clipped.build_index().unwrap();
    assert_eq!(clipped.stats().kappa_clipped, Some(1.0));
    // The per-seed temperature (`SeededRunLength::TemperatureToBandMiddle`, within 16x) now absorbs
    // most of the broad kernels (before the calibration: 0% in band, cosine 0.79): the clip is caught
    // by the clipped share above, at 0% with the defaults. Bound 0.85, not the defaults' 0.9: with the
    // lake's 8 steps of 0.04 the coarser step spreads chains on these too-broad kernels wider around
    // their calibrated mean (measured 89.5% in band, cosine 0.958; 20 steps of 0.016 gave 95.9%,
    // 0.960, on the same engine); dropping the calibration still fails it by far.
    let absorbed = measure(&clipped, &cfg);
    assert!(absorbed.in_band >= 0.85, "{absorbed:?} vs {f:?}");
}

#[test]
fn the_routed_energy_truncation_is_measured_at_learned_kappa() {
    // The dropped share of the mixture sum_i alpha_i exp(-kappa_i |x - mu_i|^2) at learned kappa, where
    // chains go (the generated rows), for the lake's routing (the seed and its 16 neighbours) and for
    // `energy`'s (16 clusters, up to 1,024 splats), against the exact sum over all 3,000 splats. On
    // the digits most of the mass is far: every same-digit row sits at cosine ~0.9 and hundreds of
    // small terms add up (measured: ~0.75 of the mass dropped by the 17-splat routing). The lake routes
    // by the seed's neighbourhood on purpose (the gradient of the dropped terms pulls chains towards
    // the class mean, away from the seed's band). Checked: shares in [0, 1], and the wider routing
    // drops less (a share computed with the wrong sign, or against the wrong sum, fails one of them).
    let (engine, _) = engine_640(3_000);
    let dim = engine.config().dim;
    let cfg = DataLoaderConfig { batch_size: 64, generate_samples: true, seed: 9, ..Default::default() };
    let batch = engine.export_to_dataloader(&cfg).unwrap().next().unwrap().unwrap();
    let (seeds, rows) = generated(std::slice::from_ref(&batch), dim);
    let lake = engine.routing_truncation(&rows, Some(&seeds)).unwrap();
    assert!(lake.iter().all(|v| (0.0..=1.0).contains(v)), "{lake:?}");
    // The exact energy from every splat (retrieved with its kappa and alpha), and `energy`'s routing.
    let mut mu = Vec::new();
    let (mut kappa, mut alpha) = (Vec::new(), Vec::new());
    for h in engine.retrieve(&rows[..dim], 3_000, m2m::Lod::Exact).unwrap() {
        let v = engine.vector_of(h.id).unwrap();
        let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        mu.extend(v.iter().map(|a| a / n));
        kappa.push(h.kappa);
        alpha.push(h.alpha);
    }
    assert_eq!(kappa.len(), 3_000);
    let all = m2m::soc::Splats::new(dim, &mu, &kappa, &alpha).unwrap();
    let mut wide = Vec::new();
    for x in rows.chunks_exact(dim).take(16) {
        let exact = m2m::soc::energy::energy(x, &all).unwrap();
        wide.push(1.0 - (exact - engine.energy(x).unwrap()).exp());
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (narrow, wide) = (median(&lake[..16]), median(&wide));
    assert!(wide < narrow, "1,024 splats drop {wide}, 17 drop {narrow}");
    assert!(narrow > 0.3 && narrow < 0.95, "17-splat routing drops {narrow} of the mass");
}

/// The share of `rows` among the importance draws of epoch `epoch`.
fn share(engine: &M2m, epoch: u64, rows: &dyn Fn(u64) -> bool) -> f64 {
    let cfg = DataLoaderConfig {
        batch_size: 500,
        importance_sampling: true,
        seed: 1,
        start_epoch: epoch,
        ..Default::default()
    };
    let ids: Vec<u64> = engine.export_to_dataloader(&cfg).unwrap().flat_map(|b| b.unwrap().ids).collect();
    ids.iter().filter(|&&id| rows(id)).count() as f64 / ids.len() as f64
}

#[test]
fn feedback_steers_the_next_epoch_and_survives_changes_and_reopening() {
    let d = digits_on_sphere(&m2m::DigitsConfig { rows: 2_000, queries: 0, dim: 64, ..Default::default() }).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut engine = create_m2m(M2mConfig { durable: false, ..M2mConfig::default().dim(64).data_dir(&path) }).unwrap();
    engine.add_splats(&d.base).unwrap();
    engine.build_index().unwrap();
    let labels = d.base_labels.clone();
    let is_three = |id: u64| labels.get(id as usize) == Some(&3);
    let before = share(&engine, 0, &is_three);
    let flat = engine.weight_report().unwrap();

    // Three epochs of a training loop whose model gets the threes wrong.
    for epoch in 0..3 {
        let cfg =
            DataLoaderConfig { batch_size: 200, importance_sampling: true, start_epoch: epoch, ..Default::default() };
        let mut loader = engine.export_to_dataloader(&cfg).unwrap();
        let mut batches = Vec::new();
        for b in loader.by_ref() {
            batches.push(b.unwrap());
        }
        for b in &batches {
            let losses: Vec<f32> = b.ids.iter().map(|&id| if is_three(id) { 3.0 } else { 0.1 }).collect();
            // Half through the loader, half through the engine: the same pile.
            if b.epoch % 2 == 0 { loader.feedback(&b.ids, &losses) } else { engine.feedback(&b.ids, &losses) }.unwrap();
        }
        engine.tick().unwrap();
    }
    let after = share(&engine, 3, &is_three);
    assert!(after > 1.5 * before, "share of threes: {before} before feedback, {after} after");
    let steered = engine.weight_report().unwrap();
    // The weights spread further than kappa alone spreads them (kappa^1 sets each splat's share within
    // its site; since kappa's bounds scale with the fit's dimension it is rarely clipped, and its
    // spread already gives max/min ~5 here, measured; feedback takes it to ~6).
    assert!(steered.max / steered.min > 1.2 * flat.max / flat.min, "{flat:?} -> {steered:?}");
    assert!(steered.ess_share < flat.ess_share && steered.ess_share > 0.0, "{flat:?} -> {steered:?}");

    // The plan is a function of (seed, epoch, saved state): the same after reopening, and in a
    // read-only engine (what DataLoader workers open).
    // (A reopened engine's unit vectors are renormalised from the stored ones and may differ in the
    // last bit, so the plan is compared by ids and weights.)
    let plan = |e: &M2m| -> Vec<(Vec<u64>, Vec<f32>)> {
        let cfg = DataLoaderConfig { batch_size: 300, importance_sampling: true, start_epoch: 3, ..Default::default() };
        e.export_to_dataloader(&cfg).unwrap().map(|b| b.unwrap()).map(|b| (b.ids, b.weights)).collect()
    };
    let here = plan(&engine);
    let reader = M2m::open_read_only(&path).unwrap();
    assert_eq!(plan(&reader), here, "a worker's plan");
    drop(reader);
    drop(engine);
    let mut engine = M2m::open(&path).unwrap();
    assert_eq!(plan(&engine), here, "a resumed run's plan");

    // Inserts and deletes keep the pile (the sites of the rows stay); a rebuild carries it over.
    engine.add_splats(&d.base[..20 * 64]).unwrap();
    engine.delete(&[5, 6, 7]).unwrap();
    let kept = share(&engine, 3, &is_three);
    assert!(kept > 1.5 * before, "after inserts and deletes: {kept} vs {before}");
    engine.build_index().unwrap();
    let rebuilt = share(&engine, 3, &is_three);
    assert!(rebuilt > 1.3 * before, "after a rebuild: {rebuilt} vs {before}");

    // Bad feedback is refused; a lake reader's loader has no controller.
    assert!(matches!(engine.feedback(&[1, 2], &[1.0]), Err(Error::Config { .. })));
    assert!(matches!(engine.feedback(&[1], &[f32::NAN]), Err(Error::Soc(_))));
    engine.flush().unwrap();
    drop(engine);
    let lake = LakeReader::open(&path).unwrap();
    let loader = lake.export_to_dataloader(&DataLoaderConfig::default()).unwrap();
    assert!(matches!(loader.feedback(&[1], &[1.0]), Err(Error::NoIndex { .. })));
}
