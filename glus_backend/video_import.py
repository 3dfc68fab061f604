"""Videos -> frame-sequence tasks in a Label Studio project (``glus-backend import-videos``).

Open-source Label Studio has no mask tool on ``<Video>``; masks are drawn on ``<Image valueList="$frames">``
pages. This command extracts each video's frames once (JPEG, optionally every k-th and/or downscaled),
cuts them into tasks of ``--frames-per-task`` frames, attaches the expressions, and imports the tasks:

* ``--storage local`` (default): frames are written under Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT`` and
  served by a Local Storage of the project (created if missing): URLs ``/data/local-files/?d=<path>``;
* ``--storage upload``: frames are uploaded to the project (``commit_to_project=false``) and referenced as
  ``/data/upload/<project>/<file>``.

Each task's data: ``{"frames": [...], "expressions": [...], "expressions_text": "Ball: the yellow ball; ...",
"video": <name>, "start_frame": <index of its first frame in the video>, "frame_step": k, "fps": <fps / k>,
"chunk": i, "chunks": n}``. ``expressions_text`` is the same objects as one string, for ``<Header
value="$expressions_text"/>`` (Label Studio shows a list field as nothing). Without ``-e``/``--expressions-file``
the tasks have no ``expressions``: the labels' ``hint``s (or values) of the project's config are the prompts.

Expressions are checked against the project's labeling config before anything is extracted or imported: an
expression that names no single label is refused (write it ``"Label: expression"``); see
:mod:`glus_backend.prompts`. A tail of fewer than half ``--frames-per-task`` frames joins the task before it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from urllib.parse import quote

import cv2
from tqdm import tqdm

from .label_config import ServedConfig, UnsupportedLabelConfig, parse_label_config
from .ls_client import LabelStudioClient, LabelStudioError
from .prompts import DEFAULT_EXPRESSION_FIELDS, ObjectPrompt, PromptError, extract_prompts

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", help="video files, or folders of video files")
    parser.add_argument("--project", type=int, required=True, help="Label Studio project id")
    parser.add_argument(
        "--expression",
        "-e",
        action="append",
        default=[],
        help="expression for every video (repeatable); 'Label: expression' names its label. Default: the "
        "labeling config's label hints",
    )
    parser.add_argument(
        "--expressions-file",
        help='JSON {"<video name>": ["expr" or "Label: expr" or {"text": .., "label": ..}, ...]} per video',
    )
    parser.add_argument("--frames-per-task", type=int, default=50)
    parser.add_argument("--frame-step", type=int, default=1, help="keep every k-th frame")
    parser.add_argument(
        "--max-side", type=int, default=0, help="downscale so the longer side is at most N px (0: keep)"
    )
    parser.add_argument("--storage", choices=("local", "upload"), default="local")
    parser.add_argument("--frames-root", help="where frames are extracted (local storage: under the document root)")
    parser.add_argument("--frames-field", default="frames", help="task data key of the frame list ($frames)")
    parser.add_argument("--label-studio-url", default=os.environ.get("LABEL_STUDIO_URL"))
    parser.add_argument("--api-key", default=os.environ.get("LABEL_STUDIO_API_KEY"))
    parser.add_argument(
        "--document-root",
        default=os.environ.get("LOCAL_FILES_DOCUMENT_ROOT") or os.environ.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"),
    )
    parser.add_argument("--dry-run", action="store_true", help="extract and print the tasks, import nothing")


def find_videos(inputs: list[str]) -> list[Path]:
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES))
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"no such video or folder: {path}")
    if not out:
        raise FileNotFoundError(f"no video files in {inputs}")
    return out


def extract_frames(video: Path, out_dir: Path, frame_step: int = 1, max_side: int = 0) -> tuple[list[Path], float]:
    """JPEG frames of ``video`` in ``out_dir`` (done once: a ``frames.json`` marker lists them)."""
    marker = out_dir / "frames.json"
    settings = {
        "source": str(video.resolve()),
        "size": video.stat().st_size,
        "frame_step": frame_step,
        "max_side": max_side,
    }
    if marker.is_file():
        saved = json.loads(marker.read_text())
        if saved.get("settings") == settings:
            return [out_dir / name for name in saved["frames"]], float(saved["fps"])
    out_dir.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise OSError(f"cannot open video {video}")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 25.0)
    names: list[str] = []
    index = 0
    with tqdm(desc=f"frames of {video.name}", unit="frame", leave=False) as bar:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if index % frame_step == 0:
                h, w = frame.shape[:2]
                if max_side and max(h, w) > max_side:
                    scale = max_side / max(h, w)
                    frame = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
                name = f"{index:05d}.jpg"
                cv2.imwrite(str(out_dir / name), frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
                names.append(name)
            index += 1
            bar.update(1)
    cap.release()
    if not names:
        raise OSError(f"no frame could be decoded from {video}")
    marker.write_text(json.dumps({"settings": settings, "frames": names, "fps": fps}))
    return [out_dir / n for n in names], fps


def chunk(items: list, size: int) -> list[list]:
    """``items`` in runs of ``size``; a last run shorter than half of ``size`` joins the one before it (a task
    of one or two frames is no use to an annotator, and gives GLUS almost no context)."""
    if size < 1:
        raise ValueError("--frames-per-task must be >= 1")
    runs = [items[i : i + size] for i in range(0, len(items), size)]
    if len(runs) > 1 and 2 * len(runs[-1]) < size:
        runs[-2:] = [runs[-2] + runs[-1]]
    return runs


def expressions_text(prompts: list[ObjectPrompt], labelled: bool) -> str:
    """The objects as one line for ``<Header value="$expressions_text"/>``; ``labelled``: with their labels, in
    the ``"Label: expression"`` form the backend reads back."""
    return "; ".join(f"{p.label}: {p.expression}" if labelled and p.label else p.expression for p in prompts)


def _project_config(client: LabelStudioClient | None, project: int) -> ServedConfig | None:
    if client is None:
        return None
    xml = client.get_project(project).get("label_config") or ""
    try:
        return parse_label_config(xml)
    except UnsupportedLabelConfig as exc:
        raise SystemExit(f"project {project}'s labeling config cannot be served by this backend: {exc}") from None


def _objects(video: Path, expressions: list, config: ServedConfig | None) -> tuple[dict, str]:
    """The task fields naming the objects of ``video`` (``expressions`` and ``expressions_text``), checked against
    the project's labeling config when there is one."""
    data = {"expressions": list(expressions)} if expressions else {}
    if config is None:
        if not expressions:
            raise SystemExit(f"no expression for {video.name}: pass --expression or --expressions-file (or a "
                             "project whose labels have hints, with --label-studio-url and --api-key)")  # fmt: skip
        texts = [e.get("text", "") if isinstance(e, dict) else str(e) for e in expressions]
        return data, "; ".join(texts)
    try:
        prompts = extract_prompts(data, config, DEFAULT_EXPRESSION_FIELDS)
    except PromptError as exc:
        raise SystemExit(f"{video.name}: {exc}") from None
    return data, expressions_text(prompts, labelled=len(config.label_options()) > 1)


def _ensure_local_storage(client: LabelStudioClient, project: int, directory: Path) -> None:
    storages = client.request("GET", "/api/storages/localfiles", params={"project": project}).json()
    wanted = str(directory.resolve())
    if any(str(Path(s.get("path", "")).resolve()) == wanted for s in storages):
        return
    client.request(
        "POST",
        "/api/storages/localfiles",
        json={"project": project, "path": wanted, "use_blob_urls": False, "title": "GLUS frames"},
    )


def _upload_frames(client: LabelStudioClient, project: int, paths: list[Path]) -> list[str]:
    """Upload files without creating tasks; return their ``/data/upload/...`` URLs in order."""
    urls = []
    for path in paths:
        with path.open("rb") as f:
            resp = client.request(
                "POST",
                f"/api/projects/{project}/import",
                params={"commit_to_project": "false"},
                files={"file": (path.name, f, "image/jpeg")},
            )
        ids = resp.json().get("file_upload_ids") or []
        if len(ids) != 1:
            raise LabelStudioError(f"upload of {path} returned {resp.json()}")
        info = client.request("GET", f"/api/import/file-upload/{ids[0]}").json()
        urls.append("/data/" + info["file"].lstrip("/"))
    return urls


def import_videos(args: argparse.Namespace) -> dict:
    videos = find_videos(args.videos)
    per_video = json.loads(Path(args.expressions_file).read_text()) if args.expressions_file else {}
    if args.storage == "local" and not args.dry_run and not args.document_root:
        raise SystemExit("--storage local needs Label Studio's LOCAL_FILES_DOCUMENT_ROOT (--document-root)")
    root = (
        Path(args.frames_root)
        if args.frames_root
        else (Path(args.document_root) / "glus-frames" if args.document_root else Path("model_dir") / "frames")
    )
    client = None
    if not args.dry_run:
        if not args.label_studio_url or not args.api_key:
            raise SystemExit("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (or --label-studio-url/--api-key)")
        client = LabelStudioClient(args.label_studio_url, args.api_key)
    reader = client  # a dry run still checks the expressions against the project when it can reach it
    if reader is None and args.label_studio_url and args.api_key:
        reader = LabelStudioClient(args.label_studio_url, args.api_key)
    config = _project_config(reader, args.project)
    if config is not None and (config.kind != "frames" or config.value_key != args.frames_field):
        raise SystemExit(f"project {args.project} labels <{'Video' if config.kind == 'video' else 'Image'} "
                         f"name='{config.object_name}'> from ${config.value_key}; import-videos makes frame-sequence "
                         f"tasks in ${args.frames_field}: the project needs <Image valueList=\"${args.frames_field}\">")
    objects = {}
    for video in videos:  # every video's objects are checked before any frame is extracted
        expressions = per_video.get(video.stem, per_video.get(video.name, [])) or args.expression
        objects[video] = _objects(video, expressions, config)
    tasks = []
    for video in videos:
        fields, shown = objects[video]
        frames, fps = extract_frames(video, root / video.stem, args.frame_step, args.max_side)
        if args.storage == "local":
            if args.document_root and client is not None:
                _ensure_local_storage(client, args.project, root / video.stem)
            base = Path(args.document_root).resolve() if args.document_root else root.resolve()
            urls = [f"/data/local-files/?d={quote(str(p.resolve().relative_to(base)))}" for p in frames]
        elif client is not None:
            urls = _upload_frames(client, args.project, frames)
        else:
            urls = [str(p) for p in frames]
        parts = chunk(list(range(len(frames))), args.frames_per_task)
        for i, part in enumerate(parts):
            tasks.append(
                {
                    args.frames_field: [urls[j] for j in part],
                    **fields,
                    "expressions_text": shown,
                    "video": video.stem,
                    "start_frame": part[0] * args.frame_step,
                    "frame_step": args.frame_step,
                    "fps": fps / args.frame_step,
                    "chunk": i,
                    "chunks": len(parts),
                }
            )
    imported = 0
    if client is not None:
        for batch in chunk(tasks, 100):
            resp = client.request("POST", f"/api/projects/{args.project}/import", json=batch)
            imported += int(resp.json().get("task_count", len(batch)))
    elif args.dry_run:
        for t in tasks:
            logger.info("task: %s", json.dumps(t)[:200])
    return {"videos": len(videos), "tasks": len(tasks), "imported": imported, "frames_root": str(root)}
