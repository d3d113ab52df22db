"""Data-parallel fine-tuning on 2 CPU processes (gloo): masks and weights identical on every rank; only rank 0 writes."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

from conftest import TinyNet


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, result_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from edgeprune.prune.pruner import FineGrainedPruner
        from edgeprune.training import finetune

        torch.manual_seed(0)
        model = TinyNet()
        pruner = FineGrainedPruner(model, {"conv.weight": 0.5, "fc.weight": 0.7})
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        generator = torch.Generator().manual_seed(1)
        data = TensorDataset(torch.randn(96, 3, 5, 5, generator=generator), torch.randint(0, 7, (96,), generator=generator))
        finetune(model, pruner, DataLoader(data, batch_size=8, shuffle=True), 2, DataLoader(data, batch_size=32), lr=1e-2)

        # Every rank must hold the same masks and weights: gather them all and compare on rank 0.
        mine = {"masks": {n: m.int() for n, m in pruner.masks.items()}, "params": dict(model.named_parameters())}
        gathered = [None] * world
        dist.all_gather_object(gathered, {k: {n: t.detach().cpu() for n, t in v.items()} for k, v in mine.items()})
        if rank == 0:
            same_masks = all(torch.equal(g["masks"][n], gathered[0]["masks"][n]) for g in gathered for n in mine["masks"])
            same_params = all(torch.equal(g["params"][n], gathered[0]["params"][n]) for g in gathered for n in mine["params"])
            zeros_kept = all(bool((model.get_parameter(n)[~pruner.masks[n]] == 0).all()) for n in pruner.masks)
            moved = any(not torch.equal(before[n], p) for n, p in model.named_parameters())
            with open(result_path, "w") as f:
                json.dump({"same_masks": same_masks, "same_params": same_params, "zeros_kept": zeros_kept, "moved": moved}, f)
        dist.barrier()  # no process leaves the group while another may still be sending to it (gloo aborts then)
    finally:
        dist.destroy_process_group()


def test_two_processes_keep_identical_masks_and_weights(tmp_path):
    result = tmp_path / "result.json"
    mp.spawn(_worker, args=(2, _free_port(), str(result)), nprocs=2, join=True)
    assert json.loads(result.read_text()) == {"same_masks": True, "same_params": True, "zeros_kept": True, "moved": True}


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="torchrun not installed")
def test_torchrun_scan_is_shared_out_by_layer_and_equals_the_single_process_scan(tmp_path, fashion_slice):
    """edgeprune scan on 2 processes: each scans half the layers; rank 0 writes the gathered scan, equal to one process's."""
    from edgeprune.cli import main

    data = ["--data-dir", fashion_slice, "--val-size", "100"]
    assert main(["train", *data, "--epochs", "1", "--out", str(tmp_path / "base.safetensors")]) == 0
    assert main(["scan", str(tmp_path / "base.safetensors"), *data, "--out", str(tmp_path / "alone")]) == 0
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "edgeprune", "scan", str(tmp_path / "base.safetensors"),
           *data, "--out", str(tmp_path / "shared")]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("wrote") == 1  # rank 1 scanned its layers but wrote nothing
    alone, shared = (json.loads((tmp_path / d / "scan.json").read_text()) for d in ("alone", "shared"))
    assert shared["meta"]["layers_per_process"] == [2, 2] and alone["meta"]["layers_per_process"] == [4]  # BasicCNN's 4
    assert shared["accuracies"] == alone["accuracies"] and list(shared["accuracies"]) == list(alone["accuracies"])
    assert shared["dense_accuracy"] == alone["dense_accuracy"] and shared["layer_sizes"] == alone["layer_sizes"]


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="torchrun not installed")
def test_torchrun_run_writes_one_report_from_rank_0(tmp_path, fashion_slice):
    out = tmp_path / "run"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "edgeprune", "run", "--mcu", "none", "--force", "--data-dir", fashion_slice,
           "--val-size", "100", "--limit", "300", "--epochs", "1", "--finetune-epochs", "1", "--plan", "global",
           "--out", str(out)]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert [row["model"] for row in results["comparison"]] == ["Baseline", "Pruned", "Fine-tuned + pruned"]
    assert proc.stdout.count("report:") == 1  # rank 1 ran the same steps but wrote nothing of the run's
