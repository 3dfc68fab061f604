"""Real-scale rehearsal: the released glus-7b file layouts, loaded and run on this machine, before any GPU time.

It writes seeded random weights at full glus-7b shapes in the three layouts users mount (a released GLUS folder:
bf16 ``.bin`` shards with an index, as the GLUS merge script writes them; a CLIP folder as
``openai/clip-vit-large-patch14`` is published, text tower and ``position_ids`` included; an official SAM-2
Hiera-L ``.pt``), then, each phase in a fresh process so that its peak memory is its own:

* ``load``    - loads them through ``model.checkpoint.load_checkpoint`` (what the worker and ``glus segment`` call)
  in bf16 and reports load time and peak RSS against the bytes of the weights in bf16;
* ``segment`` - ``glus segment`` on the first frames of ``../shared/data/videos/dog.mp4`` in bf16 (seconds per frame);
* ``worker``  - ``/predict`` through the web app, then a ``glus-backend worker --burst`` serving that folder, on a
  Redis prefix of its own; reports the prediction's ``model_version`` and the worker's time;
* ``finetune`` - one step of the fine-tuning recipe (LoRA r=8 on q/v; embeddings, LM head, projectors and mask
  decoder in full; bf16 base, float32 master weights and AdamW states, gradient checkpointing) on a clip of the
  video with a box as its mask, the memory breakdown, then the result saved as a delta and registered in a
  version store: its size against the base.

The weights are random, so the masks mean nothing; the point is that the real files load, fit and run. So that
every frame runs the whole LLM -> [SEG] -> SAM-2 path, the random LLM is made to predict ``[SEG]``: channel 0 of
every token embedding is 1000, the final norm keeps only channel 0, and only the ``[SEG]`` row of the LM head
reads it. The tokenizer is the project's small SentencePiece model (the LLaMA tokenizer cannot be downloaded
here); its ids fall inside the 32004-row embedding.

    python bench/rehearse_7b.py                                  # glus-7b: ~17 GB of files under --workdir
    python bench/rehearse_7b.py --config glus-tiny --phases write,load,segment   # the same code at test size

``--config glus-tiny`` is glus-tiny's LLM and CLIP with a real SAM-2 Hiera-T (``--sam2-config``), for tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DOG = ROOT.parent / "shared" / "data" / "videos" / "dog.mp4"
PHASES = ("write", "load", "segment", "worker", "finetune")
SEG_CHANNEL, SEG_EMBEDDING = 0, 1000.0


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB"


def rehearsal_config(name: str, sam2: str, sam2_overrides: list[str] | None = None):
    """``name``'s config with the SAM-2 of ``sam2`` as a released folder gets it (no overrides, unless given:
    test sizes only)."""
    from model.config import get_config, sam2_config_path

    config = get_config(name)
    config.sam2_config, config.sam2_overrides = sam2_config_path(sam2), list(sam2_overrides or [])
    return config


def folders(workdir: Path) -> dict[str, Path]:
    return {"glus": workdir / "glus", "clip": workdir / "clip", "sam2": workdir / "sam2.pt"}


def served_bytes(config, dtype) -> int:
    """Bytes of the whole network's parameters in ``dtype`` (what serving holds)."""
    from model.checkpoint import build_empty

    model = build_empty(config)
    size = __import__("torch").empty((), dtype=dtype).element_size()
    return sum(p.numel() for p in model.parameters()) * size


def weights_stamp(config_name: str, sam2_config: str, sam2_overrides: list[str] | None = None) -> dict:
    """What ``rehearsal.json`` records of the weights in a workdir (:func:`write_weights` writes it)."""
    stamp = {"config": config_name, "sam2": sam2_config}
    if sam2_overrides:
        stamp["sam2_overrides"] = list(sam2_overrides)
    return stamp


def has_weights(workdir: Path, config_name: str, sam2_config: str, sam2_overrides: list[str] | None = None) -> bool:
    """Whether ``workdir`` already holds the weights of this configuration (a second run reuses them)."""
    stamp = workdir / "rehearsal.json"
    return stamp.is_file() and json.loads(stamp.read_text()) == weights_stamp(config_name, sam2_config, sam2_overrides)


def finetune_recipe(steps: int = 1):
    """The fine-tuning step the rehearsals measure: LoRA on q/v, embeddings, LM head, projectors and mask decoder in
    full, bf16 base with float32 master weights and AdamW states, gradient checkpointing, 4 query frames of one
    expression."""
    from model.trainer import TrainConfig

    return TrainConfig(steps=steps, batch_size=1, lr=3e-4, warmup_steps=1, train_parts="lora", precision="bf16",
                       gradient_checkpointing=True, expressions_per_video=1, query_frames=4,
                       contrastive_weight=0.1)  # fmt: skip


def write_weights(config_name: str, sam2_config: str, workdir: Path, fmt: str = "bin", shard_bytes: int = 10**10,
                  device: str = "cpu", sam2_overrides: list[str] | None = None) -> dict:
    """Seeded random weights at ``config_name``'s shapes in the released layouts under ``workdir``
    (:func:`folders`), the LLM made to predict ``[SEG]`` (module docstring). ``device`` makes the random numbers
    (a GPU makes 7 B of them in a moment; the files are the same layout either way); ``sam2_overrides`` shrink
    SAM-2 (test sizes). Returns seconds and bytes."""
    import torch

    from model.checkpoint import build_empty
    from model.factory import tiny_tokenizer
    from model.released_layout import (
        CLIP_L_TEXT_CONFIG,
        clip_text_tensors,
        parameter_shapes,
        random_tensors,
        released_llava_config,
        write_clip_folder,
        write_released_glus,
        write_sam2_pt,
    )

    config = rehearsal_config(config_name, sam2_config, sam2_overrides)
    tokenizer = tiny_tokenizer()
    if config_name == "glus-tiny":
        config.llm["vocab_size"] = len(tokenizer)
    seg_id = tokenizer.token_to_id(config.seg_token)
    shapes = parameter_shapes(build_empty(config))
    paths = folders(workdir)
    started = time.perf_counter()

    def with_seg_bias(items):
        """Make the random LLM predict [SEG] (see the module docstring)."""
        for key, tensor in items:
            if key == "language_model.model.embed_tokens.weight":
                tensor[:, SEG_CHANNEL] = SEG_EMBEDDING
            elif key == "language_model.model.norm.weight":
                tensor.zero_()[SEG_CHANNEL] = 1.0
            elif key == "language_model.lm_head.weight":
                tensor[:, SEG_CHANNEL] = 0.0
                tensor[seg_id, SEG_CHANNEL] = 1.0
            yield key, tensor

    def made(only, seed, dtype=torch.float32):
        return random_tensors({k: s for k, s in shapes.items() if only(k)}, seed=seed, dtype=dtype, device=device)

    llava = released_llava_config(config.llm, config.vision_hidden_size, 256, torch.bfloat16)
    glus = made(lambda k: not k.startswith("vision_tower."), 1, torch.bfloat16)
    write_released_glus(paths["glus"], with_seg_bias(glus), llava, tokenizer, fmt, torch.bfloat16, shard_bytes)
    text_config = CLIP_L_TEXT_CONFIG if config_name == "glus-7b" else dict(
        CLIP_L_TEXT_CONFIG, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
        projection_dim=64)  # fmt: skip
    write_clip_folder(paths["clip"], made(lambda k: k.startswith("vision_tower."), 2), config.vision, "hub",
                      clip_text_tensors(text_config, config.vision_hidden_size, seed=3), text_config)  # fmt: skip
    write_sam2_pt(paths["sam2"], made(lambda k: k.startswith("sam."), 4))
    sizes = {name: sum(f.stat().st_size for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file())
             for name, p in paths.items()}  # fmt: skip
    (workdir / "rehearsal.json").write_text(json.dumps(weights_stamp(config_name, sam2_config, sam2_overrides)))
    return {"seconds": time.perf_counter() - started, "bytes": sizes}


# --- phases (each runs in its own process; prints one JSON line) ---
def phase_write(args: argparse.Namespace) -> dict:
    return write_weights(args.config, args.sam2_config, args.workdir, args.format, int(args.shard_gb * 1e9))


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only), so that the next read comes from the disk."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def read_seconds(files: list[Path]) -> float:
    """Seconds to read ``files`` from end to end and do nothing with the bytes (the disk's share of a load)."""
    started = time.perf_counter()
    buffer = bytearray(16 * 2**20)
    for file in files:
        with file.open("rb", buffering=0) as stream:
            while stream.readinto(buffer):
                pass
    return time.perf_counter() - started


def phase_load(args: argparse.Namespace) -> dict:
    import torch

    from model.checkpoint import load_checkpoint
    from model.weights import WeightSource

    paths = folders(args.workdir)
    torch.set_num_threads(args.threads)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cold_read = None
    if args.cold and drop_page_cache():
        files = [f for p in paths.values() for f in WeightSource(p).files]
        cold_read = {"seconds": read_seconds(files), "bytes": sum(f.stat().st_size for f in files)}
        drop_page_cache()
    started = time.perf_counter()
    model, _ = load_checkpoint(paths["glus"], paths["clip"], paths["sam2"], "cpu", torch.bfloat16, args.sam2_config)
    seconds = time.perf_counter() - started
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"seconds": seconds, "weights_bytes": weights, "parameters": sum(p.numel() for p in model.parameters()),
            "baseline_rss": baseline, "cold_read": cold_read}  # fmt: skip


def _peak_rss_of(command: list[str], env: dict | None = None, timeout: float | None = None) -> tuple[str, int, float]:
    """Run ``command`` under ``/usr/bin/time``; its output, peak RSS in bytes and wall seconds."""
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "PEAK_RSS_KB %M", *command], capture_output=True, text=True,
                          env=env, timeout=timeout)  # fmt: skip
    seconds = time.perf_counter() - started
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({done.returncode}):\n{output[-3000:]}")
    peak = int(re.findall(r"PEAK_RSS_KB (\d+)", output)[-1]) * 1024
    return output, peak, seconds


def phase_segment(args: argparse.Namespace) -> dict:
    paths = folders(args.workdir)
    out = args.workdir / "segment-out"
    command = [sys.executable, "-m", "model.cli", "segment", str(args.video), "-e", "the dog",
               "--max-frames", str(args.frames), "--checkpoint", str(paths["glus"]), "--clip-dir", str(paths["clip"]),
               "--sam2-checkpoint", str(paths["sam2"]), "--sam2-config", args.sam2_config, "--precision", "bf16",
               "--device", "cpu", "--out", str(out), "--no-overlay", "--quiet"]  # fmt: skip
    output, peak, seconds = _peak_rss_of(command, {**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    frames, expressions, run = re.findall(r"(\d+) frames x (\d+) expressions in ([\d.]+) s", output)[-1]
    summary = json.loads((out / args.video.stem / "expressions.json").read_text())
    return {"wall_seconds": seconds, "peak_rss": peak, "frames": int(frames), "segment_seconds": float(run),
            "seconds_per_frame": float(run) / int(frames), "present": summary["0"]["present"]}  # fmt: skip


def worker_round_trip(args: argparse.Namespace, model_env: dict[str, str], name: str = "glusrehearsal") -> dict:
    """``/predict`` through the web app on a frame-sequence task of the video's first frames, then one burst
    worker serving the model of ``model_env`` (``GLUS_CHECKPOINT`` and the like) on a Redis prefix of its own;
    the first and the final answers, ``/setup``'s, the worker's output, peak RSS and seconds."""
    import cv2
    from redis import Redis

    from glus_backend.server import create_app
    from glus_backend.settings import Settings

    files = args.workdir / "worker-files"
    (files / "dog").mkdir(parents=True, exist_ok=True)
    capture = cv2.VideoCapture(str(args.video))
    urls = []
    for t in range(args.frames):
        ok, frame = capture.read()
        if not ok:
            break
        cv2.imwrite(str(files / "dog" / f"{t:05d}.jpg"), frame)
        urls.append(f"/data/local-files/?d=dog/{t:05d}.jpg")
    capture.release()
    prefix = f"{name}{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": args.redis_url, "GLUS_QUEUE_PREFIX": prefix,
           "MODEL_DIR": str(args.workdir / "model_dir"), "GLUS_DEVICE": "cpu", "LOCAL_FILES_DOCUMENT_ROOT": str(files),
           "OMP_NUM_THREADS": str(args.threads), "LABEL_STUDIO_URL": "", "LABEL_STUDIO_API_KEY": "",
           **model_env}  # fmt: skip
    config = ('<View><Image name="frames" valueList="$frames"/><BrushLabels name="mask" toName="frames">'
              '<Label value="Object"/></BrushLabels></View>')  # fmt: skip
    task = {"id": 1, "data": {"frames": urls, "expression": "the dog"}}
    os.environ.update(env)
    redis = Redis.from_url(args.redis_url)
    try:
        client = create_app(Settings.from_env(), redis).test_client()
        first = client.post("/predict", json={"tasks": [task], "label_config": config, "project": "1.1"}).get_json()
        output, peak, seconds = _peak_rss_of(
            [sys.executable, "-m", "glus_backend.cli", "worker", "--burst", "--device", "cpu"], env
        )
        (args.workdir / "worker.log").write_text(output)
        ready = client.post("/predict", json={"tasks": [task], "label_config": config, "project": "1.1"}).get_json()
        setup = client.post("/setup", json={"project": "1.1", "schema": config}).get_json()
        if not ready["results"][0]["result"]:
            failures = [line for line in output.splitlines() if "failed" in line or "Error" in line]
            log = args.workdir / "worker.log"
            raise RuntimeError(f"the worker made no prediction; {log}:\n" + "\n".join(failures[-10:]))
    finally:
        keys = list(redis.scan_iter(f"*{prefix}*"))
        if keys:
            redis.delete(*keys)
    return {"first": first["results"][0], "ready": ready["results"][0], "setup": setup, "output": output,
            "peak_rss": peak, "seconds": seconds, "frames": len(urls)}  # fmt: skip


def phase_worker(args: argparse.Namespace) -> dict:
    """The released folder served by a burst worker (bf16, CPU): the prediction's model version."""
    paths = folders(args.workdir)
    served = worker_round_trip(args, {"GLUS_CHECKPOINT": str(paths["glus"]), "GLUS_CLIP_DIR": str(paths["clip"]),
                                      "GLUS_SAM2_CHECKPOINT": str(paths["sam2"]), "GLUS_SAM2_CONFIG": args.sam2_config,
                                      "GLUS_PRECISION": "bf16"})  # fmt: skip
    result = served["ready"]
    gaps = [float(g) for g in re.findall(r"longest heartbeat gap ([0-9.]+) s", served["output"])]
    return {"first": served["first"]["model_version"], "model_version": result["model_version"],
            "setup_model_version": served["setup"].get("model_version"), "results": len(result["result"]),
            "frames": served["frames"], "worker_seconds": served["seconds"], "peak_rss": served["peak_rss"],
            "longest_heartbeat_gap_s": max(gaps) if gaps else None}  # fmt: skip


def _video_clip(video: Path, frames: int):
    """The first ``frames`` frames of ``video`` with one expression whose mask is a centred box (the weights are
    random: any target exercises the same computation)."""
    import cv2
    import numpy as np

    from model.trainer import TrainingExpression, TrainingVideo

    capture = cv2.VideoCapture(str(video))
    images = []
    while len(images) < frames:
        ok, frame = capture.read()
        if not ok:
            break
        images.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    pixels = np.stack(images)
    masks = np.zeros(pixels.shape[:3], dtype=bool)
    height, width = masks.shape[1:]
    masks[:, height // 4 : 3 * height // 4, width // 3 : 2 * width // 3] = True
    return TrainingVideo(video.stem, pixels, [TrainingExpression("the dog", "0", (1,), masks)])


def phase_finetune(args: argparse.Namespace) -> dict:
    import torch

    from glus_backend.registry import ModelRegistry
    from model.checkpoint import load_checkpoint
    from model.train_cli import save_trained
    from model.trainer import Trainer

    paths = folders(args.workdir)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_checkpoint(paths["glus"], paths["clip"], paths["sam2"], "cpu", torch.bfloat16,
                                       args.sam2_config)  # fmt: skip
    trainer = Trainer(model, tokenizer, finetune_recipe())
    trained = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    stats = trainer.train_step([_video_clip(args.video, 8)])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    states = [t for s in trainer.optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    nbytes = lambda tensors: sum(t.numel() * t.element_size() for t in tensors)  # noqa: E731
    registry = ModelRegistry(args.workdir / "model_dir", paths["glus"], args.workdir / "store")
    started = time.perf_counter()
    parent = registry.base().version
    naming = time.perf_counter() - started
    staging = args.workdir / "staging" / uuid.uuid4().hex[:8]
    save_trained(model.eval(), tokenizer, staging, torch.bfloat16, parent_version=parent)
    record = registry.register(staging, {"parent": parent, "rehearsal": True})
    return {
        "step_seconds": stats.seconds, "loss": stats.loss, "peak_rss": peak, "rss_before_step": before,
        "frozen_bytes": nbytes(frozen), "trained_bytes": nbytes(trained),
        "trained_parameters": sum(p.numel() for p in trained),
        "gradient_bytes": nbytes([p.grad for p in trained if p.grad is not None]), "optimizer_bytes": nbytes(states),
        "version": record.version, "version_bytes": registry.store.size(record.version),
        "base_bytes": sum(f.stat().st_size for f in paths["glus"].iterdir() if f.is_file()),
        "naming_seconds": naming,
    }  # fmt: skip


def run_phase(args: argparse.Namespace) -> int:
    phases = {"write": phase_write, "load": phase_load, "segment": phase_segment, "worker": phase_worker,
              "finetune": phase_finetune}  # fmt: skip
    outcome = phases[args.phase](args)
    outcome["process_peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("PHASE_RESULT " + json.dumps(outcome), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/glus-7b-rehearsal"))
    parser.add_argument("--config", choices=("glus-7b", "glus-tiny"), default="glus-7b")
    parser.add_argument("--sam2-config", default=None, help="default: sam2-hiera-l (glus-7b), sam2-hiera-t (tiny)")
    parser.add_argument("--format", choices=("bin", "safetensors"), default="bin", help="released GLUS shards")
    parser.add_argument("--shard-gb", type=float, default=10.0, help="shard size (transformers 4.31: 10 GB)")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma separated, of {', '.join(PHASES)}")
    parser.add_argument("--frames", type=int, default=3, help="frames of the video to segment")
    parser.add_argument("--video", type=Path, default=DOG)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"))
    parser.add_argument("--rewrite", action="store_true", help="write the weights even if the workdir has them")
    parser.add_argument("--cold", action="store_true", help="load: drop the page cache first (root) and compare "
                        "with reading the files alone")  # fmt: skip
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.sam2_config = args.sam2_config or ("sam2-hiera-l" if args.config == "glus-7b" else "sam2-hiera-t")
    if args.phase:
        return run_phase(args)
    import torch

    args.workdir.mkdir(parents=True, exist_ok=True)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if "write" in phases and has_weights(args.workdir, args.config, args.sam2_config) and not args.rewrite:
        phases.remove("write")
        print(f"weights already in {args.workdir} (--rewrite to write them again)")
    print(f"machine: {machine()}; torch {torch.__version__}; config {args.config}, SAM-2 {args.sam2_config}")
    results = {}
    for phase in phases:
        argv = [a for a in sys.argv[1:]]
        command = [sys.executable, __file__, *argv, "--phase", phase]
        print(f"--- {phase}", flush=True)
        output, peak, seconds = _peak_rss_of(command)
        line = [x for x in output.splitlines() if x.startswith("PHASE_RESULT ")][-1]
        results[phase] = {**json.loads(line.removeprefix("PHASE_RESULT ")), "peak_rss": peak, "phase_seconds": seconds}
        print(json.dumps(results[phase]), flush=True)
    report(args, results)
    return 0


def report(args: argparse.Namespace, results: dict) -> None:
    import torch

    gb = 1e9
    bf16 = served_bytes(rehearsal_config(args.config, args.sam2_config), torch.bfloat16)
    print(f"\n## Rehearsal at {args.config} shapes ({machine()})")
    print(f"weights in bf16: {bf16 / gb:.2f} GB")
    if "write" in results:
        sizes = results["write"]["bytes"]
        print(f"write: {results['write']['seconds']:.0f} s; files: " +
              ", ".join(f"{k} {v / gb:.2f} GB" for k, v in sizes.items()))  # fmt: skip
    if "load" in results:
        load = results["load"]
        served = load["weights_bytes"]
        print(f"load (bf16, CPU): {load['seconds']:.1f} s for {load['parameters'] / 1e9:.2f} B parameters; weights as "
              f"served {served / gb:.2f} GB (bf16, SAM-2 float32); peak RSS {load['peak_rss'] / gb:.2f} GB = "
              f"{load['peak_rss'] / served:.3f}x the served weights, {load['peak_rss'] / bf16:.3f}x all-bf16 weights "
              f"(a bare `import model.checkpoint` process: {load['baseline_rss'] / gb:.2f} GB)")
        if load.get("cold_read"):
            cold = load["cold_read"]
            print(f"  page cache dropped first: reading the same files alone takes {cold['seconds']:.1f} s "
                  f"({cold['bytes'] / gb:.2f} GB, {cold['bytes'] / gb / cold['seconds']:.2f} GB/s); the load is "
                  f"{load['seconds'] / cold['seconds']:.2f}x that")
    if "segment" in results:
        seg = results["segment"]
        print(f"glus segment: {seg['frames']} frames of {args.video.name}, {seg['seconds_per_frame']:.1f} s/frame "
              f"after loading ({seg['wall_seconds']:.0f} s in all); peak RSS {seg['peak_rss'] / gb:.2f} GB = "
              f"{seg['peak_rss'] / bf16:.3f}x; [SEG] on {seg['present']}/{seg['frames']} frames")
    if "finetune" in results:
        tune = results["finetune"]
        parts = ("frozen_bytes", "trained_bytes", "gradient_bytes", "optimizer_bytes")
        rest = tune["peak_rss"] - sum(tune[k] for k in parts)
        print(f"fine-tuning step (LoRA recipe, bf16 base, float32 master weights + AdamW, gradient checkpointing): "
              f"{tune['step_seconds']:.0f} s, loss {tune['loss']:.3f}; peak RSS {tune['peak_rss'] / gb:.2f} GB = "
              f"frozen weights {tune['frozen_bytes'] / gb:.2f} + trained {tune['trained_bytes'] / gb:.2f} "
              f"({tune['trained_parameters'] / 1e6:.0f} M parameters, float32) + gradients "
              f"{tune['gradient_bytes'] / gb:.2f} + AdamW states {tune['optimizer_bytes'] / gb:.2f} + the rest "
              f"{rest / gb:.2f} (activations, the process)")
        print(f"stored version {tune['version']}: {tune['version_bytes'] / gb:.3f} GB = "
              f"{100 * tune['version_bytes'] / tune['base_bytes']:.1f} % of the base's "
              f"{tune['base_bytes'] / gb:.2f} GB "
              f"(naming the base by its content: {tune['naming_seconds']:.0f} s, once per host)")
    if "worker" in results:
        worker = results["worker"]
        print(f"worker: prediction {worker['model_version']} ({worker['results']} results, {worker['frames']} "
              f"frames; /setup says {worker['setup_model_version']}) in {worker['worker_seconds']:.0f} s; "
              f"peak RSS {worker['peak_rss'] / gb:.2f} GB; longest gap between the worker's heartbeats during the "
              f"job {worker['longest_heartbeat_gap_s']} s (GLUS_HEARTBEAT_TTL default 30 s)")


if __name__ == "__main__":
    sys.exit(main())
