"""Data-parallel training (``torchrun``): gradients averaged over processes, every process ends with the same
weights, and the ``glus train`` command runs under torchrun. Real Gloo process groups on the CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]


def _init(rank: int, world_size: int, port: int):
    from model.distributed import init_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world_size), RANK=str(rank))
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(1)
    return init_distributed("cpu")


def _average_worker(rank: int, world_size: int, port: int, out: str) -> None:
    context, _ = _init(rank, world_size, port)
    a = torch.nn.Parameter(torch.zeros(2, 3))
    b = torch.nn.Parameter(torch.zeros(4))
    a.grad = torch.full((2, 3), float(rank + 1))
    b.grad = None if rank == 0 else torch.arange(4.0)  # a parameter unused on one process
    context.average_gradients([a, b])
    Path(out, f"{rank}.json").write_text(json.dumps({"a": a.grad.tolist(), "b": b.grad.tolist()}))
    context.shutdown()


def _train_worker(rank: int, world_size: int, port: int, out: str) -> None:
    from test_training import _toy_videos

    from model.factory import random_model
    from model.trainer import TrainConfig, Trainer

    context, device = _init(rank, world_size, port)
    torch.manual_seed(100 + rank)  # different initial weights: the broadcast must make them equal
    model, tok = random_model("glus-tiny", seed=rank)
    config = TrainConfig(steps=2, batch_size=2, lr=1e-3, warmup_steps=1, train_parts="lora", log_every=100)
    trainer = Trainer(model, tok, config, device=device, distributed=context)
    trainer.fit(iter([_toy_videos(10 * rank + s) for s in range(2)]))  # each process its own videos
    trained = torch.cat([p.detach().reshape(-1) for p in trainer.params])
    gathered = [torch.zeros_like(trained) for _ in range(world_size)]
    dist.all_gather(gathered, trained)
    Path(out, f"{rank}.json").write_text(
        json.dumps({"same": all(torch.equal(gathered[0], g) for g in gathered), "norm": float(trained.norm())})
    )
    context.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gradients_are_averaged_over_processes(tmp_path):
    mp.spawn(_average_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        grads = json.loads((tmp_path / f"{rank}.json").read_text())
        assert grads["a"] == [[1.5] * 3] * 2  # (1 + 2) / 2
        assert grads["b"] == [0.0, 0.5, 1.0, 1.5]  # the missing gradient counted as zero


def test_data_parallel_processes_train_the_same_weights_from_different_videos(tmp_path):
    mp.spawn(_train_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert all(r["same"] for r in results), results


def test_glus_train_runs_under_torchrun(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "model.cli", "train", "--synthetic", "--config", "glus-tiny", "--sam-image-size", "64",
        "--steps", "2", "--batch-size", "1", "--warmup", "1", "--threads", "1", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((out / "train_config.json").read_text())
    assert config["processes"] == 2
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 2  # rank 0 alone logs
    assert (out / "model.safetensors").is_file()
