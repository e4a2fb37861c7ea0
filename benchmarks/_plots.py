"""The two PNGs: flash_attn's speedup over each peer, and peak memory, against seqlen."""
from __future__ import annotations

import math
from pathlib import Path

from _impls import OURS

# One color per implementation in every figure; the CPU's three (blue, brown, gray) stay distinct.
COLORS = {OURS: "C0", "sdpa_flash": "C1", "sdpa_cudnn": "C2", "sdpa_efficient": "C3", "flex": "C4",
          "sdpa_math": "C5", "naive": "C7"}
DIRECTION_NAMES = {"fwd": "forward", "bwd": "backward", "fwdbwd": "forward + backward"}


def _configs(points: list) -> list:
    """(d, causal) pairs in run order; each is one column of panels."""
    return list(dict.fromkeys((p["d"], p["causal"]) for p in points))


def _series(points: list, config: tuple, value) -> tuple:
    """Seqlens and value(point) for one config, dropping points where value is None."""
    pairs = [(p["s"], value(p)) for p in points if (p["d"], p["causal"]) == config]
    pairs = [(s, y) for s, y in pairs if y is not None]
    return [s for s, _ in pairs], [y for _, y in pairs]


def _tflops(point: dict, name: str, direction: str):
    r = point["results"][name].get(direction)
    return r["tflops"] if r else None


def _speedup_vs(name: str, direction: str):
    def value(point):
        ours, peer = _tflops(point, OURS, direction), _tflops(point, name, direction)
        return ours / peer if ours and peer else None
    return value


def _panel_grid(plt, rows: int, cols: int, seqlens: list):
    fig, axes = plt.subplots(rows, cols, figsize=(max(8.0, 3.6 * cols), 2.8 * rows + 1.4),
                             squeeze=False, sharex=True)
    for ax in axes.flat:
        ax.set_xscale("log", base=2)
        ax.set_xticks(seqlens, [str(s) for s in seqlens])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.grid(True, alpha=0.3)
    return fig, axes


def _log2_y(ax, plt, suffix: str) -> None:
    """Log-2 axis spanning whole powers of two around the data, so both ends carry a tick."""
    ys = [y for line in ax.get_lines() for y in line.get_ydata() if y > 0]
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda y, _: f"{y:g}{suffix}"))
    if ys:
        lo, hi = math.floor(math.log2(min(ys))), math.ceil(math.log2(max(ys)))
        ax.set_ylim(2.0 ** lo / 1.15, 2.0 ** max(hi, lo + 1) * 1.15)


def _finish(fig, axes, title: str, path: Path) -> None:
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)


def speedup_png(doc: dict, path: Path, plt) -> None:
    points, directions, peers = doc["points"], doc["config"]["directions"], doc["config"]["peers"]
    configs = _configs(points)
    fig, axes = _panel_grid(plt, len(directions), len(configs), doc["config"]["seqlens"])
    for row, direction in enumerate(directions):
        for col, config in enumerate(configs):
            ax = axes[row][col]
            for name in peers:
                ax.plot(*_series(points, config, _speedup_vs(name, direction)), marker="o",
                        label=name, color=COLORS[name])
            ax.axhline(1.0, color="black", linewidth=0.8)
            _log2_y(ax, plt, "x")
            ax.set_title(f"{DIRECTION_NAMES[direction]}, d={config[0]} causal={int(config[1])}",
                         fontsize=9)
            ax.set_ylabel("speedup (x)" if col == 0 else "")
            ax.set_xlabel("seqlen" if row == len(directions) - 1 else "")
    backends = sorted({f"{p['flash_attn_backend']['fwd']}/{p['flash_attn_backend']['bwd']}"
                       for p in points})
    _finish(fig, axes, f"flash_attn speedup over each peer (>1: flash_attn faster)\n"
            f"{doc['meta']['device_name']}, {doc['config']['dtype']}\n"
            f"flash_attn backend fwd/bwd: {', '.join(backends)}", path)


def memory_png(doc: dict, path: Path, plt) -> None:
    points = doc["points"]
    names = [OURS] + doc["config"]["peers"]
    configs = _configs(points)
    fig, axes = _panel_grid(plt, 1, len(configs), doc["config"]["seqlens"])
    for col, config in enumerate(configs):
        ax = axes[0][col]
        for name in names:
            ax.plot(*_series(points, config, lambda p: p["results"][name].get("peak_mem_mib")),
                    marker="o", label=name, color=COLORS[name])
        _log2_y(ax, plt, "")
        ax.set_title(f"d={config[0]} causal={int(config[1])}", fontsize=9)
        ax.set_xlabel("seqlen")
        ax.set_ylabel("MiB" if col == 0 else "")
    step = "fwd+bwd" if any(d != "fwd" for d in doc["config"]["directions"]) else "fwd"
    _finish(fig, axes, f"peak memory above the inputs, one {step} step\n"
            f"{doc['meta']['device_name']}, {doc['config']['dtype']}, batch = tokens / seqlen", path)


def write_pngs(doc: dict, stem: Path) -> list:
    """Writes <stem>_speedup.png and <stem>_memory.png; returns their paths ([] without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        print(f"plots skipped: matplotlib is not importable ({err})")
        return []
    paths = [stem.with_name(stem.name + "_speedup.png"), stem.with_name(stem.name + "_memory.png")]
    for draw, path in zip((speedup_png, memory_png), paths):
        draw(doc, path, plt)
        plt.close("all")
    return paths
