//! Settings of an engine, with the original project's defaults where it had them.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Metric;
use m2m_index::CodeKind;

/// Where kernels run (see `m2m_gpu::Backend`).
///
/// Names are case-insensitive everywhere (Rust, JSON settings, Python, the CLI): `cpu`, `vulkan` (or
/// `gpu`), `auto`. It serialises as the variant name (`"Cpu"`), which older readers accept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum Device {
    /// The CPU.
    #[default]
    Cpu,
    /// A Vulkan device, or an error (build with the `gpu` feature).
    Vulkan,
    /// A Vulkan device when one works, otherwise the CPU.
    Auto,
}

/// Which Langevin dynamics generate samples (m2m-soc's `Dynamics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LangevinDynamics {
    /// First order: positions only (and, with Gaussian noise, the exact reduced method where it pays).
    #[default]
    Overdamped,
    /// Second order, with a velocity and the friction `langevin_gamma`.
    Underdamped,
}

impl From<LangevinDynamics> for m2m_soc::Dynamics {
    fn from(d: LangevinDynamics) -> Self {
        match d {
            LangevinDynamics::Overdamped => m2m_soc::Dynamics::Overdamped,
            LangevinDynamics::Underdamped => m2m_soc::Dynamics::Underdamped,
        }
    }
}

impl Device {
    /// The short name: `cpu`, `vulkan` or `auto`.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Vulkan => "vulkan",
            Device::Auto => "auto",
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Device {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Device> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Device::Cpu),
            "vulkan" | "gpu" => Ok(Device::Vulkan),
            "auto" => Ok(Device::Auto),
            _ => Err(crate::Error::Config {
                field: "device",
                reason: format!("unknown device {s:?}: cpu, vulkan (or gpu) or auto, in any case"),
            }),
        }
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(|e: crate::Error| serde::de::Error::custom(e.to_string()))
    }
}

/// Settings of an [`M2m`](crate::M2m) engine. Every field has a default (`M2mConfig::default()`), and a
/// partial JSON or other serde document fills in the rest with them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct M2mConfig {
    /// Dimension of every embedding. Default 640 (the original project's).
    pub dim: usize,
    /// How retrieval scores. Default cosine (the sphere).
    pub metric: Metric,
    /// Kappa of splats added without one, until `build_index` learns them. Default 10 (original).
    pub init_kappa: f32,
    /// Alpha of splats added without one. Default 1 (original).
    pub init_alpha: f32,
    /// Smallest learned kappa. Default 1 (original).
    pub min_kappa: f32,
    /// Largest learned kappa per dimension of the fit's sphere: learned kappa is clipped above at
    /// `max_kappa` x (p - 1), p the sphere dimension of the fit (see `m2m_soc::kappa`). Default 50
    /// (the original's bound, as on the circle p = 2).
    pub max_kappa: f32,
    /// Whether `build_index` estimates kappa and alpha from each splat's neighbours. Default true.
    pub learn_kappa: bool,
    /// Langevin steps of `generate`. Default 200 (original).
    pub langevin_steps: usize,
    /// Langevin step size, for kernels of concentration `init_kappa`. Default 0.001 (original). When
    /// kappa is learned, the step applied is this times `init_kappa` / (mean learned kappa), so that a
    /// step moves a chain the same share of its kernel's relaxation time (1 / (2 kappa)) whatever the
    /// data's dimension.
    pub langevin_dt: f32,
    /// Friction of underdamped Langevin. Default 0.1 (original).
    pub langevin_gamma: f32,
    /// Temperature of Langevin, relative to the fitted model. Default 1: each splat's kernel is sampled
    /// with the spread of the real neighbourhood its kappa was fitted on. When kappa is learned on a
    /// sphere of the data's intrinsic dimension p, the temperature applied in the `dim` ambient
    /// dimensions is this times (p - 1) / (dim - 1) (see `m2m_soc::kappa::ambient_temperature`);
    /// without learned kappa it is applied as given.
    pub temperature: f32,
    /// Overdamped (default) or underdamped Langevin.
    pub langevin_dynamics: LangevinDynamics,
    /// Where kernels run. Default `Cpu`.
    pub device: Device,
    /// Warm tier budget in bytes (the RAM budget of full vectors). With a data directory the index's
    /// LOD 2 re-rank and Exact read the mapped `.vec` file through a cache of full-vector blocks (one per
    /// fine cluster) that holds at most this many bytes; the mapping's pages it does not hold are
    /// released after each read, so the process keeps no more of the vectors than this (plus the reads
    /// in flight). A data-lake export with [`Source::Tiers`](crate::Source::Tiers) has its own block
    /// cache of this budget while it runs. The data lake's Langevin chains keep each seed's prepared
    /// basis (~2 KB) within a sixteenth of it. 0 reads in place, caching nothing. Default 1 GiB.
    pub warm_budget_bytes: u64,
    /// Hot tier budget in bytes (centroids and codes on a device). Default 256 MiB. Not used by the CPU
    /// engine, which keeps centroids, codes and ids (what LOD 0 and LOD 1 read) in RAM whatever the
    /// budget.
    pub hot_budget_bytes: u64,
    /// The database directory; `None` keeps everything in memory. Default `None`.
    pub data_dir: Option<PathBuf>,
    /// Acknowledge `add_splats` after fsync (true) or once the OS has the bytes. Default true.
    pub durable: bool,
    /// Seed of index building, sampling and Langevin. Default 42.
    pub seed: u64,
    /// The index's compressed codes (what LOD 1 scans and LOD 2 re-ranks from); `None` (the default)
    /// takes [`CodeKind::for_dim`] of `dim`, the kind measured best at that dimension. An invalid kind
    /// (PQ4 `dims_per_code` outside `1..=16`) is [`Error::Config`](crate::Error::Config) naming `codes`.
    pub codes: Option<CodeKind>,
}

impl Default for M2mConfig {
    fn default() -> Self {
        M2mConfig {
            dim: 640,
            metric: Metric::Cosine,
            init_kappa: 10.0,
            init_alpha: 1.0,
            min_kappa: 1.0,
            max_kappa: 50.0,
            learn_kappa: true,
            langevin_steps: 200,
            langevin_dt: 1e-3,
            langevin_gamma: 0.1,
            temperature: 1.0,
            langevin_dynamics: LangevinDynamics::Overdamped,
            device: Device::Cpu,
            warm_budget_bytes: 1 << 30,
            hot_budget_bytes: 256 << 20,
            data_dir: None,
            durable: true,
            seed: 42,
            codes: None,
        }
    }
}

impl M2mConfig {
    /// The settings with another dimension.
    pub fn dim(mut self, dim: usize) -> Self {
        self.dim = dim;
        self
    }

    /// The settings with another metric.
    pub fn metric(mut self, metric: Metric) -> Self {
        self.metric = metric;
        self
    }

    /// The settings with another device.
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// The settings with `add_splats` acknowledged after fsync (true) or without it.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// The settings with another seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The settings with a database directory.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// The settings with the given compressed codes (`None`: chosen by dimension).
    pub fn codes(mut self, codes: Option<CodeKind>) -> Self {
        self.codes = codes;
        self
    }

    /// The code kind the index is built with: `codes`, or [`CodeKind::for_dim`] of `dim`.
    pub fn code_kind(&self) -> CodeKind {
        self.codes.unwrap_or_else(|| CodeKind::for_dim(self.dim))
    }

    pub(crate) fn check(&self) -> crate::Result<()> {
        let bad = |field: &'static str, reason: String| Err(crate::Error::Config { field, reason });
        if self.dim == 0 {
            return bad("dim", "must be at least 1".into());
        }
        if !(self.init_kappa.is_finite() && self.init_kappa > 0.0) {
            return bad("init_kappa", format!("{} is not finite and > 0", self.init_kappa));
        }
        if !(self.init_alpha.is_finite() && self.init_alpha > 0.0) {
            return bad("init_alpha", format!("{} is not finite and > 0", self.init_alpha));
        }
        if !(self.min_kappa > 0.0 && self.min_kappa <= self.max_kappa && self.max_kappa.is_finite()) {
            return bad("min_kappa", format!("range {}..{} is not 0 < min <= max", self.min_kappa, self.max_kappa));
        }
        if self.dim > u32::MAX as usize {
            return bad("dim", format!("{} is more than 2^32 - 1", self.dim));
        }
        if self.langevin_steps > crate::MAX_GENERATE_STEPS {
            return bad(
                "langevin_steps",
                format!("{} is more than {}", self.langevin_steps, crate::MAX_GENERATE_STEPS),
            );
        }
        if !(self.langevin_dt > 0.0 && self.langevin_dt <= 1.0) {
            return bad("langevin_dt", format!("{} is not in (0, 1]", self.langevin_dt));
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", format!("{} is not finite and >= 0", self.temperature));
        }
        if !(self.langevin_gamma >= 0.0 && self.langevin_gamma.is_finite()) {
            return bad("langevin_gamma", format!("{} is not finite and >= 0", self.langevin_gamma));
        }
        if let Some(Err(m2m_index::Error::InvalidConfig { reason, .. })) = self.codes.map(CodeKind::check) {
            return bad("codes", reason);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive_in_json() {
        let c: M2mConfig = serde_json::from_str(r#"{"metric": "cosine", "device": "cpu"}"#).unwrap();
        assert_eq!((c.metric, c.device), (Metric::Cosine, Device::Cpu));
        let c: M2mConfig = serde_json::from_str(r#"{"metric": "L2", "device": "AUTO"}"#).unwrap();
        assert_eq!((c.metric, c.device), (Metric::L2, Device::Auto));
        let c: M2mConfig = serde_json::from_str(r#"{"metric": "InnerProduct", "device": "Vulkan"}"#).unwrap();
        assert_eq!((c.metric, c.device), (Metric::InnerProduct, Device::Vulkan));
        let err = serde_json::from_str::<M2mConfig>(r#"{"device": "cuda"}"#).unwrap_err().to_string();
        assert!(err.contains("cuda") && err.contains("auto"), "{err}");
    }

    #[test]
    fn settings_round_trip_through_json() {
        let c = M2mConfig::default().dim(3).metric(Metric::L2).device(Device::Auto).durable(false).seed(7);
        let back: M2mConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let c = c.codes(Some(CodeKind::Pq4 { dims_per_code: 3, anisotropic: false }));
        let back: M2mConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    /// The code kind: `None` follows the dimension, a given kind is kept, and an invalid one is the typed
    /// `Config` error naming `codes`. Catches `check` letting dims_per_code 0 or 17 through (the build
    /// would then fail later, as an index error), and a `code_kind` that ignores the setting.
    #[test]
    fn code_kind_follows_the_dimension_and_invalid_kinds_are_refused() {
        assert_eq!(M2mConfig::default().dim(50).code_kind(), CodeKind::for_dim(50));
        assert_eq!(M2mConfig::default().dim(384).code_kind(), CodeKind::Sq4);
        let sq8 = M2mConfig::default().dim(50).codes(Some(CodeKind::Sq8));
        assert_eq!(sq8.code_kind(), CodeKind::Sq8);
        assert!(sq8.check().is_ok());
        for d in [0u8, 17] {
            let c = M2mConfig::default().codes(Some(CodeKind::Pq4 { dims_per_code: d, anisotropic: true }));
            match c.check() {
                Err(crate::Error::Config { field: "codes", reason }) => {
                    assert!(reason.contains(&format!("dims_per_code {d}")), "{reason}")
                }
                other => panic!("dims_per_code {d}: {other:?}"),
            }
        }
        let c: M2mConfig =
            serde_json::from_str(r#"{"codes": {"Pq4": {"dims_per_code": 0, "anisotropic": false}}}"#).unwrap();
        assert!(matches!(c.check(), Err(crate::Error::Config { field: "codes", .. })));
    }
}
