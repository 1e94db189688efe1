#version 450
#extension GL_GOOGLE_include_directive : require
// Estimated inner products from 8-bit scalar-quantised codes: row r's value in dimension j is
// lo[j] + step[j] * code(r, j), so q . x ~ sum_j q_j lo_j + sum_j (q_j step_j) code(r, j). Codes are
// bytes, `stride` per row (a multiple of 4), read as packed uints. One invocation per row.
#include "include/common.glsl"

layout(local_size_x = 64, local_size_y = 1, local_size_z = 1) in;

layout(set = 0, binding = 0) readonly buffer Codes { uint codes[]; };
layout(set = 0, binding = 1) readonly buffer Weights { float qstep[]; };
layout(set = 0, binding = 2) writeonly buffer Estimates { float est[]; };

layout(push_constant) uniform CodeParams {
    uint dim;
    uint rows;
    uint stride;
    float offset;
} p;

void main() {
    uint r = gl_GlobalInvocationID.x;
    if (r >= p.rows) return;
    float acc = 0.0;
    uint word0 = r * (p.stride / 4u);
    for (uint j = 0u; j < p.dim; j++) {
        uint w = codes[word0 + j / 4u];
        float code = float((w >> (8u * (j % 4u))) & 0xFFu);
        acc = fma(qstep[j], code, acc);
    }
    est[r] = p.offset + acc;
}
