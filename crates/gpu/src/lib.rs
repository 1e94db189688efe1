//! m2m-gpu: Vulkan compute for M2M through vulkano (built by the GPU issue).
//!
//! It will own device selection, buffer sub-allocation and the compute pipelines compiled from the GLSL
//! in `shaders/`: distances, per-query top-k, estimated distances from compressed codes and the Langevin
//! step, each with a CPU twin that the tests compare against. The Vulkan backend will sit behind a cargo
//! feature so the default build needs no shader compiler. Nothing is implemented yet.
