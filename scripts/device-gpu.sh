#!/usr/bin/env bash
# The GPU check of issue 20, run on a lent device machine from the carry folder that
# `cargo xtask gpu-devrun` fills (.devrun: bench-gpu, this script, torch_peer.py, base.f16, query.f16)
# with the Vulkan loader debs in .gl. One call:
#   bash .devrun/device-gpu.sh
# with carry [".devrun", ".gl"]. Results land in $OUT; a short table is printed last.
set -u
OUT=${OUT:-/tmp/m2m-out}
mkdir -p "$OUT"
D=.devrun
log() { echo "== $*" | tee -a "$OUT/log.txt"; }

if ! ldconfig -p | grep -q libvulkan.so.1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
if ! ls /usr/share/vulkan/icd.d/*nvidia* /etc/vulkan/icd.d/*nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/nvidia/share/vulkan/icd.d 2>&1 | tee -a "$OUT/log.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,clocks.mem --format=csv 2>&1 | tee "$OUT/smi.txt"
nproc | tee -a "$OUT/smi.txt"

log "smoke: the Vulkan device and one IVF batch against the CPU twin"
timeout 60 "$D/bench-gpu" --smoke 2>&1 | tee "$OUT/smoke.txt" || { echo "SMOKE FAILED"; exit 1; }

log "data: f16 -> f32 npy"
python3 - <<'PY' 2>&1 | tee -a "$OUT/log.txt"
import numpy as np
for name, rows in (("base", None), ("query", None)):
    a = np.fromfile(f".devrun/{name}.f16", dtype="<f2").reshape(-1, 384).astype("<f4")
    np.save(f"/tmp/{name}.npy", a)
    print(name, a.shape)
PY

log "torch peer: copy bandwidth, exact search"
PYTHONUNBUFFERED=1 timeout 120 python3 "$D/torch_peer.py" --json "$OUT/torch.json" 2>&1 | tee "$OUT/torch.txt"

log "engine: CPU (2 threads, all) against the device, kernels, Langevin"
RUST_LOG=info timeout 240 "$D/bench-gpu" --base /tmp/base.npy --queries /tmp/query.npy --n-queries 4000 \
    --cpu-threads 2 --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"

echo; echo "==== summary"; cat "$OUT/smi.txt"; tail -n 4 "$OUT/torch.txt"; sed -n '/^$/,$p' "$OUT/bench.txt" | tail -n 25
