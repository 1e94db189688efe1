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
//! `query-after-add MODE` prints the answers' checksum so that the modes can be seen to answer alike.

#![allow(clippy::print_stdout, reason = "a measurement tool reports on its terminal")]

use anyhow::{Result, bail};
use m2m::{DigitsConfig, Lod, M2m, M2mConfig, digits_on_sphere};

const DIM: usize = 384;
const ROWS: usize = 20_000;
const QUERIES: usize = 200;

fn main() -> Result<()> {
    let mode = std::env::args().nth(1).unwrap_or_default();
    if !["steady", "after-add", "after-add-elsewhere", "after-delete"].contains(&mode.as_str()) {
        bail!("usage: query-after-add steady|after-add|after-add-elsewhere|after-delete");
    }
    let d = digits_on_sphere(&DigitsConfig { rows: ROWS + QUERIES, queries: QUERIES, dim: DIM, ..Default::default() })?;
    let mut engine = M2m::create(M2mConfig::default().dim(DIM))?;
    engine.add_splats(&d.base[..ROWS * DIM])?;
    engine.build_index()?;
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
