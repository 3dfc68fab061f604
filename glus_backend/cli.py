"""``glus-backend``: run and operate the Label Studio backend.

glus-backend serve [--port 9090]                 # the web process (gunicorn)
glus-backend worker [--queues predict,ingest]    # one GPU/CPU worker; --devices cuda:0,cuda:1 for one per GPU
glus-backend status                              # queue depths, workers, model version
glus-backend job JOB_ID                          # one job's status, progress and error
glus-backend retry JOB_ID                        # run a failed job again
glus-backend import-videos VIDEO... --project ID --expression "..."   # videos -> frame-sequence tasks
glus-backend versions [--prune [--dry-run]]      # registered versions, gate metrics, the one served; reclaim disk
glus-backend promote VERSION                     # serve VERSION (workers switch between jobs)
glus-backend rollback [VERSION]                  # undo the last promotion, or serve VERSION
glus-backend train --project ID [--enqueue]      # fine-tune on the project's corrections now (or on a worker)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .settings import Settings

logger = logging.getLogger("glus_backend")


def _registry():
    """The registry with the served version shared through Redis (``REDIS_URL``), as the workers see it."""
    from redis import Redis

    from .registry import ModelRegistry

    settings = Settings.from_env()
    return ModelRegistry.from_settings(settings, Redis.from_url(settings.redis_url))


def cmd_versions(args: argparse.Namespace) -> int:
    from .registry import NoModelError

    registry = _registry()
    if args.prune:
        removed = registry.prune(dry_run=args.dry_run)
        verb = "would delete" if args.dry_run else "deleted"
        for name, size in removed:
            print(f"{verb} {name} ({size / 1e6:.1f} MB)")
        print(f"{verb} {len(removed)} never-served version(s), {sum(s for _, s in removed) / 1e9:.2f} GB")
        return 0
    try:
        current = registry.current()
        served = f"{current.version} ({current.source}: {current.path})"
    except NoModelError as exc:
        current, served = None, f"none ({exc})"
    print(f"served: {served}")
    records = registry.versions()
    if not records:
        print("no trained versions yet")
    for record in records:
        meta = record.metadata
        gate = meta.get("gate", {})
        mark = "*" if current is not None and record.version == current.version else " "
        print(
            f"{mark} {record.version}  parent {meta.get('parent', '?')}  data {meta.get('data_snapshot', '?')}  "
            f"J&F {gate.get('candidate_jf', float('nan')):.3f} vs {gate.get('current_jf', float('nan')):.3f}  "
            f"{'promoted' if gate.get('promoted') else 'refused' if gate else ''}"
        )
    return 0


def cmd_switch_version(args: argparse.Namespace) -> int:
    """``promote VERSION`` or ``rollback [VERSION]``: change the version served."""
    registry = _registry()
    try:
        if args.command == "promote":
            version = registry.promote(args.version, reason="promoted by hand")
        else:
            version = registry.rollback(args.version)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    print(f"serving {version.version} ({version.source})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parents[1]
    if args.dev:
        from .server import create_app

        create_app().run(host=args.host, port=args.port, threaded=True)
        return 0
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers",
        str(args.workers),
        "--threads",
        str(args.threads),
        "--bind",
        f"{args.host}:{args.port}",
        "--timeout",
        "120",
        "--chdir",
        str(root),
        "_wsgi:app",
    ]
    os.execv(sys.executable, cmd)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from .worker import run_worker, run_worker_pool

    queues = tuple(q.strip() for q in args.queues.split(",") if q.strip())
    if args.devices:
        base = ["worker", "--queues", args.queues] + (["--burst"] if args.burst else [])
        return run_worker_pool(base, [d.strip() for d in args.devices.split(",") if d.strip()])
    run_worker(Settings.from_env(), queues=queues, burst=args.burst, device=args.device)
    return 0


def _queues():
    from redis import Redis

    from .queues import JobQueues

    settings = Settings.from_env()
    return JobQueues(Redis.from_url(settings.redis_url), settings)


def cmd_status(args: argparse.Namespace) -> int:

    from .registry import ModelRegistry, NoModelError

    queues = _queues()
    settings = queues.settings
    try:
        version = ModelRegistry.from_settings(settings, queues.redis).current_name()
    except NoModelError as exc:
        version = f"none ({exc})"
    workers = [w.name for w in queues.live_workers()]
    print(json.dumps({"model_version": version, "queues": queues.counts(), "workers": workers}, indent=2))
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    from .queues import job_view

    job = _queues().fetch(args.job_id)
    if job is None:
        logger.error("no job %s", args.job_id)
        return 1
    print(json.dumps(job_view(job), indent=2, default=str))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    queues = _queues()
    job = queues.fetch(args.job_id)
    if job is None:
        logger.error("no job %s", args.job_id)
        return 1
    job.meta.pop("error", None)
    job.meta.pop("error_kind", None)
    job.save_meta()
    job.requeue()
    logger.info("job %s requeued", args.job_id)
    return 0


def cmd_import_videos(args: argparse.Namespace) -> int:
    from .video_import import import_videos

    summary = import_videos(args)
    print(json.dumps(summary, indent=2))
    return 0


def _client_from(args: argparse.Namespace, settings: Settings):
    from .ls_client import LabelStudioClient

    url = args.label_studio_url or settings.label_studio_url
    key = args.api_key or settings.label_studio_api_key
    if not url or not key:
        logger.error("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (or --label-studio-url / --api-key)")
        return None
    return LabelStudioClient(url, key)


def cmd_export_mevis(args: argparse.Namespace) -> int:
    """Pull a project's annotations through the API into a MeViS-layout set (default: the project's correction
    set under MODEL_DIR, which the ingest jobs keep up to date)."""
    from .correction_set import CorrectionSet
    from .corrections import task_frame_loader

    settings = Settings.from_env()
    client = _client_from(args, settings)
    if client is None:
        return 2
    project = client.get_project(args.project)
    tasks = client.export_tasks(args.project)
    frames_of = task_frame_loader(client, settings, project["label_config"])
    target = CorrectionSet(args.out) if args.out else CorrectionSet.of_project(settings.model_dir, args.project)
    summary = target.rebuild(tasks, project["label_config"], frames_of, settings.expression_fields)
    print(json.dumps({"set": str(target.root), **summary}, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Fine-tune on a project's corrections now (in this process), or enqueue it for a worker."""
    settings = Settings.from_env()
    if args.enqueue:
        from redis import Redis

        from .queues import JobQueues
        from .training import enqueue_training

        queues = JobQueues(Redis.from_url(settings.redis_url), settings)
        print(json.dumps(enqueue_training(queues, args.project, "command").__dict__))
        return 0
    from .training import TrainingDataError, train_from_label_studio

    client = _client_from(args, settings)
    if client is None:
        return 2
    try:
        summary = train_from_label_studio(
            settings, client, args.project, args.device, lambda stage: logger.info("training: %s", stage)
        )
    except TrainingDataError as exc:
        logger.error("%s", exc)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def cmd_relabel(args: argparse.Namespace) -> int:
    """Enqueue predictions with the served version for a project's unannotated tasks."""
    from redis import Redis

    from .queues import JobQueues
    from .relabel import relabel_project

    settings = Settings.from_env()
    client = _client_from(args, settings)
    if client is None:
        return 2
    version = _registry().current_name()
    queues = JobQueues(Redis.from_url(settings.redis_url), settings)
    summary = relabel_project(queues, client, args.project, version)
    print(json.dumps({k: v for k, v in summary.items() if k != "jobs"}, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glus-backend", description="GLUS Label Studio ML backend")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the web process")
    serve.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "9090")))
    serve.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", "2")))
    serve.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", "8")))
    serve.add_argument("--dev", action="store_true", help="Flask's threaded server instead of gunicorn")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run a GLUS worker (loads the model once)")
    worker.add_argument("--queues", default="predict,ingest,train")
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    worker.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: GLUS_DEVICE)")
    worker.add_argument("--devices", default=None, help="one worker process per device, e.g. cuda:0,cuda:1")
    worker.set_defaults(func=cmd_worker)

    status = sub.add_parser("status", help="queue depths, workers, model version")
    status.set_defaults(func=cmd_status)
    job = sub.add_parser("job", help="one job's status")
    job.add_argument("job_id")
    job.set_defaults(func=cmd_job)
    retry = sub.add_parser("retry", help="run a failed job again")
    retry.add_argument("job_id")
    retry.set_defaults(func=cmd_retry)

    versions = sub.add_parser("versions", help="registered model versions and the one served")
    versions.add_argument(
        "--prune", action="store_true",
        help="delete versions never served (refused by the gate) that no kept version descends from",
    )  # fmt: skip
    versions.add_argument("--dry-run", action="store_true", help="with --prune: list, delete nothing")
    versions.set_defaults(func=cmd_versions)
    promote = sub.add_parser("promote", help="serve a registered version")
    promote.add_argument("version")
    promote.set_defaults(func=cmd_switch_version)
    rollback = sub.add_parser("rollback", help="undo the last promotion, or serve VERSION")
    rollback.add_argument("version", nargs="?", default=None)
    rollback.set_defaults(func=cmd_switch_version)

    imp = sub.add_parser("import-videos", help="turn videos into frame-sequence tasks in a Label Studio project")
    from .video_import import add_import_arguments

    add_import_arguments(imp)
    imp.set_defaults(func=cmd_import_videos)

    from .demo import add_demo_arguments

    demo = sub.add_parser(
        "demo", help="Redis + Label Studio + backend + worker with the bundled model, pre-labeling a demo project"
    )
    add_demo_arguments(demo)
    demo.set_defaults(func=cmd_demo)

    export = sub.add_parser(
        "export-mevis", help="pull a project's annotations into its MeViS-layout correction set (or --out)"
    )
    export.add_argument("--project", type=int, required=True)
    export.add_argument(
        "--out", default=None, help="split folder to write (default: MODEL_DIR/data/mevis/project_<id>)"
    )
    export.add_argument("--label-studio-url", default=None)
    export.add_argument("--api-key", default=None)
    export.set_defaults(func=cmd_export_mevis)

    train = sub.add_parser("train", help="fine-tune on a project's corrections (snapshot, LoRA, gate, registry)")
    train.add_argument("--project", type=int, required=True)
    train.add_argument("--enqueue", action="store_true", help="put it on the train queue instead of running here")
    train.add_argument("--device", default="cpu")
    train.add_argument("--label-studio-url", default=None)
    train.add_argument("--api-key", default=None)
    train.set_defaults(func=cmd_train)

    relabel = sub.add_parser("relabel", help="re-predict a project's unannotated tasks with the served version")
    relabel.add_argument("--project", type=int, required=True)
    relabel.add_argument("--label-studio-url", default=None)
    relabel.add_argument("--api-key", default=None)
    relabel.set_defaults(func=cmd_relabel)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
