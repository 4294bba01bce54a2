"""Results files: provenance, atomic writes, and the summary table.

Every results file records the device, driver, library versions, commit and config of
the run that made it; numbers are only ever written here by the runner.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata


def git_commit() -> dict:
    """HEAD, whether tracked files differ from it, and ``tree``: the git tree hash of the files
    the run actually had (tracked and untracked-not-ignored, as ``git add -A`` sees them, less
    the carried wheels in ``.whl/``). A
    copy whose git metadata is stale (the device machines keep a lease's first sync of .git)
    reports an old HEAD, dirty; its ``tree`` still names the content:
    ``git log --all --format='%H %T' | grep TREE`` gives the commit it equals. None where git
    cannot tell."""
    def git(*args, env=None):
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=60,
                                  check=True, env=env).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None,
            "tree": _worktree_tree(git) if commit else None}


def _worktree_tree(git):
    """The tree hash of the working tree, through a scratch index and a scratch object store
    (existing objects found through the repository's as alternates): nothing in .git changes."""
    objects = git("rev-parse", "--git-path", "objects")
    top = git("rev-parse", "--show-toplevel")
    if not objects or not top:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        os.mkdir(os.path.join(scratch, "objects"))
        env = {**os.environ, "GIT_INDEX_FILE": os.path.join(scratch, "index"),
               "GIT_OBJECT_DIRECTORY": os.path.join(scratch, "objects"),
               "GIT_ALTERNATE_OBJECT_DIRECTORIES": os.path.abspath(os.path.join(os.getcwd(), objects))}
        # .whl/: the wheels `make gpu-wheels` makes and a device call carries (ignored here
        # through .git/info/exclude, which a device copy may lack): not the project's code
        if git("-C", top, "add", "-A", "--", ".", ":(exclude).whl", env=env) is None:
            return None
        return git("-C", top, "write-tree", env=env)


def library_versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("torch", "triton", "jax", "jaxlib", "numpy", "nvidia-ml-py", "hydra-core"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_json_atomic(path: str, payload: dict) -> str:
    """Write JSON to ``path`` atomically (serialized fully before anything touches disk)."""
    return write_text_atomic(path, json.dumps(payload, indent=1, default=str))


def write_text_atomic(path: str, text: str) -> str:
    """Write text to ``path`` atomically (see ``write_bytes_atomic``)."""
    return write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path, data: bytes) -> str:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync, and a rename:
    a failure at any point leaves the old file (or none) and no temporary behind."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return str(path)


def save_figure_atomic(fig, path: str) -> str:
    """A matplotlib figure as a PNG at ``path`` (rendered in memory, then ``write_bytes_atomic``:
    no partial file or temporary on error); the figure is closed either way."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=110)
    finally:
        plt.close(fig)
    return write_bytes_atomic(path, buf.getvalue())


def results_path(out_dir: str, device_name: str) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in device_name.lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return os.path.join(out_dir, f"{slug[:40]}-{stamp}.json")


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


RATE_KEYS = (("tokens_per_s", "tok/s"), ("images_per_s", "img/s"), ("audio_s_per_s", "audio s/s"))


def rate(r: dict) -> str:
    """The row's own throughput unit, where it has one (tokens, images, audio seconds per s)."""
    for key, unit in RATE_KEYS:
        if r.get(key) is not None:
            return f"{r[key]:.3g} {unit}"
    return "-"


def pct_of_ceiling(r: dict, which: str = "measured"):
    """% of the device's ceiling: FLOP/s for compute-bound rows, bandwidth for memory-bound ones."""
    key = f"frac_{which}_peak" if r.get("tflops") is not None else f"frac_{which}_bw"
    return None if r.get(key) is None else 100 * r[key]


def summary_table(records: list[dict]) -> str:
    """A plain-text table, one line per (suite, case, impl)."""
    head = ("suite", "case", "impl", "mode", "status", "ms", "TFLOP/s", "GB/s", "rate", "%meas",
            "%sheet", "vs peer", "max err")
    rows = [head]
    for r in records:
        rows.append((
            r["suite"], r["case"], r["impl"], r.get("mode", "-"), r["status"],
            _fmt(r.get("median_ms"), ".3f"), _fmt(r.get("tflops"), ".3g"), _fmt(r.get("gbps"), ".3g"),
            rate(r), _fmt(pct_of_ceiling(r), ".1f"), _fmt(pct_of_ceiling(r, "datasheet"), ".1f"),
            _fmt(r.get("speedup_vs_peer"), ".2f"), _fmt(r.get("max_error"), ".1e"),
        ))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    problems = [r for r in records if r["status"] in ("failed", "error", "skipped")]
    for r in problems:
        why = r.get("reason") or f"max error {r.get('max_error'):.3e} > tolerance {r.get('tolerance')}"
        lines.append(f"{r['status']}: {r['case']} {r['impl']}: {why}")
    return "\n".join(lines)
