#version 450
#extension GL_GOOGLE_include_directive : require
// The IVF probe: for each query (one workgroup), the `nprobe` best of its scores against the lists'
// centroids (B rows of n_lists, from distances.comp), as list indices in increasing order. Ties at the
// threshold go to the lower index, as the CPU twin (m2m_gpu::cpu::ivf_search). Scores are mapped to
// order-preserving uints (flipped for L2, where lower is better) and copied into shared memory; a
// bisection over the 32 key bits finds the nprobe-th best key T with one workgroup count per bit; then
// invocation 0 writes every index whose key beats T and the first ones equal to T.
#include "include/common.glsl"

layout(local_size_x = 256, local_size_y = 1, local_size_z = 1) in;

layout(set = 0, binding = 0) readonly buffer Scores { float scores[]; };
layout(set = 0, binding = 1) writeonly buffer Probes { uint probes[]; };

layout(push_constant) uniform SelectParams {
    uint n_lists;
    uint nprobe;
    uint metric;
} p;

shared uint s_key[MAX_LISTS];
shared uint s_count;

// Order-preserving map of a float onto uints: a larger key is a better score.
uint key_of(float s) {
    uint b = floatBitsToUint(s);
    uint k = (b & 0x80000000u) != 0u ? ~b : (b | 0x80000000u);
    return p.metric == METRIC_L2 ? ~k : k;
}

// Number of keys >= t (every invocation gets it).
uint count_at_least(uint t) {
    if (gl_LocalInvocationID.x == 0u) s_count = 0u;
    barrier();
    uint mine = 0u;
    for (uint i = gl_LocalInvocationID.x; i < p.n_lists; i += gl_WorkGroupSize.x) {
        if (s_key[i] >= t) mine++;
    }
    if (mine > 0u) atomicAdd(s_count, mine);
    barrier();
    uint total = s_count;
    barrier();
    return total;
}

void main() {
    uint q = gl_WorkGroupID.x;
    for (uint i = gl_LocalInvocationID.x; i < p.n_lists; i += gl_WorkGroupSize.x) {
        s_key[i] = key_of(scores[q * p.n_lists + i]);
    }
    barrier();
    // Largest t with at least nprobe keys >= t: the nprobe-th best key.
    uint lo = 0u, hi = 0xFFFFFFFFu;
    while (lo < hi) {
        uint mid = lo + (hi - lo) / 2u + 1u;
        if (count_at_least(mid) >= p.nprobe) lo = mid; else hi = mid - 1u;
    }
    // lo is the same in every invocation, so this count runs in uniform control flow.
    uint above = 0u;
    if (lo != 0xFFFFFFFFu) above = count_at_least(lo + 1u);
    if (gl_LocalInvocationID.x == 0u) {
        uint ties = p.nprobe - above;
        uint n = 0u;
        for (uint i = 0u; i < p.n_lists && n < p.nprobe; i++) {
            uint k = s_key[i];
            if (k > lo || (k == lo && ties > 0u)) {
                if (k == lo) ties--;
                probes[q * p.nprobe + n] = i;
                n++;
            }
        }
    }
}
