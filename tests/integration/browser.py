"""A headless-Chromium harness for driving the real Label Studio labeling UI in integration tests.

Chromium comes from Debian (``apt-get install chromium``) and is driven by pip ``playwright`` without
``playwright install``; both are installed by ``scripts/install_browser.sh`` (run automatically by
:func:`ensure_browser` when something is missing). Every request that does not go to 127.0.0.1/localhost is
aborted (the page tries labelstud.io, Sentry, fonts, ...), so the tests never leave the machine.

Typical use::

    from .browser import labeling_page

    with labeling_page(label_studio, project_id, task_id, auto_annotation=True) as lp:
        lp.goto_item(2)                        # 0-based page of a multi-image (valueList) task
        lp.screenshot(tmp_path / "page3.png")
        regions = lp.regions()                 # [{"id", "type", "item_index", "labels", "origin", ...}]
        results = lp.serialize()               # what "Submit" would send as the annotation result
        lp.draw_brush_stroke([(0.3, 0.5), (0.6, 0.5)], label="Ball")

``label_studio`` is a :class:`tests.integration.label_studio.LabelStudioServer` (anything with ``url``,
``admin_email`` and ``admin_password`` works). The editor's MobX store is reachable as ``window.Htx`` (the
labeling frontend sets it); :meth:`LabelingPage.js` evaluates JavaScript against it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .backend_stack import ui_budget

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = ROOT / "scripts" / "install_browser.sh"
CHROMIUM = Path(os.environ.get("GLUS_CHROMIUM", "/usr/lib/chromium/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}

# The editor is ready when its store exists, an annotation is selected and every image tag shows a loaded image.
_READY_JS = """() => {
  const s = window.Htx;
  if (!s || !s.annotationStore || !s.annotationStore.selected) return false;
  const images = [...s.annotationStore.selected.names.values()].filter(t => t.type === 'image');
  try {
    return images.every(t => t.currentImageEntity && t.imageIsLoaded);
  } catch (e) { return false; }
}"""

_REGIONS_JS = """() => {
  const a = window.Htx.annotationStore.selected;
  return a.regionStore.regions.map(r => ({
    id: r.cleanId ?? r.id, pid: r.pid, type: r.type, item_index: r.item_index, origin: r.origin,
    labels: (r.labelName ? [r.labelName] : []), dynamic: r.dynamic, fromSuggestion: r.fromSuggestion,
    readonly: r.readonly, score: r.score, hidden: r.hidden,
  }));
}"""


def ensure_browser(venv: Path | str | None = None) -> Path:
    """Chromium + playwright, installing them with scripts/install_browser.sh when either is missing."""
    try:
        import playwright.sync_api  # noqa: F401

        have_pw = True
    except ImportError:
        have_pw = False
    if CHROMIUM.is_file() and have_pw:
        return CHROMIUM
    if venv is None:  # the interpreter running the tests (not $VIRTUAL_ENV, which a calling shell may have set)
        venv = Path(sys.prefix) if sys.prefix != sys.base_prefix else ROOT / ".venv"
    venv = Path(venv)
    logger.info("installing the browser with %s %s", INSTALL_SCRIPT, venv)
    proc = subprocess.run(["bash", str(INSTALL_SCRIPT), str(venv)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not CHROMIUM.is_file():
        raise RuntimeError(f"{INSTALL_SCRIPT} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    import importlib

    importlib.invalidate_caches()
    import playwright.sync_api  # noqa: F401,F811 - must work now

    return CHROMIUM


class LabelingPage:
    """One logged-in page of the labeling UI; ``page`` is the playwright Page for anything not wrapped here."""

    def __init__(self, page: Any, base_url: str, screenshots_dir: Path | None = None) -> None:
        self.page = page
        self.base_url = base_url.rstrip("/")
        self.screenshots_dir = Path(screenshots_dir) if screenshots_dir else None
        self.console: list[str] = []  # browser console lines (errors included)
        self.requests: list[dict] = []  # /api/ requests the page made: {"method","url","body"}
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        page.on("request", self._on_request)

    def _on_request(self, req: Any) -> None:
        if "/api/" in req.url:
            self.requests.append({"method": req.method, "url": req.url, "body": req.post_data})

    # ------------------------------------------------------------------ navigation
    def login(self, email: str, password: str) -> None:
        self.page.goto(f"{self.base_url}/user/login/")
        self.page.fill("input[name=email]", email)
        self.page.fill("input[name=password]", password)
        with self.page.expect_navigation():
            self.page.click("button[type=submit], input[type=submit]")
        if "/user/login" in self.page.url:
            raise RuntimeError(f"login as {email} failed (still on {self.page.url})")

    def open_task(self, project_id: int, task_id: int, timeout_s: float | None = None) -> None:
        self.page.goto(f"{self.base_url}/projects/{project_id}/data?task={task_id}")
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Until the editor has an annotation selected and the current image(s) are loaded (default: a minute at
        idle, scaled by the machine's load)."""
        timeout_s = timeout_s or ui_budget(60)
        self.page.wait_for_function(_READY_JS, timeout=timeout_s * 1000)
        # the store is ready before React has rendered the editor: wait for the canvas too
        self.page.locator(".lsf-main-view__annotation canvas").first.wait_for(state="visible", timeout=timeout_s * 1000)
        self.page.wait_for_timeout(300)

    def reload(self, timeout_s: float | None = None) -> None:
        self.page.reload()
        self.wait_ready(timeout_s)

    # ------------------------------------------------------------------ store access
    def js(self, expression: str, arg: Any = None) -> Any:
        """Evaluate a JS function source, e.g. ``"(a) => window.Htx.annotationStore.selected.id"``."""
        return self.page.evaluate(expression, arg)

    def image_tag(self, name: str | None = None) -> str:
        """The name of the (first, or given) <Image> tag."""
        if name:
            return name
        return self.js(
            "() => [...window.Htx.annotationStore.selected.names.values()].find(t => t.type === 'image').name"
        )

    def current_item(self, image: str | None = None) -> int:
        js = "(n) => window.Htx.annotationStore.selected.names.get(n).currentImage ?? 0"
        return int(self.js(js, self.image_tag(image)))

    def item_count(self, image: str | None = None) -> int:
        js = "(n) => window.Htx.annotationStore.selected.names.get(n).imageEntities.length"
        return int(self.js(js, self.image_tag(image)))

    def goto_item(self, index: int, image: str | None = None, timeout_s: float | None = None) -> None:
        """Show page ``index`` (0-based, = ``item_index``) of a multi-image task and wait for its image."""
        name = self.image_tag(image)
        self.js("([n, i]) => window.Htx.annotationStore.selected.names.get(n).setCurrentImage(i)", [name, index])
        self.wait_ready(timeout_s)

    def regions(self) -> list[dict]:
        """The regions of the selected annotation (all pages): id, type, item_index, origin, labels, ..."""
        return self.js(_REGIONS_JS)

    def suggestions(self) -> list[dict]:
        """Suggestions (interactive pre-annotations not yet accepted) of the selected annotation."""
        return self.js(
            """() => [...window.Htx.annotationStore.selected.suggestions.values()].map(r => ({
                 id: r.cleanId ?? r.id, type: r.type, item_index: r.item_index, origin: r.origin,
                 labels: (r.labelName ? [r.labelName] : []) }))"""
        )

    def serialize(self) -> list[dict]:
        """The selected annotation's results as they would be submitted."""
        return self.js("() => window.Htx.annotationStore.selected.serializeAnnotation()")

    def set_auto_annotation(self, on: bool = True, auto_accept: bool | None = None) -> None:
        """The "Auto-Annotation" toggle (and "Auto accept annotation suggestions") through the store."""
        self.js("(v) => window.Htx.setAutoAnnotation(v)", on)
        if auto_accept is not None:
            self.js("(v) => window.Htx.setAutoAcceptSuggestions(v)", auto_accept)
        self.page.wait_for_timeout(300)

    # ------------------------------------------------------------------ drawing
    def image_box(self) -> dict:
        """The bounding box (page pixels) of the visible image of the current page."""
        loc = self.page.locator("img[class*='image']:visible, [class*='ImageView'] img:visible").first
        box = loc.bounding_box() if loc.count() else None
        if not box:
            box = self.page.locator("canvas").first.bounding_box()
        if not box:
            raise RuntimeError("no image on the page")
        return box

    def _to_page(self, xy: tuple[float, float]) -> tuple[float, float]:
        b = self.image_box()
        return b["x"] + xy[0] * b["width"], b["y"] + xy[1] * b["height"]

    def select_label(self, label: str, control: str | None = None) -> None:
        """Select ``label`` of the labels tag ``control`` (default: the first labels tag that has it), like a click
        on it in the palette (one palette row per labels tag, so same-named labels are ambiguous in the DOM)."""
        ok = self.js(
            """([label, control]) => {
                 const names = [...window.Htx.annotationStore.selected.names.values()];
                 const tag = names.find(t => t.type.endsWith('labels') && (!control || t.name === control)
                                              && t.findLabel && t.findLabel(label));
                 if (!tag) return false;
                 const l = tag.findLabel(label);
                 if (!l.selected) l.toggleSelected();
                 return true;
               }""",
            [label, control],
        )
        if not ok:
            raise ValueError(f"no label {label!r} in {control or 'any labels tag'}")
        self.page.wait_for_timeout(200)

    def unselect(self) -> None:
        """Unselect regions and labels (a selected region would take the next label click or drawing)."""
        self.js(
            """() => { const a = window.Htx.annotationStore.selected;
                 a.unselectAll && a.unselectAll();
                 for (const t of a.names.values()) if (t.type.endsWith('labels') && t.unselectAll) t.unselectAll(); }"""
        )
        self.page.wait_for_timeout(150)

    def tools(self, image: str | None = None) -> list[dict]:
        """The image's tools: ``{"name": "BrushTool", "smart": bool, "control": "brush", "selected": bool}``."""
        return self.js(
            """(n) => window.Htx.annotationStore.selected.names.get(n).getToolsManager().allTools().map(t => ({
                 name: t.toolName, smart: !!t.dynamic, control: t.control ? t.control.name : null,
                 selected: !!t.selected }))""",
            self.image_tag(image),
        )

    def select_tool(self, name: str, smart: bool = False, control: str | None = None, image: str | None = None) -> None:
        """Select a tool by type name (``BrushTool``, ``PolygonTool``, ``EraserTool``, ...); ``smart=True`` picks the
        smart (interactive, "dynamic") copy that the editor adds for ``smart="true"`` controls while Auto-Annotation
        is on. Both the normal and the smart tool carry the same aria-label in the DOM, hence the store."""
        ok = self.js(
            """([n, name, smart, control]) => {
                 const m = window.Htx.annotationStore.selected.names.get(n).getToolsManager();
                 const t = m.allTools().find(t => t.toolName === name && !!t.dynamic === smart
                                                  && (!control || (t.control && t.control.name === control)));
                 if (!t) return false;
                 m.selectTool(t, true);
                 return true;
               }""",
            [self.image_tag(image), name, smart, control],
        )
        if not ok:
            raise ValueError(f"no {'smart ' if smart else ''}{name} tool (have {self.tools(image)})")
        self.page.wait_for_timeout(200)

    def click_tool(self, aria_label: str, nth: int = 0) -> None:
        """Click a toolbar button by aria-label (``brush-tool``, ``polygon-tool``, ``eraser``, ``zoom-in``, ...)."""
        self.page.locator(f"[aria-label='{aria_label}']").nth(nth).click()

    def draw_brush_stroke(self, points: Sequence[tuple[float, float]], steps: int = 8) -> None:
        """Drag the mouse through ``points`` (fractions 0..1 of the image) with the button down."""
        pts = [self._to_page(p) for p in points]
        m = self.page.mouse
        m.move(*pts[0])
        m.down()
        for p in pts[1:]:
            m.move(*p, steps=steps)
        m.up()
        self.page.wait_for_timeout(400)

    def draw_polygon(self, points: Sequence[tuple[float, float]]) -> None:
        """Click the vertices (fractions of the image) and close the polygon on the first point."""
        pts = [self._to_page(p) for p in points]
        for p in pts:
            self.page.mouse.click(*p)
            self.page.wait_for_timeout(150)
        self.page.mouse.click(*pts[0])
        self.page.wait_for_timeout(400)

    def click(self, xy: tuple[float, float]) -> None:
        """One click at ``xy`` (fractions of the image), e.g. a (smart) KeyPoint."""
        self.page.mouse.click(*self._to_page(xy))
        self.page.wait_for_timeout(300)

    def submit(self, wait_ms: int = 2500) -> None:
        """Click Submit (a new annotation) or Update (an existing one) in the bottom bar."""
        bar = self.page.locator(".lsf-main-view__annotation, .lsf-editor").first
        for name in ("Submit", "Update"):
            button = self.page.locator(f"button[aria-label='{name} current annotation']")
            if not button.count():
                button = bar.locator("button").filter(has_text=re.compile(rf"^\s*{name}\s*$"))
            if button.count():
                button.first.click()
                self.page.wait_for_timeout(wait_ms)
                return
        raise RuntimeError(f"no Submit/Update button (buttons: {bar.locator('button').all_inner_texts()})")

    # ------------------------------------------------------------------ output
    def screenshot(self, path: Path | str, full_page: bool = False) -> Path:
        path = Path(path)
        if not path.is_absolute() and self.screenshots_dir:
            path = self.screenshots_dir / path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def api_requests(self, fragment: str) -> list[dict]:
        """The /api/ requests the page made whose URL contains ``fragment``; bodies parsed when JSON."""
        out = []
        for r in self.requests:
            if fragment in r["url"]:
                body = r["body"]
                try:
                    body = json.loads(body) if body else None
                except ValueError:
                    pass
                out.append({**r, "body": body})
        return out


def _route_local_only(route: Any) -> None:
    host = urlsplit(route.request.url).hostname or ""
    if host in LOCAL_HOSTS or route.request.url.startswith(("data:", "blob:")):
        route.continue_()
    else:
        route.abort()


@contextmanager
def browser_page(
    base_url: str,
    email: str,
    password: str,
    *,
    viewport: tuple[int, int] = (1600, 1000),
    local_storage: dict[str, str] | None = None,
    screenshots_dir: Path | None = None,
    headless: bool = True,
) -> Iterator[LabelingPage]:
    """A logged-in :class:`LabelingPage` on ``base_url`` (no task opened yet)."""
    ensure_browser()
    from playwright.sync_api import sync_playwright

    profile = Path(tempfile.mkdtemp(prefix="glus-chromium-"))
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(
                str(profile),
                executable_path=str(CHROMIUM),
                headless=headless,
                args=CHROMIUM_ARGS,
                viewport={"width": viewport[0], "height": viewport[1]},
            )
            try:
                ctx.route("**/*", _route_local_only)
                if local_storage:
                    ctx.add_init_script(
                        f"(() => {{ const kv = {json.dumps(local_storage)};"
                        " for (const k in kv) localStorage.setItem(k, kv[k]); })()"
                    )
                page = ctx.pages[0] if ctx.pages else ctx.new_page()
                page.set_default_timeout(ui_budget(30) * 1000)
                lp = LabelingPage(page, base_url, screenshots_dir)
                lp.login(email, password)
                yield lp
            finally:
                ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@contextmanager
def labeling_page(
    label_studio: Any,
    project_id: int,
    task_id: int,
    *,
    auto_annotation: bool | None = None,
    auto_accept: bool | None = None,
    screenshots_dir: Path | None = None,
    viewport: tuple[int, int] = (1600, 1000),
    timeout_s: float | None = None,
) -> Iterator[LabelingPage]:
    """Log in as the admin and open ``/projects/<pid>/data?task=<tid>``, waiting until the image(s) rendered.

    ``auto_annotation`` / ``auto_accept`` preset the editor's "Auto-Annotation" and "Auto accept annotation
    suggestions" toggles (stored by the editor in localStorage); ``None`` leaves the editor's default (off).
    """
    storage: dict[str, str] = {}
    if auto_annotation is not None:
        storage["autoAnnotation"] = "true" if auto_annotation else "false"
    if auto_accept is not None:
        storage["autoAcceptSuggestions"] = "true" if auto_accept else "false"
    with browser_page(
        label_studio.url,
        label_studio.admin_email,
        label_studio.admin_password,
        viewport=viewport,
        local_storage=storage,
        screenshots_dir=screenshots_dir,
    ) as lp:
        t0 = time.monotonic()
        lp.open_task(project_id, task_id, timeout_s=timeout_s)
        logger.info("labeling page for task %s ready in %.1f s", task_id, time.monotonic() - t0)
        yield lp
