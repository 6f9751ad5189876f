"""Peak memory of a Lanczos run against the m * P * bytes estimate of its basis.

For P in {1e5, 1e6, 1e7} and m = 50 steps on a diagonal float32 operator (so the operator itself
costs nothing), each configuration runs in a fresh process and reports its peak resident memory
(RSS) above the process's baseline, and on CUDA the peak allocated GPU memory. Configurations:
the basis in the operator's dtype (float32), in bfloat16, and (on CUDA) on the CPU while the
operator runs on the GPU. Writes benchmarks/results/memory.md.

Run: ``python benchmarks/memory.py [--steps 50] [--sizes 1e5,1e6,1e7]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from _report import write_report  # benchmarks/_report.py (this script's folder)

_CHILD = r"""
import json, resource, sys, torch
from lanczos_optim import lanczos
P, m, storage, device = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
diag = torch.linspace(0.0, 1.0, P, device=device)
gen = torch.Generator(device=device).manual_seed(0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if device == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    gpu0 = torch.cuda.memory_allocated()
kw = {}
if storage == "bfloat16":
    kw["basis_dtype"] = torch.bfloat16
elif storage == "cpu":
    kw["basis_device"] = "cpu"
res = lanczos(lambda v: diag * v, m, dim=P, dtype=torch.float32, device=device, generator=gen, **kw)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {"rss_mib": (peak - base) / 1024, "top": float(res.ritz_values[-1])}
if device == "cuda":
    torch.cuda.synchronize()
    out["gpu_mib"] = (torch.cuda.max_memory_allocated() - gpu0) / 2**20
print(json.dumps(out))
"""


def run(p: int, m: int, storage: str, device: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(p), str(m), storage, device],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sizes", default="1e5,1e6,1e7")
    parser.add_argument("--out", default="benchmarks/results/memory.md")
    args = parser.parse_args()
    import torch

    sizes = [int(float(s)) for s in args.sizes.split(",")]
    configs = [("cpu", "float32", 4), ("cpu", "bfloat16", 2)]
    if torch.cuda.is_available():
        configs += [("cuda", "float32", 4), ("cuda", "bfloat16", 2), ("cuda", "cpu", 4)]
    lines = [
        f"Lanczos with m = {args.steps} steps on a diagonal float32 operator; peak memory above "
        "the process baseline, each row a fresh process. Estimate: m * P * bytes of the basis.",
        "",
        "| device | basis storage | P | estimate MiB | peak RSS MiB | peak GPU MiB |",
        "|---|---|---|---|---|---|",
    ]
    for device, storage, nbytes in configs:
        for p in sizes:
            r = run(p, args.steps, storage, device)
            est = args.steps * p * nbytes / 2**20
            gpu = f"{r['gpu_mib']:.0f}" if "gpu_mib" in r else "-"
            lines.append(
                f"| {device} | {storage} | {p:.0e} | {est:.0f} | {r['rss_mib']:.0f} | {gpu} |"
            )
            print(lines[-1], flush=True)
    self_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    lines += ["", f"(largest child process peak RSS: {self_peak:.0f} MiB)"]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
