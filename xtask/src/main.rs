//! `cargo xtask`: the jobs a person would otherwise type.
//!
//! * `cargo xtask ci`: what CI runs (and `.ci/run` calls): installs missing toolchain components, then
//!   checks formatting, runs clippy with warnings denied, runs every workspace test, and runs the README's
//!   main command, builds the documentation with rustdoc warnings denied, then the Vulkan backend: it installs the Debian packages it needs when missing (as
//!   root; otherwise it names them), merges shaderc's static archives (see `gpu.rs`), validates the
//!   shaders, and runs clippy and the tests of m2m-gpu with its `vulkan` feature on Mesa's lavapipe.
//!   Then the Python bindings (`crates/py`): Debian's python3-venv, python3-numpy and python3-torch
//!   when missing, a virtual environment in `target/py-venv` that sees them, maturin and pytest from
//!   PyPI, the wheel built and installed, its pytest suite and `mypy --strict` over the package. Then
//!   `cargo xtask package` and `cargo xtask portability` (below).
//! * `cargo xtask shaders`: compiles every shader of `shaders/` with glslangValidator and validates
//!   the SPIR-V with spirv-val.
//! * `cargo xtask fuzz [SECONDS]`: runs every cargo-fuzz target of `crates/tier/fuzz` (the log, segment
//!   and manifest decoders, and the blobs' framing and payloads) for SECONDS each (default 20), installing cargo-fuzz when it is missing; CI
//!   runs it for 15 seconds per target. cargo-fuzz's flags (`-Z sanitizer=address`) need a nightly
//!   compiler, and this machine has only stable: `RUSTC_BOOTSTRAP=1` lets stable accept them.
//! * `cargo xtask torture [--minutes N] [--seed S] [--only KIND]`: the hostile test (`torture.rs`): SIGKILLs of ingest,
//!   flush, compaction and build at random moments, damage and forgeries of every file kind, foreign
//!   files, a full disk as root; CI runs it for 3 minutes.
//! * `cargo xtask bench [tier|splat|kernels|soc|engine] [ARGS...]`: runs the criterion benchmarks (all, or one by
//!   name); ARGS go to criterion (for example a benchmark name filter). Without arguments it then runs
//!   `cargo xtask bench report`, which regenerates `BENCHMARKS.md` and `BENCHMARKS-recall-qps.svg` from an
//!   end-to-end run of the engine. `cargo xtask bench gpu` times each GPU kernel against its CPU twin.
//!   `cargo xtask bench train [--seeds 5] [--lr-per-method] [--minority 3,8,9] [--diagnose [--low-data]]`
//!   trains classifiers on the built-in digits through the data lake (uniform against loss-driven SOC
//!   sampling; no augmentation against Langevin augmentation); `--diagnose` traces per-class losses and
//!   the sampler's rate for the rare digits instead of the tables.
//!   `cargo xtask bench lake [--configs STEPSxDT,...]` measures the data lake with Langevin: rows per
//!   CPU second in the first and later epochs, and the generated rows' fidelity (bench_lake.rs).
//! * `cargo xtask gpu-devrun [DIR]`: fills the folder a lent GPU machine's call carries (see
//!   `devrun.rs` and `scripts/device-gpu.sh`).
//! * `cargo xtask package`: `cargo package --no-verify` for every published crate, and a check that each
//!   package carries both licence files and the README (in CI).
//! * `cargo xtask portability [--strict]`: `cargo check --workspace --target T` for aarch64 Linux,
//!   x86-64 macOS and x86-64 Windows (GNU), warnings denied; a missing standard library is asked of
//!   rustup (`rustup target add T`) and one it cannot get is named (with `--strict`, an error). In CI, without `--strict`. With
//!   `--run-aarch64` (not in CI) it then runs m2m-index's tests for aarch64 under qemu-user, once on a
//!   CPU model with the dot-product extension and once on one without, so both NEON code paths run.
//! * `cargo xtask msrv`: `cargo +RUST_VERSION check --workspace --locked` (libraries and binaries) with
//!   the root manifest's rust-version, rustup installing that toolchain when missing (a CI step).
//! * `cargo xtask python [--matrix]`: the wheel and its pytest suite (and mypy --strict over the
//!   package); `--matrix` repeats the suite with the oldest and the newest numpy and torch the wheel
//!   supports (not in CI: it downloads about 7 GB of torch and CUDA wheels).
//! * `cargo xtask bench filter [--nq 1000] [--shares 0.5,0.1,0.01,0.001] [--json OUT] [--export DIR]`:
//!   filtered search on minilm70k with synthetic attributes (random rows and k-means labels) against the
//!   exact filtered truth, pinned to one core (`M2M_BENCH_CPU`, default 1) with `taskset`; `--export`
//!   writes the filters and truth for `benches/peers/filtered.py` (hnswlib and LanceDB).
//! * `cargo xtask bench search --base B --queries Q [--truth T] [--metric cosine|ip|l2] [--k 10]
//!   [--threads 1] [--isa scalar|avx2|avx512|neon] [--json OUT]`: the retrieval sweep of m2m-index (`--help` lists
//!   every option; the ISA that ran is printed).
//! * `cargo xtask bench tiered [--base B --queries Q --truth T] [--nq 10000] [--cold]`: a stored engine's
//!   resident memory (after open and after the queries), open, ingest and build time, and LOD 2 recall@10
//!   and 1-thread QPS with the warm budget holding every vector and 10% of them, each in its own process;
//!   `--cold` adds the 10% regime in a memory cgroup (root) after the page cache is dropped.

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line tool reports to its terminal")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

mod devrun;
mod gpu;
mod python;
mod release;
mod torture;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    std::env::set_current_dir(&root).with_context(|| format!("cannot enter {}", root.display()))?;
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => bench(&args[1..]),
        Some("shaders") => {
            gpu::ensure_packages()?;
            gpu::check_shaders(&root)
        }
        Some("python") if args.get(1).map(String::as_str) == Some("--matrix") => python::matrix(),
        Some("python") => python::test().map(|c| println!("tests: {} passed, {} failed", c.passed, c.failed)),
        Some("gpu-devrun") => {
            let to = args.get(1).map_or_else(|| root.join(".devrun"), PathBuf::from);
            devrun::fill(&root, &to)
        }
        Some("package") => release::package(),
        Some("portability") => {
            let flag = |f: &str| args[1..].iter().any(|a| a == f);
            release::portability(flag("--strict"))?;
            if flag("--run-aarch64") { release::run_aarch64_tests() } else { Ok(()) }
        }
        Some("msrv") => release::msrv(),
        Some("fuzz") => fuzz(args.get(1).map(|s| s.parse()).transpose().context("SECONDS must be a number")?),
        Some("torture") => torture::torture(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            println!(
                "usage: cargo xtask <ci | shaders | python [--matrix] | package | portability [--strict] [--run-aarch64] | msrv | fuzz [SECONDS] | torture [--minutes N] [--seed S] [--only KIND] | gpu-devrun [DIR] | bench [criterion args...] | bench search --base B --queries Q ... | bench tiered [--cold]>"
            );
            Ok(())
        }
        Some(other) => bail!(
            "unknown task `{other}`; expected `ci`, `shaders`, `python`, `package`, `portability`, `msrv`, `fuzz`, `torture`, `gpu-devrun` or `bench`"
        ),
    }
}

fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Runs a command, echoing it, and fails with its exit status.
fn run(program: &str, args: &[&str]) -> Result<()> {
    println!("\n==> {program} {}", args.join(" "));
    let start = Instant::now();
    let status = Command::new(program).args(args).status().with_context(|| format!("cannot start `{program}`"))?;
    println!("==> {program} {} took {:.1} s", args.first().copied().unwrap_or(""), start.elapsed().as_secs_f64());
    if !status.success() {
        bail!("`{program} {}` failed with {status}", args.join(" "));
    }
    Ok(())
}

/// Whether `cargo <sub> --version` works, i.e. the toolchain component is installed.
fn has_cargo_subcommand(sub: &str) -> bool {
    Command::new("cargo").args([sub, "--version"]).output().is_ok_and(|o| o.status.success())
}

/// Installs rustfmt and clippy when a fresh toolchain lacks them.
fn ensure_components() -> Result<()> {
    let missing: Vec<&str> = [("fmt", "rustfmt"), ("clippy", "clippy")]
        .into_iter()
        .filter(|(sub, _)| !has_cargo_subcommand(sub))
        .map(|(_, component)| component)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut args = vec!["component", "add"];
    args.extend(&missing);
    run("rustup", &args)
}

/// Passed and failed counts summed over the `test result:` lines of libtest.
#[derive(Default)]
struct TestCounts {
    passed: u64,
    failed: u64,
}

impl TestCounts {
    /// Adds the counts of a line such as `test result: ok. 23 passed; 0 failed; 0 ignored; ...`.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else { return };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else { continue };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                _ => {}
            }
        }
    }
}

/// Runs the workspace tests, echoing their output, and returns the summed counts.
fn run_tests(args: &[&str]) -> Result<TestCounts> {
    println!("\n==> cargo {}", args.join(" "));
    let start = Instant::now();
    let mut child = Command::new("cargo").args(args).stdout(Stdio::piped()).spawn().context("cannot start cargo")?;
    let mut counts = TestCounts::default();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("reading test output")?;
            println!("{line}");
            counts.add_line(&line);
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("==> cargo test took {:.1} s", start.elapsed().as_secs_f64());
    if !status.success() {
        println!("tests: {} passed, {} failed", counts.passed, counts.failed.max(1));
        bail!("`cargo {}` failed with {status}", args.join(" "));
    }
    Ok(counts)
}

/// Makes the Vulkan backend buildable: packages, and `SHADERC_LIB_DIR` for every cargo started later.
fn setup_gpu() -> Result<()> {
    gpu::ensure_packages()?;
    let dir = gpu::shaderc_dir(&workspace_root())?;
    // SAFETY: called from `main`'s thread before any other thread exists.
    unsafe { std::env::set_var("SHADERC_LIB_DIR", &dir) };
    Ok(())
}

/// The features that turn the Vulkan backend on, given with `--workspace` so that cargo resolves the
/// dependencies' features as for the plain workspace build plus vulkano's: the GPU lint and tests then
/// reuse the dependency tree already built instead of building a second one (with `-p` selections the
/// features of libc, serde, matrixmultiply... differed, and every crate above them was built again).
const GPU_FEATURES: [&str; 3] = ["--workspace", "--features", "m2m-gpu/vulkan,m2m/gpu,m2m-benches/gpu"];

fn ci() -> Result<()> {
    let start = Instant::now();
    ensure_components()?;
    setup_gpu()?;
    run("cargo", &["fmt", "--all", "--", "--check"])?;
    gpu::check_shaders(&workspace_root())?;
    run("cargo", &["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"])?;
    let mut clippy_gpu = vec!["clippy", "--all-targets", "--locked"];
    clippy_gpu.extend(GPU_FEATURES);
    clippy_gpu.extend(["--", "-D", "warnings"]);
    run("cargo", &clippy_gpu)?;
    // Documentation builds without a broken link or other rustdoc warning.
    // SAFETY: `main`'s thread, before any other thread exists (cargo children inherit it).
    unsafe { std::env::set_var("RUSTDOCFLAGS", "-D warnings") };
    run("cargo", &["doc", "--no-deps", "--workspace", "--locked"])?;
    let mut counts = run_tests(&["test", "--workspace", "--locked"])?;
    // On lavapipe (the tests fail if no device works): the GPU kernels against their CPU twins
    // (crates/gpu/tests) and the engine's batch retrieval on the device against its CPU path
    // (tests/gpu.rs), one build.
    let mut test_gpu = vec!["test", "--locked"];
    test_gpu.extend(GPU_FEATURES);
    test_gpu.extend(["--test", "kernels", "--test", "no_driver", "--test", "gpu"]);
    let gpu_counts = run_tests(&test_gpu)?;
    counts.passed += gpu_counts.passed;
    counts.failed += gpu_counts.failed;
    // The Python bindings: the wheel built into a virtual environment, then pytest.
    let py_counts = python::test()?;
    counts.passed += py_counts.passed;
    counts.failed += py_counts.failed;
    // Every published crate packaged as crates.io would receive it; the other platforms whose
    // standard library is installed.
    release::package()?;
    release::portability(false)?;
    // The declared minimum toolchain builds the libraries and binaries.
    release::msrv()?;
    // The README's main command, exactly as written there.
    run("cargo", &["run", "--release", "--locked", "--example", "quickstart"])?;
    fuzz(Some(15))?;
    // The hostile test: kills, damage, forgeries and foreign files for 3 minutes (longer: `cargo xtask
    // torture --minutes 30`).
    torture::torture(&["--minutes".into(), "3".into()])?;
    println!("\nci: all steps passed in {:.0} s", start.elapsed().as_secs_f64());
    // The closing line CI reads: the tests of every crate, summed.
    println!("tests: {} passed, {} failed", counts.passed, counts.failed);
    Ok(())
}

/// The fuzz targets: m2m-tier's decoders, and the blobs (framing and the facade's payloads).
const FUZZ_TARGETS: [&str; 5] = ["log", "segment", "manifest", "blobs", "sections"];
/// cargo-fuzz, pinned.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn fuzz(seconds: Option<u64>) -> Result<()> {
    if !has_cargo_subcommand("fuzz") {
        run("cargo", &["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION])?;
    }
    let seconds = seconds.unwrap_or(20).to_string();
    let max_time = format!("-max_total_time={seconds}");
    let tier = workspace_root().join("crates/tier");
    for target in FUZZ_TARGETS {
        // New inputs go to the ignored corpus folder; the committed seeds are read only.
        let corpus = format!("fuzz/corpus/{target}");
        let seeds = format!("fuzz/seeds/{target}");
        std::fs::create_dir_all(tier.join(&corpus)).with_context(|| format!("cannot create {corpus}"))?;
        let args = ["fuzz", "run", "--fuzz-dir", "fuzz", target, &corpus, &seeds, "--", &max_time];
        println!("\n==> (in crates/tier) RUSTC_BOOTSTRAP=1 cargo {}", args.join(" "));
        let start = Instant::now();
        let status = Command::new("cargo")
            .args(args)
            .current_dir(&tier)
            .env("RUSTC_BOOTSTRAP", "1")
            .status()
            .context("cannot start `cargo fuzz`")?;
        println!("==> fuzz {target} took {:.1} s", start.elapsed().as_secs_f64());
        if !status.success() {
            bail!("fuzz target `{target}` failed with {status}: see crates/tier/fuzz/artifacts/{target}");
        }
    }
    Ok(())
}

/// `cargo xtask bench filter [ARGS...]`: the filtered-search benchmark (bench_filter.rs), a release binary
/// on minilm70k unless ARGS name `--base`, pinned to one core with `taskset` where it exists (the timed
/// searches are 1-thread; the build and the truth then run on that core too).
fn bench_filter(args: &[String]) -> Result<()> {
    run("cargo", &["build", "--release", "--locked", "-p", "m2m-benches", "--bin", "bench-filter"])?;
    let bin = workspace_root().join("target/release/bench-filter");
    let bin = bin.to_string_lossy().into_owned();
    let mut cmd: Vec<String> = Vec::new();
    let pinned = Command::new("taskset").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    if pinned {
        cmd.extend(["-c".to_string(), std::env::var("M2M_BENCH_CPU").unwrap_or_else(|_| "1".into()), bin]);
    } else {
        eprintln!("taskset not found: the benchmark runs unpinned");
        cmd.push(bin);
    }
    if !args.iter().any(|a| a == "--base") {
        let data = workspace_root().join("../shared/data/minilm70k/minilm70k");
        let (base, queries) = (data.with_extension("base.fvecs"), data.with_extension("query.fvecs"));
        if !base.exists() || !queries.exists() {
            bail!("{} not found: give --base and --queries", base.display());
        }
        cmd.extend(["--base".into(), base.to_string_lossy().into_owned()]);
        cmd.extend(["--queries".into(), queries.to_string_lossy().into_owned()]);
    }
    cmd.extend(args.iter().cloned());
    let cmd_refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
    if pinned { run("taskset", &cmd_refs) } else { run(cmd_refs[0], &cmd_refs[1..]) }
}

fn bench(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) == Some("search") {
        // The retrieval benchmark: a release binary, so that its figures are those of an optimised build.
        let mut cmd = vec!["run", "--release", "--locked", "-p", "m2m-benches", "--bin", "bench-search", "--"];
        cmd.extend(args[1..].iter().map(String::as_str));
        return run("cargo", &cmd);
    }
    if args.first().map(String::as_str) == Some("tiered") {
        // Resident memory, open time and LOD 2 under warm budgets (and capped in a memory cgroup with
        // `--cold`), each regime in its own process (a release binary).
        let mut cmd = vec!["run", "--release", "--locked", "-p", "m2m-benches", "--bin", "bench-tiered", "--"];
        cmd.extend(args[1..].iter().map(String::as_str));
        return run("cargo", &cmd);
    }
    if args.first().map(String::as_str) == Some("filter") {
        return bench_filter(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("train") {
        // Downstream evidence for the data lake's training science (a release binary: minutes).
        let mut cmd = vec!["run", "--release", "--locked", "-p", "m2m-benches", "--bin", "bench-train", "--"];
        cmd.extend(args[1..].iter().map(String::as_str));
        return run("cargo", &cmd);
    }
    if args.first().map(String::as_str) == Some("lake") {
        // The data lake with Langevin: rows per CPU second (first and later epochs) and fidelity.
        let mut cmd = vec!["run", "--release", "--locked", "-p", "m2m-benches", "--bin", "bench-lake", "--"];
        cmd.extend(args[1..].iter().map(String::as_str));
        return run("cargo", &cmd);
    }
    if args.first().map(String::as_str) == Some("gpu") {
        // Each kernel on the device against its CPU twin (criterion), with the Vulkan backend built.
        setup_gpu()?;
        let mut cmd = vec!["bench", "--locked", "-p", "m2m-benches", "--features", "gpu", "--bench", "gpu"];
        if args.len() > 1 {
            cmd.push("--");
            cmd.extend(args[1..].iter().map(String::as_str));
        }
        run("cargo", &cmd)?;
        // Then the engine's retrieval on the device against the CPU (bench_gpu.rs), on minilm70k when
        // present, else on the digits.
        let mut engine = vec!["run", "--release", "--locked", "-p", "m2m-benches", "--features", "gpu"];
        engine.extend(["--bin", "bench-gpu", "--"]);
        let data = workspace_root().join("../shared/data/minilm70k/minilm70k");
        let (base, queries) = (data.with_extension("base.fvecs"), data.with_extension("query.fvecs"));
        let (base, queries) = (base.to_string_lossy().into_owned(), queries.to_string_lossy().into_owned());
        if Path::new(&base).exists() && Path::new(&queries).exists() {
            engine.extend(["--base", &base, "--queries", &queries]);
        }
        return run("cargo", &engine);
    }
    let report = ["run", "--release", "--locked", "-p", "m2m-benches", "--bin", "bench-report"];
    if args.first().map(String::as_str) == Some("report") {
        return run("cargo", &report);
    }
    let mut cmd = vec!["bench", "--locked", "-p", "m2m-benches"];
    let everything = args.is_empty();
    let mut args = args;
    if let Some(name @ ("tier" | "splat" | "kernels" | "soc" | "engine")) = args.first().map(String::as_str) {
        // One criterion benchmark by name: `cargo xtask bench tier`.
        cmd.extend(["--bench", name]);
        args = &args[1..];
    }
    if !args.is_empty() {
        cmd.push("--");
        cmd.extend(args.iter().map(String::as_str));
    }
    run("cargo", &cmd)?;
    if everything {
        // Every benchmark: the criterion ones above, then the engine report that regenerates
        // BENCHMARKS.md and its plot.
        run("cargo", &report)?;
    }
    Ok(())
}
