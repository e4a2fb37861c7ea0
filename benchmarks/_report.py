"""Reporting: run metadata, the speedup summary, the text tables and the anchors context."""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

import flash_attn
from _impls import OURS

MISSING = "-"


def _cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")]
    return f"{names[0]} ({len(names)} logical CPUs)" if names else platform.processor() or platform.machine()


def _flash_attn_commit():
    src = Path(flash_attn.__file__).resolve().parent
    try:
        return subprocess.run(["git", "-C", str(src), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _triton_version():
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None


def metadata(device: str) -> dict:
    cuda = device == "cuda"
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name] + sys.argv),
        "device": device,
        "device_name": torch.cuda.get_device_name() if cuda else _cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],  # other work on a shared machine adds noise
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "triton": _triton_version(),
        "flash_attn": flash_attn.__version__,
        "flash_attn_commit": _flash_attn_commit(),
    }


def speedups(results: dict, directions: list) -> dict:
    """Per direction: the fastest peer and flash_attn's TFLOP/s over it (None if either is missing)."""
    out = {}
    for direction in directions:
        peers = {name: r[direction]["tflops"] for name, r in results.items()
                 if name != OURS and direction in r}
        ours = results.get(OURS, {}).get(direction)
        best = max(peers, key=peers.get) if peers else None
        out[direction] = {"best_peer": best,
                          "x": ours["tflops"] / peers[best] if ours and best else None}
    return out


def write_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=1) + "\n")


def _render(header: list, rows: list) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def _cell(result: dict, directions: list) -> str:
    return "/".join(f"{result[d]['tflops']:.3g}" if d in result else MISSING for d in directions)


def _speedup_cells(speedup: dict, directions: list) -> list:
    xs = "/".join(MISSING if speedup[d]["x"] is None else f"{speedup[d]['x']:.2f}x" for d in directions)
    return [xs, "/".join(speedup[d]["best_peer"] or MISSING for d in directions)]


def results_table(points: list, names: list, directions: list) -> str:
    header = ["d", "causal", "s", "b", "h", "flash_attn fwd/bwd"] + names + ["vs best peer", "best peer"]
    rows = [[pt["d"], int(pt["causal"]), pt["s"], pt["b"], pt["h"],
             "{fwd}/{bwd}".format(**pt["flash_attn_backend"])]
            + [_cell(pt["results"][n], directions) for n in names]
            + _speedup_cells(pt["speedup"], directions) for pt in points]
    return f"TFLOP/s as {'/'.join(directions)}\n" + _render(header, rows)


def memory_table(points: list, names: list) -> str:
    rows = [[pt["d"], int(pt["causal"]), pt["s"], pt["b"], pt["h"]]
            + [MISSING if pt["results"][n].get("peak_mem_mib") is None
               else f"{pt['results'][n]['peak_mem_mib']:.0f}" for n in names] for pt in points]
    return "peak memory above the inputs, MiB\n" + _render(["d", "causal", "s", "b", "h"] + names, rows)


def overhead_table(overhead: dict) -> str:
    shape = overhead["shape"]
    rows = [[name] + [f"{r[d]['us']:.1f}" if d in r else MISSING for d in ("fwd", "fwdbwd")]
            for name, r in overhead["results"].items()]
    return (f"host time per call, µs (b={shape['b']} s={shape['s']} h={shape['h']} d={shape['d']}, "
            f"flash_attn backend {overhead['flash_attn_backend']})\n"
            + _render(["impl", "fwd", "fwd+bwd"], rows))


def notes(points: list, overhead: dict) -> str:
    """One line per distinct failure: which implementation, what, where, and why."""
    seen = {}
    cases = [(f"d={p['d']} causal={int(p['causal'])} s={p['s']}", p["results"]) for p in points]
    for where, results in cases + [("overhead shape", overhead["results"])]:
        for name, r in results.items():
            for what, why in r.get("errors", {}).items():
                seen.setdefault((name, what, why), []).append(where)
    return "\n".join(f"note: {name} {what} failed at {', '.join(w)}: {why}"
                     for (name, what, why), w in seen.items())


def anchors_context(path: Path, points: list) -> str:
    """Rows of a stored peer run matching this run's configs, printed for context only."""
    rows = [a for a in json.loads(path.read_text()) if a.get("kind") == "train"]
    keys = {(p["d"], bool(p["causal"]), p["s"]) for p in points}
    picked = [a for a in rows if (a["d"], a["causal"], a["s"]) in keys]
    if not picked:
        return f"anchors ({path}): no row matches this run's configs"
    cols = sorted({k for a in picked for k in a if k.endswith("_TF")})
    body = [[a["d"], int(a["causal"]), a["s"]] + [MISSING if a.get(c) is None else a[c] for c in cols] for a in picked]
    return (f"CONTEXT ONLY, not measured in this run: stored peer run {path} (TFLOP/s)\n"
            + _render(["d", "causal", "s"] + cols, body))
