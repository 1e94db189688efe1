//! The facade's query path around changes (issue 18: "single-query LOD 2 latency after an add equals that
//! before it"): one LOD 2 query of an engine of 20,000 digits on S^383, timed
//!
//! * `steady`: repeated queries, nothing changed since the build;
//! * `first_after_add`: the first query after adding one row (the add, in criterion's setup, is not
//!   timed; the query is: anything the add left for the query path to do, a router or index rebuild, a
//!   lock held, shows here);
//! * `first_after_add_elsewhere`: the control: the same add into another engine before each query (the
//!   setup's cache footprint without a change to the queried engine);
//! * `first_after_delete`: the first query after adding one row and deleting it again;
//! * `steady_after_adds`: repeated queries once 2,000 rows were added after the build (routed into the
//!   index, not rebuilt).
//!
//! The queries cycle over 200 held-out digits, the same sequence in every group. Run with
//! `cargo xtask bench engine`.

use std::cell::Cell;

use criterion::{BatchSize, Criterion, criterion_group};
use m2m::{DigitsConfig, Lod, M2m, M2mConfig, digits_on_sphere};

const DIM: usize = 384;
const ROWS: usize = 20_000;
const ADDED: usize = 2_000;
const QUERIES: usize = 200;

fn query_after_changes(c: &mut Criterion) {
    let d = digits_on_sphere(&DigitsConfig {
        rows: ROWS + ADDED + 4_000,
        queries: QUERIES,
        dim: DIM,
        ..Default::default()
    })
    .expect("digits");
    let mut engine = M2m::create(M2mConfig::default().dim(DIM)).expect("engine");
    engine.add_splats(&d.base[..ROWS * DIM]).expect("add");
    engine.build_index().expect("build");
    // The rows added one at a time in `first_after_add` come from past the build's rows.
    let spare = Cell::new(ROWS + ADDED);
    let next = Cell::new(0usize);
    let query = || {
        let i = next.get();
        next.set((i + 1) % QUERIES);
        &d.queries[i * DIM..(i + 1) * DIM]
    };

    let mut g = c.benchmark_group("lod2_single_query_20000x384");
    g.bench_function("steady", |b| b.iter(|| engine.retrieve(query(), 10, Lod::Rerank).expect("retrieve")));
    g.finish();

    let mut g = c.benchmark_group("lod2_single_query_20000x384");
    g.sample_size(50);
    g.measurement_time(std::time::Duration::from_secs(3));
    let engine = std::cell::RefCell::new(engine);
    g.bench_function("first_after_add", |b| {
        b.iter_batched(
            || {
                let r = spare.get() % (ROWS + ADDED + 4_000);
                spare.set(spare.get() + 1);
                engine.borrow_mut().add_splats(&d.base[r * DIM..(r + 1) * DIM]).expect("add one");
            },
            |()| engine.borrow().retrieve(query(), 10, Lod::Rerank).expect("retrieve"),
            BatchSize::PerIteration,
        )
    });
    // The control: the same add, into another engine. What `first_after_add` pays beyond this is what
    // the add left for the query path of its own engine; what both pay is the setup's cache footprint.
    let scratch = std::cell::RefCell::new(M2m::create(M2mConfig::default().dim(DIM)).expect("scratch"));
    g.bench_function("first_after_add_elsewhere", |b| {
        b.iter_batched(
            || {
                let r = spare.get() % (ROWS + ADDED + 4_000);
                spare.set(spare.get() + 1);
                scratch.borrow_mut().add_splats(&d.base[r * DIM..(r + 1) * DIM]).expect("add one");
            },
            |()| engine.borrow().retrieve(query(), 10, Lod::Rerank).expect("retrieve"),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("first_after_delete", |b| {
        b.iter_batched(
            || {
                // One row in and out again, so the engine keeps its size however many iterations run.
                let r = spare.get() % (ROWS + ADDED + 4_000);
                spare.set(spare.get() + 1);
                let mut e = engine.borrow_mut();
                let ids = e.add_splats(&d.base[r * DIM..(r + 1) * DIM]).expect("add one");
                e.delete(&ids).expect("delete one");
            },
            |()| engine.borrow().retrieve(query(), 10, Lod::Rerank).expect("retrieve"),
            BatchSize::PerIteration,
        )
    });
    engine.borrow_mut().add_splats(&d.base[ROWS * DIM..(ROWS + ADDED) * DIM]).expect("add batch");
    g.bench_function("steady_after_adds", |b| {
        b.iter(|| engine.borrow().retrieve(query(), 10, Lod::Rerank).expect("retrieve"))
    });
    g.finish();
}

criterion_group!(benches, query_after_changes);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
