"""The book's build engine: a Sphinx extension that executes stale chapters in parallel, keyed so never stale.

Listed in ``_config.yml`` (``sphinx: local_extensions: {book_engine: tools}``), so plain
``jupyter-book build book/`` and ``make book`` / ``make test`` (tools/build_book.py) all run it. When the build
starts (``builder-inited``, after myst-nb has read its configuration), it

1. finds the chapters in ``_toc.yml`` (every toc entry that is a notebook: a ``.ipynb`` or a MyST Markdown
   file with a ``kernelspec``/``jupytext`` front matter), never a hard-coded list;
2. computes each chapter's **key** (:func:`chapter_key`): its code cells and kernelspec (the notebook as
   jupyter-cache hashes it), a digest of every file of the ``fmlib`` the kernels import, the resolved profile
   and device, every ``FMLIB_*`` variable except those that cannot change a page (:data:`IRRELEVANT_ENV`),
   and the versions of Python and the numerical packages;
3. compares it with the key recorded when the chapter's cached outputs were made (``fmbook-state.json`` in
   the jupyter-cache folder). A chapter whose key differs, or that has no record, or whose last run failed,
   is **stale**: its jupyter-cache entry is removed;
4. executes the stale chapters, each in its own kernel (a worker process running nbclient), as many at once
   as there are cores (``FMLIB_BOOK_JOBS`` overrides), the torch threads split between them
   (``FMLIB_THREADS``, unless set; a kernel running alone lets fmlib take the free cores), longest first
   by the last recorded execution times (chapters never timed go first, most code first). The executed
   notebooks are stored in jupyter-cache, where myst-nb (``execute_notebooks: cache``) finds them, so
   myst-nb itself executes nothing;
5. tells Sphinx to re-read the re-executed chapters (``env-get-outdated``): an fmlib change re-renders pages
   whose Markdown did not change;
6. prints a timing table (per chapter: seconds executed now, or "cached" with the seconds of the run that
   made the cached outputs; the wall time and the sum) and writes it to ``_build/fmbook-timings.json``.

A chapter whose cell raised is reported as a Sphinx warning that names the chapter and ends with the
traceback (a ``-W`` build fails on it), and its traceback goes to ``<outdir>/reports/<chapter>.err.log``.
Its page shows the outputs up to the failing cell; its record says "failed", so the next build runs it again.

A prose-only edit changes no key: the page is re-read and rendered from the cache without executing anything.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

STATE_FILE = "fmbook-state.json"
"""In the jupyter-cache folder: per chapter its key, the cache hash, status and execution time."""

OK_MARKER = "build-ok"
"""In ``_build``: written when a build finishes with no warning, removed when one starts. tools/build_book.py
builds incrementally only after such a build (an incremental -W build reports only the pages it re-reads)."""

TIMINGS_FILE = "fmbook-timings.json"
"""In ``_build``: the last build's timing table, and each chapter's last execution time (queue order)."""

IRRELEVANT_ENV = frozenset({
    "FMLIB_THREADS",  # speed only
    "FMLIB_CACHE",  # the checkpoint cache gives back the weights training would give
    "FMLIB_CACHE_DIR",
    "FMLIB_DATA_DIR",  # where downloads live, not what they are
    "FMLIB_BOOK_JOBS",  # how many chapters run at once
    "FMLIB_PROFILE",  # in the key as the profile it resolves to (unset = quick on a CPU = "quick")
    "FMLIB_DEVICE",  # likewise, as the device
    "FMLIB_CHAPTER",  # set by the engine per kernel: names the chapter in the model ledger
    "FMLIB_CACHE_LOG",  # the model ledger's file
})
"""``FMLIB_*`` variables left out of the key's ``env``. Every other ``FMLIB_*`` variable is in it, new ones
included."""

PACKAGES = ("torch", "numpy", "scipy", "sympy", "matplotlib", "POT", "nbclient", "ipykernel", "myst-nb")
"""Packages whose version is in the key."""

KERNEL_ENV = {
    "MPLBACKEND": "module://matplotlib_inline.backend_inline",  # figures go into the page, never to Agg
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",
}
DEFAULT_ENV = {"FMLIB_PROGRESS": "summary"}  # one line per training run in a page, not the frames of a bar


# --------------------------------------------------------------------------------------------------------
# The key
# --------------------------------------------------------------------------------------------------------

def package_digest(package: str = "fmlib") -> str:
    """sha256 over the relative names and bytes of every file of ``package`` (as the kernels import it).

    Subpackages and data files count; ``__pycache__`` does not.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"cannot find the package {package!r} the chapters import")
    root = Path(next(iter(spec.submodule_search_locations)))
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def result_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The ``FMLIB_*`` settings that can change a page: all but :data:`IRRELEVANT_ENV`, empty ones dropped."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in sorted(environ.items())
            if k.startswith("FMLIB_") and k not in IRRELEVANT_ENV and v.strip()}


def environment_key(environ: dict[str, str] | None = None) -> dict:
    """Everything outside a chapter's code that its outputs depend on (the same for every chapter)."""
    environ = dict(os.environ if environ is None else environ)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environ)
    try:  # the profile and device the kernels will resolve, with the kernels' environment
        from fmlib import runtime
        profile, device = runtime.get_profile(), str(runtime.get_device())
    finally:
        os.environ.clear()
        os.environ.update(saved)
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"fmlib": package_digest("fmlib"), "profile": profile, "device": device,
            "env": result_env(environ), "python": platform.python_version(), "packages": versions}


def stale_reason(record: dict, code_hash: str, env_key: dict) -> str:
    """Why a chapter's record does not match its key now (for the build log)."""
    if not record:
        return "never executed here"
    if record.get("status") != "ok":
        return "its last run failed"
    if record.get("hash") != code_hash:
        return "its code cells changed"
    old = record.get("environment", {})
    changed = [k for k in sorted(set(old) | set(env_key)) if old.get(k) != env_key.get(k)]
    return "changed: " + ", ".join(changed) if changed else "its cached outputs are missing"


def chapter_key(code_hash: str, env_key: dict) -> str:
    """The key of a chapter's executed outputs: its code (jupyter-cache's hash) and the environment key."""
    text = json.dumps({"code": code_hash, "environment": env_key}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def kernel_environ(threads: int | None = None) -> dict[str, str]:
    """The environment of the build's kernels: ours plus the engine's defaults and the thread count."""
    env = dict(os.environ)
    env.update(KERNEL_ENV)
    for k, v in DEFAULT_ENV.items():
        env.setdefault(k, v)
    if threads is not None:
        env.setdefault("FMLIB_THREADS", str(threads))
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = env["FMLIB_THREADS"]
    return env


# --------------------------------------------------------------------------------------------------------
# Executing chapters
# --------------------------------------------------------------------------------------------------------

@dataclass
class Chapter:
    docname: str
    path: Path
    notebook: nbformat.NotebookNode
    code_hash: str = ""
    key: str = ""
    seconds: float | None = None  # executed in this build
    cached_seconds: float | None = None  # the run that made the cached outputs
    error: str | None = None
    executed: nbformat.NotebookNode | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return Path(self.docname).name

    @property
    def code_size(self) -> int:
        """Characters of code: orders the chapters never timed (more code first)."""
        return sum(len(c.source) for c in self.notebook.cells if c.cell_type == "code")


def run_worker(src: str, dst: str, cwd: str, timeout: int) -> int:
    """In a worker process: execute the notebook ``src`` with cwd ``cwd``; write it with outputs to ``dst``.

    Stops at the first failing cell; writes ``dst + ".json"`` with the seconds and the error (or None).
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = nbformat.read(src, as_version=4)
    kernel = nb.metadata.get("kernelspec", {}).get("name", "python3")
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, allow_errors=False,
                            record_timing=False, resources={"metadata": {"path": cwd}})
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except CellExecutionError as err:
        error = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    except (CellTimeoutError, DeadKernelError) as err:
        error = f"{type(err).__name__}: {err}"
    seconds = time.perf_counter() - start
    nbformat.write(nb, dst)
    Path(dst + ".json").write_text(json.dumps({"seconds": seconds, "error": error}))
    return 0


def queue_order(chapters: list[Chapter], recorded: dict[str, float]) -> list[Chapter]:
    """Longest first by the recorded seconds; chapters never timed before all others, most code first."""
    return sorted(chapters, key=lambda c: (-recorded.get(c.docname, float("inf")), -c.code_size))


def model_reuse(records: list[dict]) -> str:
    """One line on the models of a build from fmlib's run ledger (``FMLIB_CACHE_LOG``): how many were trained,
    how many loaded, and which loads reused a model another chapter trained in this build."""
    trained = {r["key"]: r for r in records if r.get("event") == "trained"}
    loaded = [r for r in records if r.get("event") == "loaded"]
    shared = sorted({f"{r['name']} ({trained[r['key']]['chapter']} → {r['chapter']})" for r in loaded
                     if r["key"] in trained and trained[r["key"]]["chapter"] != r["chapter"]})
    line = f"models: {len(trained)} trained, {len(loaded)} loaded from the checkpoint cache"
    return line + (f"; trained by one chapter and loaded by another: {', '.join(shared)}" if shared else "")


def execute_chapters(chapters: list[Chapter], cwd_of, timeout: int, order: dict[str, float],
                     jobs: int | None = None, log=print, ledger: list[dict] | None = None) -> float:
    """Execute ``chapters`` in worker processes, longest first; fill in seconds, error, executed.

    Each kernel gets ``FMLIB_CHAPTER`` (its chapter's name) and ``FMLIB_CACHE_LOG`` (a file fmlib.train appends
    a record to per training run); the records are appended to ``ledger`` when one is given.
    Returns the wall time in seconds.
    """
    if not chapters:
        return 0.0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = int(os.environ.get("FMLIB_BOOK_JOBS", "0") or 0) or jobs or cores
    workers = max(1, min(jobs, len(chapters)))
    # one kernel alone: fmlib.runtime.configure_threads takes the cores other work leaves free
    threads = max(1, cores // workers) if workers > 1 else None
    queue = queue_order(chapters, order)
    env = kernel_environ(threads)
    log(f"book_engine: executing {len(queue)} chapter(s), {workers} at once, FMLIB_THREADS="
        f"{env.get('FMLIB_THREADS', 'auto')} each: " + ", ".join(c.name for c in queue))

    def one(chapter: Chapter, tmp: Path) -> None:
        src, dst = tmp / f"{chapter.name}.in.ipynb", tmp / f"{chapter.name}.out.ipynb"
        nbformat.write(chapter.notebook, src)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(src), str(dst),
               str(cwd_of(chapter)), str(timeout)]
        start = time.perf_counter()
        chapter_env = dict(env, FMLIB_CHAPTER=chapter.name, FMLIB_CACHE_LOG=str(tmp / "runs.jsonl"))
        proc = subprocess.run(cmd, env=chapter_env, capture_output=True, text=True)
        result = Path(str(dst) + ".json")
        if proc.returncode == 0 and result.exists():
            info = json.loads(result.read_text())
            chapter.seconds, chapter.error = info["seconds"], info["error"]
            chapter.executed = nbformat.read(dst, as_version=4)
        else:
            chapter.seconds = time.perf_counter() - start
            chapter.error = (f"the worker executing the chapter exited with {proc.returncode}:\n"
                             f"{proc.stderr[-4000:]}")
            chapter.executed = chapter.notebook
        state = "FAILED" if chapter.error else "done"
        log(f"book_engine: {chapter.name}: {state} in {chapter.seconds:.1f} s")

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="book-engine-") as tmp:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for future in [pool.submit(one, c, Path(tmp)) for c in queue]:
                future.result()
        runs = Path(tmp) / "runs.jsonl"
        if ledger is not None and runs.exists():
            ledger.extend(json.loads(line) for line in runs.read_text().splitlines() if line.strip())
    return time.perf_counter() - start


def timing_table(chapters: list[Chapter], wall: float) -> str:
    """Per chapter: executed now (seconds) or from the cache (with the seconds of the run that made it)."""
    lines = [f"{'chapter':<32}{'execution (s)':>14}  source", "-" * 60]
    total = 0.0
    for c in chapters:
        if c.seconds is not None:
            total += c.seconds
            lines.append(f"{c.name:<32}{c.seconds:>14.1f}  executed{' (FAILED)' if c.error else ''}")
        else:
            was = f"{c.cached_seconds:.1f}" if c.cached_seconds is not None else "?"
            lines.append(f"{c.name:<32}{'0.0':>14}  cache (its run took {was} s)")
    lines += ["-" * 60, f"{'sum of executions':<32}{total:>14.1f}",
              f"{'execution wall time':<32}{wall:>14.1f}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# The Sphinx extension
# --------------------------------------------------------------------------------------------------------

def _toc_docnames(app) -> list[str]:
    """The documents of ``_toc.yml`` in order (sphinx-external-toc's site map)."""
    site_map = getattr(app.config, "external_site_map", None)
    if site_map is None:
        from sphinx_external_toc.parsing import parse_toc_yaml
        site_map = parse_toc_yaml(Path(app.srcdir) / "_toc.yml")
    names = []
    for docname in [site_map.root.docname, *site_map.keys()]:
        if docname not in names:
            names.append(docname)
    return names


def _read_chapters(app) -> list[Chapter]:
    from myst_nb.core.read import create_nb_reader

    env = app.env
    chapters = []
    for docname in _toc_docnames(app):
        path = None
        for suffix in app.config.source_suffix:
            candidate = Path(app.srcdir) / f"{docname}{suffix}"
            if candidate.exists():
                path = candidate
                break
        if path is None:
            continue
        text = path.read_text(encoding="utf8")
        reader = create_nb_reader(str(path), env.myst_config, env.mystnb_config, text)
        if reader is None:
            continue  # plain Markdown page
        nb = reader.read(text)
        if not any(c.cell_type == "code" and c.source.strip() for c in nb.cells):
            continue
        chapters.append(Chapter(docname, path, nb))
    return chapters


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def builder_inited(app) -> None:
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn
    from sphinx.util import logging

    logger = logging.getLogger("book_engine")
    nb_config = app.env.mystnb_config
    app.env.book_engine_rerun = set()
    if nb_config.execution_mode != "cache":
        logger.info(f"book_engine: execute_notebooks is {nb_config.execution_mode!r}, not 'cache': "
                    "myst-nb executes (or not) by itself, the engine does nothing")
        return
    start = time.perf_counter()
    cache_path = Path(nb_config.execution_cache_path or Path(app.outdir).parent / ".jupyter_cache")
    cache = get_cache(str(cache_path))
    state_path = cache_path / STATE_FILE
    state = _load_json(state_path)
    timings_path = cache_path.parent / TIMINGS_FILE
    recorded = _load_json(timings_path).get("last_seconds", {})

    for k, v in DEFAULT_ENV.items():  # the kernels get these too (kernel_environ); the key must see them
        os.environ.setdefault(k, v)
    env_key = environment_key()
    chapters = _read_chapters(app)
    stale = []
    for c in chapters:
        c.code_hash = cache.create_hashed_notebook(c.notebook)[1]
        c.key = chapter_key(c.code_hash, env_key)
        record = state.get(c.docname, {})
        fresh = record.get("key") == c.key and record.get("status") == "ok"
        if fresh:
            try:
                cache.match_cache_notebook(c.notebook)
            except KeyError:
                fresh = False
        if fresh:
            c.cached_seconds = record.get("seconds")
            continue
        stale.append(c)
        logger.info(f"book_engine: {c.name} is stale ({stale_reason(record, c.code_hash, env_key)})")
        for hashkey in {c.code_hash, record.get("hash")} - {None}:
            try:
                from jupyter_cache.cache.db import NbCacheRecord
                cache.remove_cache(NbCacheRecord.record_from_hashkey(hashkey, cache.db).pk)
            except KeyError:
                pass

    def cwd_of(chapter: Chapter) -> Path:
        return chapter.path.parent

    runs: list[dict] = []
    wall = execute_chapters(stale, cwd_of, nb_config.execution_timeout or 1200, recorded,
                            log=logger.info, ledger=runs)
    reports = Path(app.outdir) / "reports"
    for c in stale:
        bundle = CacheBundleIn(c.executed, str(c.path), data={"execution_seconds": c.seconds})
        cache.cache_notebook_bundle(bundle, check_validity=False, overwrite=True)
        state[c.docname] = {"key": c.key, "hash": c.code_hash, "seconds": c.seconds, "environment": env_key,
                            "status": "failed" if c.error else "ok"}
        recorded[c.docname] = c.seconds
        app.env.book_engine_rerun.add(c.docname)
        report = reports / f"{c.docname}.err.log"
        if c.error:
            reports.mkdir(parents=True, exist_ok=True)
            report.write_text(c.error)
            tail = "\n".join(c.error.strip().splitlines()[-30:])
            logger.warning(f"chapter {c.name} ({c.path.name}) failed while executing:\n{tail}",
                           location=c.docname, type="book_engine", subtype="exec")
        else:
            report.unlink(missing_ok=True)
    state_path.write_text(json.dumps(state, indent=1, sort_keys=True))
    table = timing_table(chapters, wall)
    if stale:
        table += "\n" + model_reuse(runs)
    logger.info("book_engine: chapter execution (key check and execution took "
                f"{time.perf_counter() - start:.1f} s)\n" + table)
    timings_path.write_text(json.dumps({
        "last_seconds": recorded, "wall": wall, "table": table,
        "chapters": [{"chapter": c.name, "seconds": c.seconds, "cached": c.seconds is None,
                      "cached_seconds": c.cached_seconds, "failed": bool(c.error)} for c in chapters],
    }, indent=1))


def env_get_outdated(app, env, added, changed, removed) -> list[str]:
    """Re-read the chapters executed in this build, even when their source did not change."""
    return sorted(getattr(env, "book_engine_rerun", set()) - set(added) - set(changed))


def _marker(app) -> Path:
    return Path(app.outdir).parent / OK_MARKER


def forget_success(app) -> None:
    _marker(app).unlink(missing_ok=True)


def record_success(app, exception) -> None:
    if exception is None and app.statuscode == 0 and getattr(app, "_warncount", 1) == 0:
        _marker(app).write_text("the last build of this folder finished with no warning\n")


def setup(app):
    app.connect("builder-inited", forget_success, priority=100)
    app.connect("builder-inited", builder_inited, priority=900)  # after myst-nb sets env.mystnb_config
    app.connect("env-get-outdated", env_get_outdated)
    app.connect("build-finished", record_success)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "env_version": 1}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="worker: execute one notebook")
    parser.add_argument("--worker", nargs=4, metavar=("SRC", "DST", "CWD", "TIMEOUT"), required=True)
    a = parser.parse_args()
    sys.exit(run_worker(a.worker[0], a.worker[1], a.worker[2], int(a.worker[3])))
