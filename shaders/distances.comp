#version 450
#extension GL_GOOGLE_include_directive : require
// Scores of B queries against N candidates. Candidates are stored transposed (dim rows of N) so that
// neighbouring invocations read neighbouring addresses; 8 queries at a time are staged in shared memory
// in tiles of 256 dimensions. Invocation t of the x dimension scores candidate t against the 8 queries
// of the workgroup's y index.
#include "include/common.glsl"

layout(local_size_x = 64, local_size_y = 1, local_size_z = 1) in;

layout(set = 0, binding = 0) readonly buffer Queries { float queries[]; };
layout(set = 0, binding = 1) readonly buffer Candidates { float cand_t[]; };
layout(set = 0, binding = 2) writeonly buffer Scores { float scores[]; };

layout(push_constant) uniform DistParams {
    uint dim;
    uint n_queries;
    uint n_cand;
    uint metric;
} p;

#define QB 8u
#define TILE 256u
shared float qs[QB * TILE];

void main() {
    uint c = gl_GlobalInvocationID.x;
    uint q0 = gl_WorkGroupID.y * QB;
    float acc[QB];
    for (uint i = 0u; i < QB; i++) acc[i] = 0.0;
    for (uint k0 = 0u; k0 < p.dim; k0 += TILE) {
        uint width = min(TILE, p.dim - k0);
        barrier();
        for (uint i = gl_LocalInvocationID.x; i < QB * TILE; i += gl_WorkGroupSize.x) {
            uint qq = i / TILE, k = i % TILE;
            qs[i] = (q0 + qq < p.n_queries && k < width) ? queries[(q0 + qq) * p.dim + k0 + k] : 0.0;
        }
        barrier();
        if (c < p.n_cand) {
            for (uint k = 0u; k < width; k++) {
                float x = cand_t[(k0 + k) * p.n_cand + c];
                for (uint qq = 0u; qq < QB; qq++) {
                    float q = qs[qq * TILE + k];
                    if (p.metric == METRIC_L2) {
                        float d = q - x;
                        acc[qq] = fma(d, d, acc[qq]);
                    } else {
                        acc[qq] = fma(q, x, acc[qq]);
                    }
                }
            }
        }
    }
    if (c < p.n_cand) {
        for (uint qq = 0u; qq < QB; qq++) {
            if (q0 + qq < p.n_queries) scores[(q0 + qq) * p.n_cand + c] = acc[qq];
        }
    }
}
