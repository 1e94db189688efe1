//! The one error type of m2m-gpu.

/// What can go wrong choosing a backend or running a kernel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No usable Vulkan: the library, a driver or a device with a compute queue is missing.
    #[error("no usable Vulkan device: {reason}")]
    NoVulkan {
        /// What was missing.
        reason: String,
    },
    /// The GPU backend was asked for, but this build has no Vulkan support (feature `vulkan`).
    #[error("this build of m2m-gpu has no Vulkan backend (build with the `vulkan` feature)")]
    NotBuilt,
    /// A Vulkan call failed while running a kernel.
    #[error("Vulkan error while {during}: {reason}")]
    Vulkan {
        /// What was being done.
        during: &'static str,
        /// The driver's or vulkano's message.
        reason: String,
    },
    /// An input whose length does not fit its shape.
    #[error("{what}: length {got}, expected {expected}")]
    Shape {
        /// Which input.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The length it needs.
        expected: usize,
    },
    /// An input out of range (a k of 0 or above the device limit, a NaN, too many splats).
    #[error("{what}: {reason}")]
    Invalid {
        /// Which input.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// Result alias for m2m-gpu.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn shape(what: &'static str, got: usize, expected: usize) -> Result<()> {
    if got == expected { Ok(()) } else { Err(Error::Shape { what, got, expected }) }
}

pub(crate) fn finite(what: &'static str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::Invalid { what, reason: format!("value {} at index {i} is not finite", v[i]) }),
    }
}
