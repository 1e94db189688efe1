// Shared definitions of the M2M compute shaders. Every kernel has a CPU twin in crates/gpu/src/cpu.rs
// that the tests compare it with; keep the arithmetic in the same order where it matters.
#ifndef M2M_COMMON_GLSL
#define M2M_COMMON_GLSL

// Metric codes (m2m_splat::Metric): cosine and inner product score q . x (higher is better; cosine
// expects unit rows), L2 scores the squared distance (lower is better).
#define METRIC_DOT 0u
#define METRIC_L2 1u

// Largest k of the device top-k.
#define MAX_K 32u

// Most lists (centroids) of the IVF probe (select.comp keeps one key per list in shared memory).
#define MAX_LISTS 4096u

// Largest dimension of the IVF scan (ivf.comp keeps the query in shared memory).
#define MAX_IVF_DIM 2048u

#endif
