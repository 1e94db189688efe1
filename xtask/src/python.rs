//! The Python bindings' test job: Debian's interpreter with its numpy and torch (PyPI's torch pulls
//! gigabytes of CUDA libraries; Debian's is CPU-only), a virtual environment that sees them, maturin and
//! pytest from PyPI (pinned), the wheel built and installed, then pytest over `crates/py/tests`.

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
const TOOLS: [&str; 2] = ["maturin==1.16.0", "pytest==9.2.0"];

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
    let wheels = root.join("target/wheels");
    let _ = std::fs::remove_dir_all(&wheels);
    let manifest = root.join("crates/py/Cargo.toml");
    run(
        &py_s,
        &[
            "-m",
            "maturin",
            "build",
            "--release",
            "--locked",
            "-m",
            &manifest.to_string_lossy(),
            "-o",
            &wheels.to_string_lossy(),
            "-i",
            &py_s,
        ],
    )?;
    let wheel = std::fs::read_dir(&wheels)
        .context("reading target/wheels")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("maturin built no wheel")?;
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
    pytest(&py, &root.join("crates/py"))
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
