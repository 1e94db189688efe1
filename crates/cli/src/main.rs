//! `m2m`: the command line of the M2M engine.
//!
//! ```text
//! m2m ingest DB FILE...        .fvecs/.npy streamed in chunks; resumes after an interruption [--metric M] [--no-sync]
//!            [--attributes FILE.jsonl|FILE.parquet]
//! m2m upsert DB FILE --rows R  add or replace splats by id (R: ids and attributes, JSON lines or Parquet)
//! m2m build DB                 the index (cluster counts overridable), kappa and alpha learned
//! m2m query DB --file Q | --row N [--k 10] [--lod 0-3|centroids|codes|rerank|exact] [--nprobe N] [--rerank N]
//!            [--filter JSON]
//! m2m stream DB [--batch-size 256] [--importance] [--generate] [--epochs 1] [--out batches.npy]
//!            [--steps 20] [--temperature T] [--step-size DT] [--dynamics overdamped|underdamped]
//! m2m info DB                  segments, sizes, index shape, kappa statistics
//! m2m verify DB                every checksum of every file, the blobs' contents; changes nothing
//! m2m repair DB                cuts a damaged log tail and drops a damaged index, saying what it drops
//! m2m bench --base B --queries Q [--k 10]
//! ```
//!
//! Tables for people, `--json` for scripts, `-v` / `-vv` for logs. Errors are one line naming the file or
//! field, with exit code 1 (2 for a bad flag, 130 after Ctrl-C).

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line tool reports to its terminal")]

mod attributes;
mod commands;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "m2m", version, about = "M2M: vector search engine and training data lake over Gaussian splats")]
pub(crate) struct Cli {
    /// Machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Log more (repeat for more detail).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Ingest vector files (.fvecs or .npy) into a database, created when missing.
    Ingest {
        /// The database directory.
        db: PathBuf,
        /// Vector files, ingested in order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Rows per acknowledged chunk.
        #[arg(long, default_value_t = 10_000)]
        chunk: usize,
        /// Acknowledge this run's chunks once the OS has them, without fsync (faster; a power loss may lose
        /// the last ones). Applies to this run only; nothing is stored.
        #[arg(long)]
        no_sync: bool,
        /// Metric of a new database: cosine, ip or l2 (any case). An existing database keeps its own; a
        /// different one given here is an error.
        #[arg(long, value_parser = parse_metric)]
        metric: Option<m2m::Metric>,
        /// Attributes of the splats: JSON lines, one object per splat with its integer "id" and its
        /// fields (integer, float, bool, string, array of strings as tags, object as a JSON payload),
        /// set after the vectors are in. The schema is inferred from the file when the database has none
        /// (an integer field named "label" is the label). A line sets its splat's whole row: a field it
        /// does not name becomes null. Or a Parquet file (told by its first bytes), one row per splat with
        /// an integer "id" column: integers, floats, booleans, strings, lists of strings (tags), binary
        /// (a payload's bytes), structs (a JSON payload), timestamps (microseconds). The file is checked
        /// before any vector is written, ids included: an id that is neither a splat of the database nor
        /// among the ids this ingest adds is an error.
        #[arg(long)]
        attributes: Option<PathBuf>,
    },
    /// Build the index (and learn kappa and alpha).
    Build {
        /// The database directory.
        db: PathBuf,
        /// Number of fine clusters (default: chosen from the number of splats).
        #[arg(long)]
        n_fine: Option<usize>,
        /// Number of coarse clusters.
        #[arg(long)]
        n_coarse: Option<usize>,
    },
    /// Retrieve the nearest splats of query vectors.
    Query {
        /// The database directory.
        db: PathBuf,
        /// Query vectors (.fvecs or .npy).
        #[arg(long, conflicts_with = "row", required_unless_present = "row")]
        file: Option<PathBuf>,
        /// Use the stored splat with this id as the query.
        #[arg(long)]
        row: Option<u64>,
        /// Neighbours per query.
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// Level of detail, by number or name: 0 or centroids, 1 or codes, 2 or rerank, 3 or exact.
        #[arg(long, default_value = "2", value_parser = parse_lod)]
        lod: m2m::Lod,
        /// Fine clusters scored per query at LOD 1 and 2, at least 1 (default: the value calibrated at
        /// build time).
        #[arg(long, value_parser = at_least_one)]
        nprobe: Option<usize>,
        /// Candidates re-ranked exactly at LOD 2, at least 1 (default: the calibrated depth, scaled by
        /// k / 10).
        #[arg(long, value_parser = at_least_one)]
        rerank: Option<usize>,
        /// Only splats whose attributes match this filter (JSON), e.g.
        /// '{"and": [{"eq": {"field": "label", "value": 3}}, {"range": {"field": "t", "gte": 10}}]}'.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Stream training batches and report the throughput.
    Stream {
        /// The database directory.
        db: PathBuf,
        /// Rows per batch.
        #[arg(long, default_value_t = 256)]
        batch_size: usize,
        /// Sample by importance (the SOC controller).
        #[arg(long)]
        importance: bool,
        /// Add one Langevin sample per row.
        #[arg(long)]
        generate: bool,
        /// Epochs.
        #[arg(long, default_value_t = 1)]
        epochs: u64,
        /// Seed of the order and the draws.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write every row streamed to this .npy (or .fvecs) file.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace the --out file when it exists (refused otherwise).
        #[arg(long)]
        force: bool,
        /// Langevin steps per generated row (default: the data lake's, 8).
        #[arg(long, default_value_t = m2m::DataLoaderConfig::default().generate_steps)]
        steps: usize,
        /// Temperature of generated rows, relative to the model (default: the engine's).
        #[arg(long)]
        temperature: Option<f32>,
        /// Langevin step size (default: the data lake's, 0.04).
        #[arg(long)]
        step_size: Option<f32>,
        /// Langevin dynamics (default: the engine's).
        #[arg(long, value_parser = ["overdamped", "underdamped"])]
        dynamics: Option<String>,
    },
    /// Describe a database: splats, segments, sizes, index, kappa.
    Info {
        /// The database directory.
        db: PathBuf,
    },
    /// Check every checksum of every file of a database and the contents of its blobs; changes nothing
    /// (exit 1 when anything is wrong: then see `m2m repair`).
    Verify {
        /// The database directory.
        db: PathBuf,
    },
    /// Cut a torn or damaged log tail and drop a damaged index blob, reporting what is dropped.
    Repair {
        /// The database directory.
        db: PathBuf,
    },
    /// Add or replace splats by id: each row of ROWS (JSON lines or Parquet, as `ingest --attributes`
    /// reads them) gives the id of the vector on the same row of VECTORS, and that splat's attributes.
    /// An id in the database is replaced, vector and attributes (a field a row leaves out becomes
    /// null); a new id is added. All rows or none: the whole file is one atomic change.
    Upsert {
        /// The database directory (it must exist).
        db: PathBuf,
        /// The vectors: .npy or .fvecs, one row per row of ROWS.
        vectors: PathBuf,
        /// The ids and attributes, one row per vector, in the same order.
        #[arg(long)]
        rows: PathBuf,
    },
    /// Merge the segments without deleted rows and store the index as it is now (with the rows added
    /// and deleted since its build); afterwards deleted ids may be added again.
    Compact {
        /// The database directory.
        db: PathBuf,
    },
    /// The retrieval benchmark on vector files: recall against exact search and QPS at each level.
    Bench {
        /// Base vectors.
        #[arg(long)]
        base: PathBuf,
        /// Query vectors.
        #[arg(long)]
        queries: PathBuf,
        /// Neighbours per query.
        #[arg(long, default_value_t = 10)]
        k: usize,
    },
}

fn parse_lod(s: &str) -> Result<m2m::Lod, String> {
    s.parse().map_err(|e: m2m::index::Error| e.to_string())
}

/// A count of at least 1 (`--nprobe`, `--rerank`): leaving the option out asks for the calibrated
/// default, as `None` does in Python; 0 is refused there and here.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (leave the option out for the calibrated default)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

fn parse_metric(s: &str) -> Result<m2m::Metric, String> {
    s.parse().map_err(|_| format!("{s:?}: cosine, ip or l2 (any case)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match commands::run(&cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: the error and those of its causes that add something (the layers' errors already
            // name their file and include their OS error).
            let mut line = String::new();
            for cause in e.chain().map(|c| c.to_string()) {
                if line.contains(&cause) {
                    continue;
                }
                if cause.contains(&line) {
                    line = cause;
                } else {
                    if !line.is_empty() {
                        line.push_str(": ");
                    }
                    line.push_str(&cause);
                }
            }
            eprintln!("error: {line}");
            ExitCode::from(1)
        }
    }
}
