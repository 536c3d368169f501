"""Harness for end-to-end tests that drive a real JupyterLab in a real Chromium (via Playwright).

Recipe: /work/shared/browser-testing.md. Summary of what lives here:

* ``jupyter_server`` (session fixture): a JupyterLab started from *this* venv on a free loopback port,
  no token, with an isolated config/data/runtime/settings/workspaces dir and a ``python3`` kernelspec
  pinned to ``sys.executable``. Returns a :class:`JupyterServer` (``.url``, ``.root``, ``.log_path``,
  ``.write_notebook(name, cells)``).
* ``browser`` (session) and ``page`` (function) fixtures: headless Debian Chromium at /usr/bin/chromium.
  ``page`` saves ``artifacts/FAILED-<test>.png`` when the test fails.
* Helpers: :func:`open_notebook`, :func:`run_all_cells`, :func:`run_cell`, :func:`wait_for_kernel_idle`,
  :func:`wait_for_cells_done`, :func:`save_screenshot`. Any timeout in a helper saves a screenshot
  to ``artifacts/`` before failing.

Missing Chromium or Playwright skips the tests, unless ``NBTRAIN_REQUIRE_BROWSER=1`` (CI), which fails them.
All tests here must carry ``@pytest.mark.browser``; run with ``pytest -m browser tests/browser``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "artifacts"
CHROMIUM = os.environ.get("NBTRAIN_CHROMIUM", "/usr/bin/chromium")  # override only to test the skip path
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1400, "height": 1000}
KERNELSPEC_METADATA = {"name": "python3", "display_name": "Python 3", "language": "python"}

SERVER_START_TIMEOUT = 90.0  # seconds
OPEN_TIMEOUT = 90.0  # page load + kernel start
RUN_TIMEOUT = 180.0  # training cells may take a minute or more on 2 cores

ACTIVE_PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"


# --------------------------------------------------------------------------------------------------
# availability: skip, or fail under NBTRAIN_REQUIRE_BROWSER=1
# --------------------------------------------------------------------------------------------------
def _browser_required() -> bool:
    return os.environ.get("NBTRAIN_REQUIRE_BROWSER", "").strip() not in ("", "0", "false", "no")


def _missing_prerequisites() -> list[str]:
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} not found (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        missing.append(f"playwright not importable ({exc!r}; pip install playwright, never `playwright install`)")
    for mod in ("jupyterlab", "ipykernel", "nbformat", "ipywidgets"):
        try:
            __import__(mod)
        except Exception as exc:
            missing.append(f"{mod} not importable ({exc!r})")
    return missing


def require_browser() -> None:
    """Skip the calling test (or fail it when NBTRAIN_REQUIRE_BROWSER=1) if the browser stack is missing."""
    missing = _missing_prerequisites()
    if not missing:
        return
    reason = "browser test prerequisites missing: " + "; ".join(missing)
    if _browser_required():
        pytest.fail(reason + " [NBTRAIN_REQUIRE_BROWSER=1, so this is an error, not a skip]", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------------------------------
# artifacts
# --------------------------------------------------------------------------------------------------
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def _safe_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "screenshot"
    return name if name.endswith(".png") else name + ".png"


def save_screenshot(page, name: str, full_page: bool = True) -> Path | None:
    """Save ``artifacts/<name>.png`` and return its path (None if the page could not be captured)."""
    path = artifacts_dir() / _safe_name(name)
    try:
        page.screenshot(path=str(path), full_page=full_page, timeout=15_000)
    except Exception as exc:  # never let a screenshot mask the real failure
        sys.stderr.write(f"[browser harness] screenshot {path} failed: {exc!r}\n")
        return None
    return path


class BrowserTimeout(AssertionError):
    """A harness wait ran out of time; a screenshot was saved to artifacts/."""


def _fail_with_screenshot(page, what: str, exc: BaseException | None = None) -> None:
    shot = save_screenshot(page, "TIMEOUT-" + what)
    msg = f"timed out: {what}"
    if exc is not None:
        msg += f"\n  cause: {str(exc).splitlines()[0] if str(exc) else exc!r}"
    msg += f"\n  screenshot: {shot}" if shot else "\n  (screenshot failed)"
    raise BrowserTimeout(msg) from exc


def _pw_timeout_error():
    from playwright.sync_api import TimeoutError as PWTimeout

    return PWTimeout


# --------------------------------------------------------------------------------------------------
# Jupyter server
# --------------------------------------------------------------------------------------------------
def wait_until(pred, timeout: float = 30.0, what: str = "condition"):
    """`pred()`'s first true value, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class JupyterServer:
    url: str  # e.g. http://127.0.0.1:PORT  (no trailing slash)
    root: Path  # ServerApp.root_dir; notebooks and data go here; the kernel's cwd is the notebook's folder
    log_path: Path
    proc: subprocess.Popen = field(repr=False)
    python: str = sys.executable  # the interpreter the kernel runs

    def write_notebook(self, name: str, cells: Iterable[str]) -> Path:
        """Write ``root/name`` (``.ipynb`` appended if missing) with one code cell per string.

        The notebook carries the python3 kernelspec metadata, so JupyterLab opens no "Select Kernel"
        dialog. ``name`` may contain sub-folders (created).
        """
        import nbformat
        from nbformat.v4 import new_code_cell, new_notebook

        if not name.endswith(".ipynb"):
            name += ".ipynb"
        nb = new_notebook(
            cells=[new_code_cell(src) for src in cells],
            metadata={
                "kernelspec": dict(KERNELSPEC_METADATA),
                "language_info": {"name": "python"},
            },
        )
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(path))
        return path

    def notebook_url(self, name: str) -> str:
        if not name.endswith(".ipynb"):
            name += ".ipynb"
        return f"{self.url}/lab/tree/{name}"

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return "<no log>"


def _write_isolated_jupyter_dirs(base: Path) -> dict:
    """Config/data/runtime/kernelspec/settings/workspaces under ``base``; returns the env to use."""
    jpath = base / "jupyter_path"
    kdir = jpath / "kernels" / "python3"
    kdir.mkdir(parents=True)
    # JUPYTER_PATH wins over the venv's own kernelspec; pin the kernel to this exact interpreter.
    (kdir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3",
                "language": "python",
                "metadata": {"debugger": False},
            },
            indent=1,
        )
    )
    settings = base / "lab_settings"
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    # No news / update checks (no internet here, and the toast would cover part of the page).
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    # Keep every cell attached to the DOM, so selectors find cells outside the viewport.
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"})
    )
    for d in ("config", "data", "runtime", "workspaces"):
        (base / d).mkdir()
    env = dict(os.environ)
    env.update(
        JUPYTER_PATH=str(jpath),
        JUPYTER_CONFIG_DIR=str(base / "config"),
        JUPYTER_DATA_DIR=str(base / "data"),
        JUPYTER_RUNTIME_DIR=str(base / "runtime"),
        JUPYTER_PLATFORM_DIRS="1",
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"),
        PYTHONUNBUFFERED="1",
        MPLBACKEND="Agg",
    )
    env.setdefault("NBTRAIN_NUM_WORKERS", "1")
    # The kernel inherits this env: let it import nbtrain from the checkout even if not installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(pgid, sig)  # the server and its kernels (same new session)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def start_jupyter_server(base: Path) -> JupyterServer:
    """Start a JupyterLab from this venv on 127.0.0.1:<free port>, no token, root_dir ``base/root``, with its
    config, kernelspec and settings under ``base``; returns once ``/lab`` answers 200. The bench scripts use
    it too; stop it with :func:`stop_jupyter_server`."""
    root = base / "root"
    root.mkdir(parents=True)
    env = _write_isolated_jupyter_dirs(base)
    port = _free_port()
    log_path = base / "jupyter.log"
    cmd = [
        sys.executable, "-m", "jupyter", "lab",
        "--no-browser", "--allow-root",
        "--IdentityProvider.token=", "--ServerApp.password=",
        "--ServerApp.ip=127.0.0.1", f"--port={port}", "--port-retries=0",
        f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={env['JUPYTERLAB_SETTINGS_DIR']}",
        f"--LabApp.workspaces_dir={env['JUPYTERLAB_WORKSPACES_DIR']}",
    ]  # fmt: skip
    logf = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=str(root), env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    logf.close()  # the child holds its own copy
    server = JupyterServer(url=f"http://127.0.0.1:{port}", root=root, log_path=log_path, proc=proc)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        last = None
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {proc.returncode}; log:\n{server.log()}")
            try:
                with urllib.request.urlopen(f"{server.url}/lab", timeout=5) as r:
                    if r.status == 200:
                        break
                    last = f"HTTP {r.status}"
            except (urllib.error.URLError, OSError) as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"jupyter lab did not answer 200 on {server.url}/lab within {SERVER_START_TIMEOUT:.0f}s "
                    f"(last: {last}); command: {' '.join(cmd)}\nlog:\n{server.log()}"
                )
            time.sleep(0.5)
    except BaseException:
        _stop(proc)
        raise
    return server


def stop_jupyter_server(server: JupyterServer) -> None:
    """Stop the server and its kernels, and keep its log in artifacts/ next to the screenshots."""
    _stop(server.proc)
    try:
        (artifacts_dir() / "jupyter-server.log").write_text(server.log(tail=200_000))
    except OSError:
        pass


@pytest.fixture(scope="session")
def jupyter_server(tmp_path_factory) -> JupyterServer:
    """A JupyterLab on 127.0.0.1:<free port>, no token, root_dir a fresh tmp dir; killed at teardown."""
    require_browser()
    server = start_jupyter_server(tmp_path_factory.mktemp("jupyter"))
    try:
        yield server
    finally:
        stop_jupyter_server(server)


# --------------------------------------------------------------------------------------------------
# Browser
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def browser():
    """One headless Chromium (/usr/bin/chromium) for the session."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def page(browser, request):
    """A fresh browser context + page (viewport 1400x1000); screenshot on failure, closed at teardown."""
    context = browser.new_context(viewport=dict(VIEWPORT))
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    console: list[str] = []
    pg.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error",) else None)
    pg.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    pg.console_errors = console  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            save_screenshot(pg, "FAILED-" + request.node.name)
            if console:
                (artifacts_dir() / _safe_name("FAILED-" + request.node.name)).with_suffix(".console.txt").write_text(
                    "\n".join(console)
                )
        context.close()


# --------------------------------------------------------------------------------------------------
# Notebook helpers
# --------------------------------------------------------------------------------------------------
_KERNEL_READY_JS = """([panelSel, stableMs]) => {
  const panel = document.querySelector(panelSel);
  if (!panel) return false;
  const ind = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  const name = panel.querySelector('.jp-KernelName, .jp-Toolbar-kernelName');
  // The indicator already says 'idle' while the status bar says 'No Kernel | Initializing': also require
  // a named kernel, and (when the status bar shows the kernel) '... | Idle'.
  let ok = !!ind && ind.dataset.status === 'idle' && !!name && !/No Kernel/i.test(name.innerText);
  const items = Array.from(document.querySelectorAll('.jp-StatusBar-TextItem')).map(e => e.innerText.trim());
  const kstat = items.find(t => / \\| (Idle|Busy|Starting|Connecting|Initializing|Restarting|Unknown|Dead|Disconnected|Terminating|Autorestarting)/i.test(t));
  if (kstat !== undefined) ok = ok && / \\| Idle$/i.test(kstat);
  const now = Date.now();
  if (!ok) { window.__nbtrainIdleSince = undefined; return false; }
  if (window.__nbtrainIdleSince === undefined) window.__nbtrainIdleSince = now;
  return now - window.__nbtrainIdleSince >= stableMs;
}"""


def wait_for_kernel_idle(page, timeout: float = RUN_TIMEOUT, stable: float = 1.0) -> None:
    """Wait (up to ``timeout`` s) until the active notebook has a kernel that has been idle for ``stable`` s.

    Not just ``.jp-Notebook-ExecutionIndicator[data-status='idle']``: that indicator reads 'idle' before
    any kernel is attached, and running cells then opens a "Select Kernel" dialog.
    """
    try:
        page.wait_for_function(
            _KERNEL_READY_JS, arg=[ACTIVE_PANEL, int(stable * 1000)], timeout=timeout * 1000, polling=200
        )
    except _pw_timeout_error() as exc:
        _fail_with_screenshot(page, "kernel-idle", exc)


def open_notebook(page, server: JupyterServer, name: str, timeout: float = OPEN_TIMEOUT) -> None:
    """Open ``/lab/tree/NAME`` and wait until its cells are rendered and its kernel is idle."""
    try:
        page.goto(server.notebook_url(name), wait_until="domcontentloaded", timeout=timeout * 1000)
        page.locator(f"{ACTIVE_PANEL} .jp-Cell").first.wait_for(state="visible", timeout=timeout * 1000)
    except _pw_timeout_error() as exc:
        _fail_with_screenshot(page, f"open-{name}", exc)
    wait_for_kernel_idle(page, timeout)


_CELLS_JS = """(panelSel) => Array.from(document.querySelectorAll(panelSel + ' .jp-Notebook .jp-Cell')).map(c => {
  const p = c.querySelector('.jp-InputArea-prompt');
  const src = c.querySelector('.cm-content');
  return {
    code: c.classList.contains('jp-CodeCell'),
    prompt: p ? p.textContent.trim() : '',
    empty: src ? src.textContent.trim().length === 0 : false,
  };
})"""

_DONE = re.compile(r"\[\d+\]")


def cell_states(page) -> list[dict]:
    """One dict per cell of the active notebook: ``code`` (bool), ``prompt`` (e.g. '[3]:', '[*]:', '[ ]:'),
    ``empty`` (source is blank)."""
    return page.evaluate(_CELLS_JS, ACTIVE_PANEL)


def cell_prompt(page, index: int) -> str:
    """The input prompt text of cell ``index`` (0-based; every cell type counts), e.g. '[3]:'."""
    return cell_states(page)[index]["prompt"]


def wait_for_cells_done(page, timeout: float = RUN_TIMEOUT, before: list[dict] | None = None) -> None:
    """Wait until no cell is running or queued ('[*]'), every non-empty code cell shows '[n]', and (when
    ``before`` = an earlier :func:`cell_states` is given) at least one prompt has changed since; then wait
    for the kernel to be idle."""
    deadline = time.monotonic() + timeout
    before_prompts = [c["prompt"] for c in before] if before is not None else None
    while True:
        states = cell_states(page)
        code = [c for c in states if c["code"]]
        done = bool(code) and all(_DONE.search(c["prompt"]) or c["empty"] for c in code)
        changed = before_prompts is None or [c["prompt"] for c in states] != before_prompts
        if done and changed:
            break
        if time.monotonic() > deadline:
            _fail_with_screenshot(page, "cells-done", TimeoutError(f"cell prompts: {[c['prompt'] for c in states]}"))
        time.sleep(0.25)
    wait_for_kernel_idle(page, max(10.0, deadline - time.monotonic()))


def run_all_cells(page, timeout: float = RUN_TIMEOUT) -> None:
    """Run menu -> Run All Cells, then wait until every code cell has finished (``timeout`` s in all)."""
    wait_for_kernel_idle(page, OPEN_TIMEOUT)
    before = cell_states(page)
    try:
        page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).first.click()
        page.locator(".lm-Menu-item:not(.lm-mod-disabled)", has_text="Run All Cells").first.click()
    except _pw_timeout_error() as exc:
        _fail_with_screenshot(page, "run-all-menu", exc)
    wait_for_cells_done(page, timeout, before=before)


def run_cell(page, index: int, timeout: float = RUN_TIMEOUT) -> None:
    """Click into cell ``index``'s editor (0-based; every cell type counts), press Shift+Enter, and wait
    until that cell shows a new execution count '[n]' and the kernel is idle (``timeout`` s in all)."""
    wait_for_kernel_idle(page, OPEN_TIMEOUT)
    cell = page.locator(f"{ACTIVE_PANEL} .jp-Notebook .jp-Cell").nth(index)
    before = cell_prompt(page, index)
    try:
        cell.scroll_into_view_if_needed()
        cell.locator(".jp-InputArea-editor").first.click()
        page.keyboard.press("Shift+Enter")
    except _pw_timeout_error() as exc:
        _fail_with_screenshot(page, f"run-cell-{index}", exc)
    deadline = time.monotonic() + timeout
    while True:
        now = cell_prompt(page, index)
        if _DONE.search(now) and now != before:
            break
        if time.monotonic() > deadline:
            _fail_with_screenshot(page, f"run-cell-{index}", TimeoutError(f"prompt stayed {now!r} (was {before!r})"))
        time.sleep(0.25)
    wait_for_kernel_idle(page, max(10.0, deadline - time.monotonic()))


def cell_output_text(page, index: int) -> str:
    """All text of cell ``index``'s output area."""
    cell = page.locator(f"{ACTIVE_PANEL} .jp-Notebook .jp-Cell").nth(index)
    return "\n".join(cell.locator(".jp-OutputArea").all_inner_texts())
