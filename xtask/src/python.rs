//! The Python bindings' test job: Debian's interpreter with its numpy and torch (PyPI's torch pulls
//! gigabytes of CUDA libraries; Debian's is CPU-only), a virtual environment that sees them, maturin,
//! pytest and mypy from PyPI (pinned), the manylinux wheel built (maturin checks its symbols against
//! the manylinux policies and tags it with the oldest this machine's glibc allows) and installed, then
//! pytest over `crates/py/tests` and `mypy --strict` over the package.
//!
//! `--matrix` (not in CI: it downloads about 7 GB, PyPI's torch wheels with their CUDA libraries) runs
//! the suite again in clean environments (no system site packages) with the oldest numpy and torch the
//! wheel declares (numpy 1.23.5, the first with wheels for this Python; torch 1.13.1, the first with
//! wheels for it) and the newest of each.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{TestCounts, gpu, run, workspace_root};

/// Debian packages and a file each installs.
const PACKAGES: [(&str, &str); 3] = [
    ("python3-venv", "/usr/lib/python3.11/ensurepip/__init__.py"),
    ("python3-numpy", "/usr/lib/python3/dist-packages/numpy/__init__.py"),
    ("python3-torch", "/usr/lib/python3/dist-packages/torch/__init__.py"),
];

/// PyPI tools, pinned.
const TOOLS: [&str; 3] = ["maturin==1.16.0", "pytest==9.2.0", "mypy==2.4.1"];

/// The environments of `--matrix`: the oldest numpy and torch the wheel declares (pyproject's floors) and
/// the newest on PyPI when this was written. torch 1.13 was built against numpy 1.x, so the oldest pair is
/// also the pair its users have.
const MATRIX: [(&str, &str, &str); 2] =
    [("oldest", "numpy==1.23.5", "torch==1.13.1"), ("newest", "numpy==2.4.6", "torch==2.15.0")];

/// Builds the wheel into `target/py-venv` and runs the pytest suite; returns its counts.
pub(crate) fn test() -> Result<TestCounts> {
    gpu::ensure_debian_packages(&PACKAGES, "the Python bindings' tests")?;
    let root = workspace_root();
    let venv = root.join("target/py-venv");
    let py = venv.join("bin/python");
    let py_s = py.to_string_lossy().into_owned();
    if !py.exists() {
        run("/usr/bin/python3", &["-m", "venv", "--system-site-packages", &venv.to_string_lossy()])?;
    }
    let mut pip = vec!["-m", "pip", "install", "-q", "--disable-pip-version-check"];
    pip.extend(TOOLS);
    run(&py_s, &pip)?;
    let wheel = build_wheel(&py_s)?;
    run(
        &py_s,
        &[
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--force-reinstall",
            "--no-deps",
            &wheel.to_string_lossy(),
        ],
    )?;
    let counts = pytest(&py, &root.join("crates/py"))?;
    // The package's annotations and the native module's stubs agree, and nothing is left untyped.
    let package = root.join("crates/py/python/m2m");
    run(&py_s, &["-m", "mypy", "--strict", "--no-incremental", &package.to_string_lossy()])?;
    Ok(counts)
}

/// Builds the manylinux wheel (abi3) into `target/wheels` with the interpreter `py`; returns it.
fn build_wheel(py_s: &str) -> Result<std::path::PathBuf> {
    let root = workspace_root();
    let wheels = root.join("target/wheels");
    let _ = std::fs::remove_dir_all(&wheels);
    let manifest = root.join("crates/py/Cargo.toml");
    let (manifest, out) = (manifest.to_string_lossy(), wheels.to_string_lossy());
    // maturin checks the extension's symbols against the manylinux policies (as auditwheel does) and tags
    // the wheel with the oldest one it meets on this machine's glibc.
    run(py_s, &["-m", "maturin", "build", "--release", "--locked", "-m", &manifest, "-o", &out, "-i", py_s])?;
    let wheel = std::fs::read_dir(&wheels)
        .context("reading target/wheels")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("maturin built no wheel")?;
    let name = wheel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if !name.contains("manylinux") {
        bail!("{name}: not a manylinux wheel");
    }
    println!("==> wheel {name}");
    Ok(wheel)
}

/// `cargo xtask python --matrix`: the wheel of `test` (built again) and the suite in a clean
/// environment per pair of [`MATRIX`].
pub(crate) fn matrix() -> Result<()> {
    let mut counts = test()?;
    let root = workspace_root();
    let wheel = std::fs::read_dir(root.join("target/wheels"))
        .context("reading target/wheels")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("no wheel in target/wheels")?;
    for (label, numpy, torch) in MATRIX {
        let venv = root.join(format!("target/py-venv-{label}"));
        let py = venv.join("bin/python");
        let py_s = py.to_string_lossy().into_owned();
        if !py.exists() {
            run("/usr/bin/python3", &["-m", "venv", &venv.to_string_lossy()])?;
        }
        run(&py_s, &["-m", "pip", "install", "-q", "--disable-pip-version-check", numpy, torch, TOOLS[1]])?;
        let wheel_s = wheel.to_string_lossy();
        let install = ["-m", "pip", "install", "-q", "--disable-pip-version-check", "--force-reinstall", "--no-deps"];
        let mut args = install.to_vec();
        args.push(&wheel_s);
        run(&py_s, &args)?;
        println!("\n==> matrix: {label} ({numpy}, {torch})");
        let c = pytest(&py, &root.join("crates/py"))?;
        counts.passed += c.passed;
        counts.failed += c.failed;
    }
    println!("tests: {} passed, {} failed", counts.passed, counts.failed);
    Ok(())
}

/// Runs pytest, echoing its output, and reads the counts of its summary line ("9 passed, 1 failed in").
fn pytest(py: &Path, dir: &Path) -> Result<TestCounts> {
    println!("\n==> pytest crates/py/tests");
    let start = Instant::now();
    let mut child = Command::new(py)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start pytest")?;
    let mut counts = TestCounts::default();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.context("reading pytest output")?;
            println!("{line}");
            if line.contains(" in ") && (line.contains(" passed") || line.contains(" failed")) {
                let summary = line.trim_matches(|c: char| c == '=' || c.is_whitespace());
                for part in summary.split(" in ").next().unwrap_or("").split(',') {
                    let mut words = part.split_whitespace();
                    if let (Some(n), Some(kind)) = (words.next(), words.next())
                        && let Ok(n) = n.parse::<u64>()
                    {
                        match kind {
                            "passed" => counts.passed += n,
                            "failed" | "error" | "errors" => counts.failed += n,
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    let status = child.wait().context("waiting for pytest")?;
    println!("==> pytest took {:.1} s", start.elapsed().as_secs_f64());
    if !status.success() {
        println!("tests: {} passed, {} failed", counts.passed, counts.failed.max(1));
        bail!("pytest failed with {status}");
    }
    Ok(counts)
}
