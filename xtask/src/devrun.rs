//! `cargo xtask gpu-devrun [DIR]`: fills the folder that a lent GPU machine's call carries (default
//! `.devrun` in the workspace root; the call sends the session's main checkout, so pass that checkout's
//! `.devrun`): the release `bench-gpu` with the Vulkan backend, `scripts/device-gpu.sh` and
//! `scripts/torch_peer.py`, and minilm70k as raw little-endian f16 (its 70,000 base rows and the first
//! 4,000 queries: the f32 base alone is over the call's 64 MiB). The device script turns them back into
//! f32 and computes the ground truth there.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Queries carried (the first ones of the file).
const QUERIES: usize = 4000;

/// The f16 nearest to `v` (round to nearest even; overflow to infinity; NaN stays NaN).
fn f16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        // Subnormal: the implicit bit joins the mantissa, shifted right by 1 - e more places.
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let rest = m & ((1 << shift) - 1);
        let mut out = (m >> shift) as u16;
        if rest > half || (rest == half && out & 1 == 1) {
            out += 1;
        }
        return sign | out;
    }
    let mut out = ((e as u32) << 10 | (man >> 13)) as u16;
    let rest = man & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && out & 1 == 1) {
        out += 1; // a carry into the exponent is the right rounding too
    }
    sign | out
}

/// Reads up to `max_rows` rows of an `.fvecs` file as raw f16 bytes, checking every record's dimension.
fn fvecs_to_f16(path: &Path, max_rows: usize) -> Result<(Vec<u8>, usize, usize)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() < 4 {
        bail!("{}: shorter than one header", path.display());
    }
    let dim = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let record = 4 + 4 * dim;
    if dim == 0 || !bytes.len().is_multiple_of(record) {
        bail!("{}: {} bytes are not records of dimension {dim}", path.display(), bytes.len());
    }
    let rows = (bytes.len() / record).min(max_rows);
    let mut out = Vec::with_capacity(rows * dim * 2);
    for (r, rec) in bytes.chunks_exact(record).take(rows).enumerate() {
        if u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]) as usize != dim {
            bail!("{}: record {r} has another dimension", path.display());
        }
        for v in rec[4..].chunks_exact(4) {
            out.extend_from_slice(&f16_bits(f32::from_le_bytes([v[0], v[1], v[2], v[3]])).to_le_bytes());
        }
    }
    Ok((out, rows, dim))
}

pub(crate) fn fill(root: &Path, to: &Path) -> Result<()> {
    crate::setup_gpu()?;
    crate::run(
        "cargo",
        &["build", "--release", "--locked", "-p", "m2m-benches", "--features", "gpu", "--bin", "bench-gpu"],
    )?;
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let bin = to.join("bench-gpu");
    std::fs::copy(root.join("target/release/bench-gpu"), &bin).context("copying bench-gpu")?;
    // Symbols are a third of the binary and the call carries 64 MiB in all; a missing strip is fine.
    let _ = Command::new("strip").arg(&bin).status();
    for f in ["device-gpu.sh", "torch_peer.py"] {
        std::fs::copy(root.join("scripts").join(f), to.join(f)).with_context(|| format!("copying {f}"))?;
    }
    let data = root.join("../shared/data/minilm70k/minilm70k");
    for (name, max) in [("base", usize::MAX), ("query", QUERIES)] {
        let (bytes, rows, dim) = fvecs_to_f16(&data.with_extension(format!("{name}.fvecs")), max)?;
        if dim != 384 {
            bail!("minilm70k {name} has dimension {dim}; device-gpu.sh expects 384");
        }
        std::fs::write(to.join(format!("{name}.f16")), &bytes).with_context(|| format!("writing {name}.f16"))?;
        println!("{name}.f16: {rows} rows x {dim}");
    }
    let total: u64 = std::fs::read_dir(to)?.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
    println!(
        "{}: {:.1} MiB; call the device with carry [\".devrun\", \".gl\"]",
        to.display(),
        total as f64 / 1048576.0
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::f16_bits;

    #[test]
    fn f16_rounding_matches_known_values() {
        assert_eq!(f16_bits(0.0), 0);
        assert_eq!(f16_bits(-0.0), 0x8000);
        assert_eq!(f16_bits(1.0), 0x3c00);
        assert_eq!(f16_bits(-2.0), 0xc000);
        assert_eq!(f16_bits(0.5), 0x3800);
        assert_eq!(f16_bits(65504.0), 0x7bff);
        assert_eq!(f16_bits(1e6), 0x7c00);
        assert_eq!(f16_bits(f32::NAN) & 0x7c00, 0x7c00);
        assert_eq!(f16_bits(6.0e-8), 0x0001, "smallest subnormal");
        assert_eq!(f16_bits(0.333_333_34), 0x3555);
        // 1 + 2^-11 is halfway between 1 and the next f16: ties to even, 1.
        assert_eq!(f16_bits(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f16_bits(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
    }
}
