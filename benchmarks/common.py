"""Shared pieces: the machine and software description, datasets, statistics, markdown tables."""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import socket
import subprocess

import numpy as np

SIGMA_PX = 0.5  # noise of every synthetic data set, pixels per coordinate


# ----------------------------------------------------------------------------- environment
def bead_views(positions: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """(V, size, size) float32 views of Gaussian beads of ``sigma`` px at centred ``positions``
    (V, M, 2) px, drawn separably (a bead's x and y profiles, multiplied)."""
    c = np.arange(size) + 0.5 - size / 2
    views = np.zeros((positions.shape[0], size, size), np.float32)
    for v, pos in enumerate(positions):
        gx = np.exp(-((c[None, :] - pos[:, 0, None]) ** 2) / (2 * sigma**2))  # (M, size)
        gy = np.exp(-((c[None, :] - pos[:, 1, None]) ** 2) / (2 * sigma**2))
        views[v] = gy.T @ gx
    return views


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def _version(name: str) -> str | None:
    try:
        return getattr(importlib.import_module(name), "__version__", "unknown")
    except Exception:  # noqa: BLE001 - a missing optional package is just reported
        return None


def git_state() -> dict:
    """Commit of the working tree and whether the package's sources differ from it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args, strip=True):
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.strip() if strip else out

    changed = git("status", "--porcelain", "--", "lmalign_jax", strip=False)
    return {"commit": git("rev-parse", "HEAD") or None, "subject": git("log", "-1", "--format=%s") or None,
            "lmalign_jax_modified": [line[3:] for line in changed.splitlines() if line.strip()]}  # fmt: skip


def environment(quick: bool) -> dict:
    import jax

    devices = jax.devices()
    gpu = [d for d in devices if d.platform == "gpu"]
    return {
        "date": datetime.date.today().isoformat(),
        "timestamp": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "quick": quick,
        "env": {
            k: os.environ.get(k)
            for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")
        },
        "versions": {
            "python": platform.python_version(),
            **{
                n: _version(n)
                for n in (
                    "lmalign_jax",
                    "jax",
                    "jaxlib",
                    "numpy",
                    "scipy",
                    "optimistix",
                    "optax",
                    "equinox",
                    "lineax",
                    "skimage",
                    "astra",
                )
            },
        },
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in devices],
        "device_kind": [d.device_kind for d in devices],
        "gpu": bool(gpu),
        "git": git_state(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def machine_slug(meta: dict) -> str:
    kind = "gpu-" + meta["device_kind"][0] if meta["gpu"] else "cpu"
    host = meta["machine"].split(".")[0]
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in f"{host}-{kind}").strip("-").lower()


# ----------------------------------------------------------------------------- data
PAPER_TILTS = (-55.0, 53.0)  # the paper's 107 views
PAPER = {
    # Jou et al.: real data, 107 views, 2,048 px images. RMS residual (px), time (s).
    "a": {"rms_px": 0.653, "seconds": 9.18, "imod_rms_px": 0.839, "imod_seconds": 8.0,
          "table": "Table 1", "note": "6 markers present in all 107 views"},
    "b": {"rms_px": 0.895, "seconds": 30.50, "seconds_without_initial": 78.57,
          "table": "Table 2", "note": "all 30 markers with gaps, ~2,900 points"},
}  # fmt: skip


def paper_dataset(which: str, seed: int = 1):
    """Synthetic data shaped like the paper's: (a) 6 markers in all views; (b) 30 markers with gaps."""
    from lmalign_jax import simulate

    n_markers, missing = {"a": (6, 0.0), "b": (30, 0.1)}[which]
    return simulate(n_views=107, n_markers=n_markers, tilt_range=PAPER_TILTS, image_size=(2048, 2048),
                    noise_px=SIGMA_PX, missing_fraction=missing, seed=seed)  # fmt: skip


def scaling_dataset(n_markers: int, n_views: int = 61, seed: int = 1):
    from lmalign_jax import simulate

    return simulate(
        n_views=n_views, n_markers=n_markers, image_size=(2048, 2048), noise_px=SIGMA_PX, seed=seed
    )


# ----------------------------------------------------------------------------- statistics
def floor_stats(rms: float, n_obs: int, n_free: int, sigma: float = SIGMA_PX) -> dict:
    """RMS relative to the noise floor sigma sqrt(1 - n_free / (2 N_obs)).

    At the optimum 2 N_obs RMS^2 / sigma^2 is chi-square with 2 N_obs - n_free degrees of
    freedom, so RMS / floor scatters about 1 with a standard deviation of 1 / sqrt(2 dof).
    """
    dof = 2 * n_obs - n_free
    floor = sigma * np.sqrt(max(dof, 0) / (2 * n_obs))
    sd = 1.0 / np.sqrt(2.0 * max(dof, 1))
    ratio = rms / floor if floor > 0 else float("nan")
    return {"noise_floor_px": float(floor), "ratio_to_floor": float(ratio), "ratio_sd": float(sd),
            "z_score": float((ratio - 1.0) / sd), "dof": int(dof)}  # fmt: skip


def median(xs) -> float:
    return float(np.median(xs)) if len(xs) else float("nan")


# ----------------------------------------------------------------------------- markdown
def fmt(x, spec: str = ".3g") -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, (int, np.integer)):
        return f"{x:,d}"
    if not np.isfinite(x):
        return "-"
    return format(x, spec)


def seconds(x) -> str:
    if x is None or not np.isfinite(x):
        return "-"
    if x < 1e-3:
        return f"{x * 1e6:.0f} us"
    if x < 1:
        return f"{x * 1e3:.1f} ms"
    return f"{x:.2f} s"


def table(headers, rows) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def memory_cells(m: dict) -> tuple[str, str]:
    """(steady-state peak RSS with its growth over the RSS before, the same for the first call), MB."""
    first = f"{m['first_call_peak_rss_mb']:.0f} (+{m['first_call_rss_growth_mb']:.0f})"
    if m.get("steady_peak_rss_mb") is None:
        return "-", first
    return f"{m['steady_peak_rss_mb']:.0f} (+{m['steady_rss_growth_mb']:.0f})", first
