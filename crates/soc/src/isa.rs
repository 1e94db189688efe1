//! The instruction set of m2m-soc's Langevin and deviate kernels: what `M2M_ISA` forces, otherwise
//! the best detected, except that a detected AVX-512 runs the AVX2 code.
//!
//! Why: on the machine these kernels were measured on (an Intel Xeon with AVX-512 and AMX, a KVM
//! guest), a burst of 512-bit FMAs ran 1.6x slower than the same lanes as 256-bit FMAs (2,000 x 64
//! lanes: 3.86 us against 2.39 us), and the scalar code after it ran 9.5% slower for the next ~17 us
//! (16.8 us against 18.4 us for a fixed integer chain; none after a 256-bit burst): 512-bit
//! floating-point work lowers the core's clock for a while. The lake's kernels are short (17 to 40
//! lanes in the span, rows that come from memory in the lift) and interleaved with scalar code, so
//! with AVX-512 they paid the clock for every instruction around them and gained no width. (The
//! measuring program and its runs are in notes/issue-17.md, round of 2026-12-02, second session.)
//! CPUs whose 512-bit units run at full clock lose little with the AVX2 code here. `M2M_ISA=avx512` still forces the AVX-512 code, so that
//! every path can be benchmarked side by side.

use std::sync::OnceLock;

use m2m_index::kernels::Isa;

/// The instruction set the Langevin kernels run on (chosen once; see the module's comment). Never
/// one the CPU lacks.
pub fn kernel_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let chosen = choose(Isa::forced().ok().flatten(), Isa::detected());
        Some(chosen).filter(|i| i.is_available()).unwrap_or(Isa::Scalar)
    })
}

/// The kernels' instruction set from what `M2M_ISA` forces (if valid) and what the CPU has.
fn choose(forced: Option<Isa>, detected: Isa) -> Isa {
    match (forced, detected) {
        (Some(isa), _) => isa,
        (None, Isa::Avx512) => Isa::Avx2,
        (None, other) => other,
    }
}

#[cfg(test)]
mod tests {
    use m2m_index::kernels::Isa;

    use super::choose;

    /// A detected AVX-512 runs the AVX2 code, a forced one runs itself, everything else is kept.
    /// Catches the rule inverted or dropped (detected AVX-512 kept) and a forced set overridden.
    #[test]
    fn detected_avx512_runs_avx2_and_a_forced_set_wins() {
        assert_eq!(choose(None, Isa::Avx512), Isa::Avx2);
        assert_eq!(choose(Some(Isa::Avx512), Isa::Avx512), Isa::Avx512);
        assert_eq!(choose(Some(Isa::Scalar), Isa::Avx512), Isa::Scalar);
        assert_eq!(choose(None, Isa::Avx2), Isa::Avx2);
        assert_eq!(choose(None, Isa::Scalar), Isa::Scalar);
        assert_eq!(choose(None, Isa::Neon), Isa::Neon);
    }
}
