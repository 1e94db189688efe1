#version 450
#extension GL_GOOGLE_include_directive : require
// The IVF-Flat scan: for each query (one workgroup), exact scores of every member of its probed lists
// and the best k of them; only k row indices and scores per query are written. The members' vectors
// are resident list after list and transposed as a whole (value (row, j) at j * rows + row, the layout
// of distances.comp candidates), so that neighbouring invocations, each on its own row, read
// neighbouring addresses. Each of the 64 invocations keeps the best k of its rows in shared memory, then invocation
// 0 merges the 64 sorted lists (as topk.comp). Order: higher first (lower for L2), ties to the lower
// row, as the CPU twin (m2m_gpu::cpu::ivf_search).
#include "include/common.glsl"

layout(local_size_x = 64, local_size_y = 1, local_size_z = 1) in;

layout(set = 0, binding = 0) readonly buffer Queries { float queries[]; };
layout(set = 0, binding = 1) readonly buffer Vectors { float vecs[]; };
layout(set = 0, binding = 2) readonly buffer Offsets { uint offsets[]; };
layout(set = 0, binding = 3) readonly buffer Probes { uint probes[]; };
layout(set = 0, binding = 4) writeonly buffer TopIds { uint top_ids[]; };
layout(set = 0, binding = 5) writeonly buffer TopScores { float top_scores[]; };

layout(push_constant) uniform IvfParams {
    uint dim;
    uint nprobe;
    uint k;
    uint metric;
    uint rows;
} p;

shared float s_q[MAX_IVF_DIM];
shared float s_score[64u * MAX_K];
shared uint s_id[64u * MAX_K];
shared uint s_len[64];

// Member `row`'s score against the query in shared memory. Eight loads are issued before their
// multiply-adds, into four partial sums: the loads are independent and each crosses the memory's whole
// latency, so a loop that waited on one at a time would leave the memory idle.
float score_row(uint row) {
    float a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
    uint j = 0u;
    if (p.metric == METRIC_L2) {
        for (; j + 8u <= p.dim; j += 8u) {
            float x[8];
            for (uint u = 0u; u < 8u; u++) x[u] = vecs[(j + u) * p.rows + row];
            for (uint u = 0u; u < 8u; u += 4u) {
                float d0 = s_q[j + u] - x[u], d1 = s_q[j + u + 1u] - x[u + 1u];
                float d2 = s_q[j + u + 2u] - x[u + 2u], d3 = s_q[j + u + 3u] - x[u + 3u];
                a0 = fma(d0, d0, a0);
                a1 = fma(d1, d1, a1);
                a2 = fma(d2, d2, a2);
                a3 = fma(d3, d3, a3);
            }
        }
        for (; j < p.dim; j++) {
            float d = s_q[j] - vecs[j * p.rows + row];
            a0 = fma(d, d, a0);
        }
    } else {
        for (; j + 8u <= p.dim; j += 8u) {
            float x[8];
            for (uint u = 0u; u < 8u; u++) x[u] = vecs[(j + u) * p.rows + row];
            for (uint u = 0u; u < 8u; u += 4u) {
                a0 = fma(s_q[j + u], x[u], a0);
                a1 = fma(s_q[j + u + 1u], x[u + 1u], a1);
                a2 = fma(s_q[j + u + 2u], x[u + 2u], a2);
                a3 = fma(s_q[j + u + 3u], x[u + 3u], a3);
            }
        }
        for (; j < p.dim; j++) a0 = fma(s_q[j], vecs[j * p.rows + row], a0);
    }
    return (a0 + a1) + (a2 + a3);
}

bool better(float a, uint ia, float b, uint ib) {
    if (a == b) return ia < ib;
    return p.metric == METRIC_L2 ? a < b : a > b;
}

void main() {
    uint q = gl_WorkGroupID.x;
    uint t = gl_LocalInvocationID.x;
    for (uint j = t; j < p.dim; j += 64u) s_q[j] = queries[q * p.dim + j];
    barrier();
    uint base = t * MAX_K;
    uint len = 0u;
    // Rows before this list among the probed ones: the probed rows are dealt round-robin to the 64
    // invocations as one sequence, so short lists leave no invocation idle.
    uint before = 0u;
    for (uint pi = 0u; pi < p.nprobe; pi++) {
        uint list = probes[q * p.nprobe + pi];
        uint first = offsets[list];
        uint rows = offsets[list + 1u] - first;
        uint r0 = (t + 64u - before % 64u) % 64u;
        before += rows;
        for (uint r = r0; r < rows; r += 64u) {
            float acc = score_row(first + r);
            uint id = first + r;
            if (len == p.k && !better(acc, id, s_score[base + len - 1u], s_id[base + len - 1u])) continue;
            uint pos = (len < p.k) ? len : len - 1u;
            if (len < p.k) len++;
            while (pos > 0u && better(acc, id, s_score[base + pos - 1u], s_id[base + pos - 1u])) {
                s_score[base + pos] = s_score[base + pos - 1u];
                s_id[base + pos] = s_id[base + pos - 1u];
                pos--;
            }
            s_score[base + pos] = acc;
            s_id[base + pos] = id;
        }
    }
    s_len[t] = len;
    barrier();
    if (t == 0u) {
        uint head[64];
        for (uint i = 0u; i < 64u; i++) head[i] = 0u;
        for (uint r = 0u; r < p.k; r++) {
            int best = -1;
            for (uint i = 0u; i < 64u; i++) {
                if (head[i] < s_len[i]) {
                    uint j = i * MAX_K + head[i];
                    if (best < 0 || better(s_score[j], s_id[j], s_score[uint(best) * MAX_K + head[uint(best)]],
                                           s_id[uint(best) * MAX_K + head[uint(best)]])) {
                        best = int(i);
                    }
                }
            }
            uint out_at = q * p.k + r;
            if (best < 0) {
                top_ids[out_at] = 0xFFFFFFFFu;
                top_scores[out_at] = 0.0;
            } else {
                uint j = uint(best) * MAX_K + head[uint(best)];
                top_ids[out_at] = s_id[j];
                top_scores[out_at] = s_score[j];
                head[uint(best)]++;
            }
        }
    }
}
