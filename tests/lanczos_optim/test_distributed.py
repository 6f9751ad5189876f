"""Two gloo processes on the CPU give the single-process spectra (torchrun)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

_WORKER = Path(__file__).with_name("_dist_worker.py")
_spec = importlib.util.spec_from_file_location("_dist_worker", _WORKER)
_worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_worker)
pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


def test_two_processes_match_one(tmp_path: Path) -> None:
    out = tmp_path / "dist.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(_WORKER), str(out)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, x, y = _worker.problem()
    single = _worker.spectra(model, _worker.batches(x, y, size=7))
    with np.load(out, allow_pickle=False) as multi:
        for key, ref in single.items():
            np.testing.assert_allclose(multi[key], ref, rtol=1e-6, atol=1e-9, err_msg=key)
        np.testing.assert_array_equal(multi["other_rank_hessian"], multi["hessian_ritz"])


def test_optimizers_over_two_processes_match_one_process(tmp_path: Path) -> None:
    out = tmp_path / "optim.npz"
    worker = Path(__file__).with_name("_dist_optim_worker.py")
    spec = importlib.util.spec_from_file_location("_dist_optim_worker", worker)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(worker), str(out)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from lanczos_optim import LanczosNewton, LanczosSaddleFreeNewton

    with np.load(out, allow_pickle=False) as multi:
        for name, cls in (("newton", LanczosNewton), ("saddle_free", LanczosSaddleFreeNewton)):
            # Parameters identical on both ranks...
            np.testing.assert_array_equal(multi[name], multi[f"{name}_rank1"])
            # ... and equal to one process on the whole batch (mean of the shards' means).
            model, x, y = module.problem()
            single = module.train(model, cls, x, y)
            np.testing.assert_allclose(multi[name], single, rtol=1e-9, atol=1e-12, err_msg=name)
            start, _, _ = module.problem()
            moved = np.abs(
                single - torch.nn.utils.parameters_to_vector(start.parameters()).detach().numpy()
            ).max()
            assert moved > 1e-3  # the optimiser did move the parameters
