#version 450
#extension GL_GOOGLE_include_directive : require
// Per-query top-k of a score matrix (B rows of N): one workgroup per query. Each of the 64 invocations
// keeps the best k of a strided share of the row, then invocation 0 merges the 64 lists. Order: higher
// score first (lower for L2), ties by lower index, as the CPU twin.
#include "include/common.glsl"

layout(local_size_x = 64, local_size_y = 1, local_size_z = 1) in;

layout(set = 0, binding = 0) readonly buffer Scores { float scores[]; };
layout(set = 0, binding = 1) writeonly buffer TopIds { uint top_ids[]; };
layout(set = 0, binding = 2) writeonly buffer TopScores { float top_scores[]; };

layout(push_constant) uniform TopkParams {
    uint n_cand;
    uint k;
    uint metric;
    uint id_offset;
} p;

shared float s_score[64u * MAX_K];
shared uint s_id[64u * MAX_K];
shared uint s_len[64];

// Whether (a, ia) ranks before (b, ib).
bool better(float a, uint ia, float b, uint ib) {
    if (a == b) return ia < ib;
    return p.metric == METRIC_L2 ? a < b : a > b;
}

void main() {
    uint q = gl_WorkGroupID.x;
    uint t = gl_LocalInvocationID.x;
    uint base = t * MAX_K;
    uint len = 0u;
    for (uint c = t; c < p.n_cand; c += 64u) {
        float s = scores[q * p.n_cand + c];
        if (len == p.k && !better(s, c, s_score[base + len - 1u], s_id[base + len - 1u])) continue;
        uint pos = (len < p.k) ? len : len - 1u;
        if (len < p.k) len++;
        while (pos > 0u && better(s, c, s_score[base + pos - 1u], s_id[base + pos - 1u])) {
            s_score[base + pos] = s_score[base + pos - 1u];
            s_id[base + pos] = s_id[base + pos - 1u];
            pos--;
        }
        s_score[base + pos] = s;
        s_id[base + pos] = c;
    }
    s_len[t] = len;
    barrier();
    if (t == 0u) {
        // Merge: k rounds, each taking the best head of the 64 sorted lists.
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
                top_ids[out_at] = s_id[j] + p.id_offset;
                top_scores[out_at] = s_score[j];
                head[uint(best)]++;
            }
        }
    }
}
