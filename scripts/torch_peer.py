"""The torch peer of scripts/device-gpu.sh, on the lent GPU: the device-to-device copy bandwidth (the
ceiling for memory-bound kernels: bytes read plus bytes written per second) and exact search on the
same data as the engine (fp32 matmul + topk), timed with CUDA events, median of repeats."""
import argparse, json
import torch

p = argparse.ArgumentParser()
p.add_argument("--json")
p.add_argument("--queries", type=int, default=4000)
p.add_argument("--k", type=int, default=10)
a = p.parse_args()
dev = "cuda"
torch.backends.cuda.matmul.allow_tf32 = False


def timed(f, reps=20):
    f(); torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); f(); e.record(); torch.cuda.synchronize()
        out.append(s.elapsed_time(e) / 1e3)
    out.sort()
    return out[len(out) // 2]


res = {"device": torch.cuda.get_device_name(0)}
n = 1 << 30  # 4 GiB of f32
src = torch.rand(n, device=dev)
dst = torch.empty_like(src)
t = timed(lambda: dst.copy_(src), reps=10)
res["copy_gb_per_s"] = 2 * 4 * n / t / 1e9
del src, dst
import numpy as np
base = torch.from_numpy(np.load("/tmp/base.npy")).to(dev)
q = torch.from_numpy(np.load("/tmp/query.npy")[: a.queries]).to(dev)
for b in (8, 64, 512, q.shape[0]):
    qb = q[:b]
    t = timed(lambda: torch.topk(qb @ base.T, a.k, dim=1))
    res[f"exact_fp32_b{b}_s"] = t
    res[f"exact_fp32_b{b}_qps"] = b / t
    res[f"exact_fp32_b{b}_candidate_gb_per_s"] = base.numel() * 4 / t / 1e9
print(json.dumps(res, indent=1))
if a.json:
    open(a.json, "w").write(json.dumps(res, indent=1))
print(f"copy {res['copy_gb_per_s']:.0f} GB/s; torch exact fp32 batch {q.shape[0]}: {res[f'exact_fp32_b{q.shape[0]}_qps']:.0f} QPS; batch 8: {res['exact_fp32_b8_s']*1e3:.3f} ms ({res['exact_fp32_b8_candidate_gb_per_s']:.0f} GB/s of candidates)")
