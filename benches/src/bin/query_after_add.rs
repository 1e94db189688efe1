//! The work of one LOD 2 query after a change, counted in instructions rather than seconds (issue 18:
//! "single-query LOD 2 latency after an add equals that before it"), for a machine whose other cores are
//! busy: run under `valgrind --tool=callgrind --toggle-collect='*M2m*retrieve*'`, once per mode, and
//! compare the instruction totals (each mode runs the same 200 queries of the same engine):
//!
//! * `steady`: nothing changed since the build;
//! * `after-add`: one row added before each query;
//! * `after-add-elsewhere`: the same add into another engine (the control: the setup's work without a
//!   change to the queried engine);
//! * `after-delete`: one row added and deleted again before each query.
//!
//! Building the index under valgrind takes long, so the engine is stored once, natively:
//! `query-after-add prepare DIR` builds it in the data directory DIR; then
//! `query-after-add MODE DIR` opens it (with `--no-sync` durability: the instructions counted are the
//! query's) and runs the queries. It prints the answers' checksum.

#![allow(clippy::print_stdout, reason = "a measurement tool reports on its terminal")]

use anyhow::{Result, bail};
use m2m::{DigitsConfig, Lod, M2m, M2mConfig, digits_on_sphere};

const DIM: usize = 384;
const ROWS: usize = 20_000;
const QUERIES: usize = 200;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(mode), Some(dir)) = (args.next(), args.next()) else {
        bail!("usage: query-after-add prepare|steady|after-add|after-add-elsewhere|after-delete DIR");
    };
    if !["prepare", "steady", "after-add", "after-add-elsewhere", "after-delete"].contains(&mode.as_str()) {
        bail!("unknown mode {mode:?}: prepare|steady|after-add|after-add-elsewhere|after-delete");
    }
    let d = digits_on_sphere(&DigitsConfig { rows: ROWS + QUERIES, queries: QUERIES, dim: DIM, ..Default::default() })?;
    if mode == "prepare" {
        let mut engine = M2m::create(M2mConfig::default().dim(DIM).data_dir(&dir))?;
        engine.add_splats(&d.base[..ROWS * DIM])?;
        engine.build_index()?;
        engine.flush()?;
        println!("prepared {ROWS} rows in {dir}");
        return Ok(());
    }
    let mut engine = M2m::open_with(&dir, false)?;
    let mut scratch = M2m::create(M2mConfig::default().dim(DIM))?;
    let mut checksum = 0u64;
    for i in 0..QUERIES {
        let row = &d.base[(ROWS + i) * DIM..(ROWS + i + 1) * DIM];
        match mode.as_str() {
            "after-add" => {
                engine.add_splats(row)?;
            }
            "after-add-elsewhere" => {
                scratch.add_splats(row)?;
            }
            "after-delete" => {
                let ids = engine.add_splats(row)?;
                engine.delete(&ids)?;
            }
            _ => {}
        }
        let hits = engine.retrieve(&d.queries[i * DIM..(i + 1) * DIM], 10, Lod::Rerank)?;
        checksum = hits.iter().fold(checksum, |c, h| c.wrapping_mul(31).wrapping_add(h.id));
    }
    println!("{mode}: {QUERIES} queries, answer checksum {checksum:016x}");
    Ok(())
}
