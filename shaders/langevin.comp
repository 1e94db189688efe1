#version 450
#extension GL_GOOGLE_include_directive : require
// One overdamped Langevin step on the unit sphere for each chain against shared routed splats:
// x' = normalise(x + dt (u - (u . x) x) + sqrt(2 dt T) (xi - (xi . x) x)), u = sum_j c_j mu_j,
// c_j = 2 kappa_j softmax_j(ln alpha_j - 2 kappa_j (1 - x . mu_j)). One workgroup per chain; at most
// 256 routed splats. The CPU twin is m2m_gpu::cpu::langevin_step (and m2m-soc's overdamped_step).
#include "include/common.glsl"

layout(local_size_x = 64, local_size_y = 1, local_size_z = 1) in;

layout(set = 0, binding = 0) buffer Chains { float x[]; };
layout(set = 0, binding = 1) readonly buffer Mu { float mu[]; };
layout(set = 0, binding = 2) readonly buffer Params { float kappa_alpha[]; };
layout(set = 0, binding = 3) readonly buffer Noise { float xi[]; };

layout(push_constant) uniform StepParams {
    uint dim;
    uint n_splats;
    float dt;
    float noise_scale;
} p;

#define MAX_SPLATS 256u
shared float s_c[MAX_SPLATS];
shared float s_part[64];

// Sum of one value per invocation, visible to all.
float reduce_sum(float v) {
    uint t = gl_LocalInvocationID.x;
    s_part[t] = v;
    barrier();
    for (uint w = 32u; w > 0u; w >>= 1u) {
        if (t < w) s_part[t] += s_part[t + w];
        barrier();
    }
    float total = s_part[0];
    barrier();
    return total;
}

void main() {
    uint chain = gl_WorkGroupID.x;
    uint t = gl_LocalInvocationID.x;
    uint x0 = chain * p.dim;
    // Scores and log-terms.
    for (uint j = t; j < p.n_splats; j += 64u) {
        float s = 0.0;
        for (uint k = 0u; k < p.dim; k++) s = fma(x[x0 + k], mu[j * p.dim + k], s);
        float kappa = kappa_alpha[2u * j];
        s_c[j] = log(kappa_alpha[2u * j + 1u]) - 2.0 * kappa * (1.0 - s);
    }
    barrier();
    float m = -3.0e38;
    for (uint j = 0u; j < p.n_splats; j++) m = max(m, s_c[j]);
    barrier();
    float zpart = 0.0;
    for (uint j = t; j < p.n_splats; j += 64u) {
        s_c[j] = exp(s_c[j] - m);
        zpart += s_c[j];
    }
    float z = reduce_sum(zpart);
    for (uint j = t; j < p.n_splats; j += 64u) s_c[j] *= 2.0 * kappa_alpha[2u * j] / z;
    barrier();
    // u . x = sum_j c_j s_j, from u itself below; and xi . x.
    float ux_part = 0.0, xix_part = 0.0;
    for (uint k = t; k < p.dim; k += 64u) {
        float u = 0.0;
        for (uint j = 0u; j < p.n_splats; j++) u = fma(s_c[j], mu[j * p.dim + k], u);
        ux_part = fma(u, x[x0 + k], ux_part);
        xix_part = fma(xi[x0 + k], x[x0 + k], xix_part);
    }
    float ux = reduce_sum(ux_part);
    float xix = reduce_sum(xix_part);
    float norm_part = 0.0;
    float next[16];
    uint n_mine = 0u;
    for (uint k = t; k < p.dim; k += 64u) {
        float u = 0.0;
        for (uint j = 0u; j < p.n_splats; j++) u = fma(s_c[j], mu[j * p.dim + k], u);
        float xv = x[x0 + k];
        float v = xv + p.dt * (u - ux * xv) + p.noise_scale * (xi[x0 + k] - xix * xv);
        next[n_mine++] = v;
        norm_part = fma(v, v, norm_part);
    }
    float inv = inversesqrt(reduce_sum(norm_part));
    // Every read of x is done (the reductions above are barriers): write the new position.
    n_mine = 0u;
    for (uint k = t; k < p.dim; k += 64u) x[x0 + k] = next[n_mine++] * inv;
}
