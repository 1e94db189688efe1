//! Publishing and portability jobs: `cargo xtask package` (every crate packaged as crates.io would
//! receive it), `cargo xtask portability` (the workspace checked for other platforms) and
//! `cargo xtask msrv` (the workspace checked with the declared minimum toolchain).

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{run, workspace_root};

/// The crates published to crates.io, bottom of the stack first (m2m-py goes to PyPI as a wheel;
/// m2m-benches and xtask are not published).
pub(crate) const PUBLISHED: [&str; 7] = ["m2m-splat", "m2m-index", "m2m-tier", "m2m-gpu", "m2m-soc", "m2m", "m2m-cli"];

/// `cargo package` for every published crate, without building the packages (`--no-verify`: a verified
/// package builds against its dependencies from crates.io, where they are not published yet). It checks
/// what crates.io checks on upload: metadata, versioned dependencies, the files inside each package.
pub(crate) fn package() -> Result<()> {
    let mut args = vec!["package", "--no-verify", "--locked", "--allow-dirty"];
    for krate in PUBLISHED {
        args.extend(["-p", krate]);
    }
    run("cargo", &args)?;
    // Each packaged crate carries both licence texts.
    let dir = workspace_root().join("target/package");
    for krate in PUBLISHED {
        let listing = Command::new("cargo")
            .args(["package", "--list", "--locked", "--allow-dirty", "-p", krate])
            .output()
            .with_context(|| format!("cannot list the package of {krate}"))?;
        let files = String::from_utf8_lossy(&listing.stdout);
        for needed in ["LICENSE-APACHE", "LICENSE-MIT", "README.md"] {
            if !files.lines().any(|f| f == needed) {
                bail!("the package of {krate} lacks {needed} (see {})", dir.display());
            }
        }
    }
    println!("packages: {} crates packaged with both licences and the README", PUBLISHED.len());
    Ok(())
}

/// Targets the workspace must build for, beyond this machine's.
const TARGETS: [&str; 3] = ["aarch64-unknown-linux-gnu", "x86_64-apple-darwin", "x86_64-pc-windows-gnu"];

/// Whether the toolchain has the standard library of `target` (`rustup target add TARGET`): its
/// library directory holds a `libcore-*.rlib`.
fn has_target(target: &str) -> bool {
    let Ok(out) = Command::new("rustc").args(["--print", "target-libdir", "--target", target]).output() else {
        return false;
    };
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    out.status.success()
        && std::fs::read_dir(dir).is_ok_and(|mut entries| {
            entries.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libcore-")))
        })
}

/// `cargo check --workspace --target T` (warnings denied) for each target of [`TARGETS`]. A missing standard library is
/// asked of rustup first; a target whose library still cannot be had is named and skipped (with
/// `strict`, an error). The C compilers that build scripts (psm, under npyz's header parser) need for
/// assembling the target's stack-switching code come from Debian: gcc for aarch64, clang for macOS
/// (given as `CC_x86_64_apple_darwin`), MinGW for Windows.
pub(crate) fn portability(strict: bool) -> Result<()> {
    let mut missing = Vec::new();
    for target in TARGETS {
        if !has_target(target) {
            // Best effort: a machine without access to rustup's servers skips the target, as before.
            let _ = Command::new("rustup").args(["target", "add", target]).status();
        }
        if !has_target(target) {
            println!(
                "portability: {target} skipped: its standard library is not installed (rustup target add {target})"
            );
            missing.push(target);
            continue;
        }
        let mut check = Command::new("cargo");
        // Warnings are errors: code behind a platform's cfg gates is compiled nowhere else.
        check.args(["check", "--workspace", "--locked", "--target", target]).env("RUSTFLAGS", "-D warnings");
        match target {
            "aarch64-unknown-linux-gnu" => crate::gpu::ensure_debian_packages(
                &[("gcc-aarch64-linux-gnu", "/usr/bin/aarch64-linux-gnu-gcc")],
                "the aarch64 check",
            )?,
            "x86_64-apple-darwin" => {
                crate::gpu::ensure_debian_packages(&[("clang", "/usr/bin/clang")], "the macOS check")?;
                check.env("CC_x86_64_apple_darwin", "clang");
            }
            _ => crate::gpu::ensure_debian_packages(
                &[("gcc-mingw-w64-x86-64", "/usr/bin/x86_64-w64-mingw32-gcc")],
                "the Windows check",
            )?,
        }
        println!("+ cargo check --workspace --locked --target {target}");
        let status = check.status().with_context(|| format!("cannot start cargo check for {target}"))?;
        if !status.success() {
            bail!("cargo check --workspace --target {target} failed ({status})");
        }
    }
    if strict && !missing.is_empty() {
        bail!("portability: targets not installed: {}", missing.join(", "));
    }
    Ok(())
}

/// The aarch64 target, built and run under emulation by [`run_aarch64_tests`].
const AARCH64: &str = "aarch64-unknown-linux-gnu";

/// `cargo test -p m2m-index --target aarch64-unknown-linux-gnu` run by qemu-user, twice: on qemu's `max`
/// CPU model (NEON with the dot-product extension, so the `sdot` code kernels run) and on `cortex-a57`
/// (Armv8.0: NEON only, so the fallback runs). Emulated, so it checks results, never speed. Needs the
/// target's standard library, `aarch64-linux-gnu-gcc` (installed here as root when missing) and
/// `qemu-aarch64` (package qemu-user; asked for, not installed).
pub(crate) fn run_aarch64_tests() -> Result<()> {
    if !has_target(AARCH64) {
        bail!("run-aarch64: the {AARCH64} standard library is not installed (rustup target add {AARCH64})");
    }
    crate::gpu::ensure_debian_packages(
        &[("gcc-aarch64-linux-gnu", "/usr/bin/aarch64-linux-gnu-gcc")],
        "the aarch64 test run",
    )?;
    if Command::new("qemu-aarch64").arg("--version").output().is_err() {
        bail!("run-aarch64: qemu-aarch64 is not installed (apt-get install -y qemu-user)");
    }
    for cpu in ["max", "cortex-a57"] {
        let args = ["test", "-p", "m2m-index", "--locked", "--target", AARCH64];
        println!("\n==> QEMU_CPU={cpu} cargo {}", args.join(" "));
        let start = std::time::Instant::now();
        let status = Command::new("cargo")
            .args(args)
            .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", "aarch64-linux-gnu-gcc")
            .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER", "qemu-aarch64 -L /usr/aarch64-linux-gnu")
            .env("QEMU_CPU", cpu)
            .status()
            .context("cannot start cargo")?;
        println!("==> aarch64 tests on qemu CPU {cpu} took {:.1} s", start.elapsed().as_secs_f64());
        if !status.success() {
            bail!("m2m-index tests for {AARCH64} under qemu (CPU {cpu}) failed with {status}");
        }
    }
    Ok(())
}

/// `cargo +RUST_VERSION check --workspace`: the declared minimum toolchain (rust-version of the root
/// manifest) builds every library and binary of the workspace, as a user's build would compile them
/// (tests, benches and their dev-dependencies are ours, built with the current toolchain). A missing
/// toolchain is asked of rustup (minimal profile).
pub(crate) fn msrv() -> Result<()> {
    let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).context("reading Cargo.toml")?;
    let version = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_string())
        .context("no rust-version in the root Cargo.toml")?;
    let toolchain = format!("+{version}");
    let have = || Command::new("rustc").args([toolchain.as_str(), "-V"]).output().is_ok_and(|o| o.status.success());
    if !have() {
        run("rustup", &["toolchain", "install", &version, "--profile", "minimal"])?;
    }
    if !have() {
        bail!("msrv: toolchain {version} is not installed (rustup toolchain install {version})");
    }
    run("cargo", &[toolchain.as_str(), "check", "--workspace", "--locked"])
}
