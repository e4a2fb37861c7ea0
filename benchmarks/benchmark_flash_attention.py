"""flash_attn against torch's attention implementations, in the FlashAttention convention.

hidden 2048 (nheads = 2048 / headdim), batch = tokens / seqlen (tokens = 16384 by convention),
FLOPs = 4·b·h·s²·d for the forward (halved when causal), 2.5× that for the backward, 3.5× for
forward + backward. All implementations run in this one process, point by point, so every
comparison is a same-run comparison. How time and memory are measured: see _timing.py.

    python benchmarks/benchmark_flash_attention.py --device cpu --quick
    python benchmarks/benchmark_flash_attention.py --device cuda --headdims 128 --causal both

Writes <out>/<device>_<time>.json (every number + metadata; rewritten after each point) and two
PNGs, and prints the tables. Progress (one line per point, with an ETA) goes to stderr.
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

import _report
import _timing
from _impls import CONVENTION, DEFAULT_PEERS, IMPLS, OURS, Point, convention_point, flash_attn_backends
from _plots import write_pngs

DIRECTIONS = ("fwd", "bwd", "fwdbwd")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# (device, quick) -> defaults. CPU: minutes on 2 cores (16-bit matmuls are slow there, and the
# naive peer's most of all); --quick measures no separate fwd+bwd on CPU.
DEFAULTS = {
    ("cpu", False): dict(seqlens=[256, 512, 1024], headdims=[64, 128], tokens=1024, repeats=5,
                         directions=list(DIRECTIONS)),
    ("cpu", True): dict(seqlens=[256, 512], headdims=[64], tokens=512, repeats=3,
                        directions=["fwd", "bwd"]),
    ("cuda", False): dict(seqlens=[512, 1024, 2048, 4096, 8192, 16384], headdims=[64, 128, 256],
                          tokens=16384, repeats=30, directions=list(DIRECTIONS)),
    ("cuda", True): dict(seqlens=[1024, 4096], headdims=[64, 128], tokens=16384, repeats=10,
                         directions=list(DIRECTIONS)),
}
OVERHEAD_SHAPE = dict(b=1, s=128, h=16, d=64)


def _csv(kind):
    def parse(text: str) -> list:
        return [kind(x) for x in text.split(",") if x.strip()]
    return parse


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"),
                    default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    ap.add_argument("--headdims", type=_csv(int), help="e.g. 64,128,256")
    ap.add_argument("--seqlens", type=_csv(int), help="e.g. 512,1024,2048")
    ap.add_argument("--causal", choices=("0", "1", "both"), default="both")
    ap.add_argument("--directions", type=_csv(str), help="subset of fwd,bwd,fwdbwd")
    ap.add_argument("--peers", type=_csv(str),
                    help=f"subset of {','.join(n for n in IMPLS if n != OURS)}; '' for none "
                         f"(default cpu: {','.join(DEFAULT_PEERS['cpu'])}; "
                         f"cuda: {','.join(DEFAULT_PEERS['cuda'])})")
    ap.add_argument("--repeats", type=int, help="timed calls per measurement (fewer for slow ones)")
    ap.add_argument("--tokens", type=int, help="batch x seqlen (convention: 16384; less on CPU)")
    ap.add_argument("--threads", type=int,
                    help="CPU: torch.set_num_threads (default: torch's choice); 1 avoids OpenMP "
                         "stalls on a machine busy with other work")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    ap.add_argument("--quick", action="store_true", help="fewer, smaller points")
    ap.add_argument("--anchors", type=Path,
                    help="a stored peer run (JSON) to print next to the results, for context only")
    return ap


def parse_args(argv=None) -> argparse.Namespace:
    ap = _parser()
    args = ap.parse_args(argv)
    for key, value in DEFAULTS[(args.device, args.quick)].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.peers is None:
        args.peers = list(DEFAULT_PEERS[args.device])
    bad = [n for n in args.peers if n not in IMPLS or n == OURS] + \
          [d for d in args.directions if d not in DIRECTIONS]
    if bad:
        ap.error(f"unknown peer or direction: {', '.join(bad)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    return args


def _points(args) -> list:
    causals = {"0": [False], "1": [True], "both": [False, True]}[args.causal]
    return [convention_point(d, c, s, args.tokens, args.device, DTYPES[args.dtype])
            for d in args.headdims for c in causals for s in args.seqlens]


def _clock(seconds: float) -> str:
    return f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"


def _progress(i: int, points: list, started: float, row: dict, point_s: float) -> None:
    done = sum(p.flops("fwd") for p in points[: i + 1])
    left = sum(p.flops("fwd") for p in points[i + 1:])
    elapsed = time.perf_counter() - started
    backend = "{fwd}/{bwd}".format(**row["flash_attn_backend"])
    print(f"[{i + 1}/{len(points)}] {points[i].label()}  flash_attn {backend}  {point_s:.1f}s  "
          f"elapsed {_clock(elapsed)}  ETA {_clock(elapsed * left / done)}", file=sys.stderr, flush=True)


def run_point(p: Point, impls: list, args) -> dict:
    results = {impl.name: _timing.measure(impl, p, args.directions, args.repeats) for impl in impls}
    return {"d": p.d, "causal": p.causal, "s": p.s, "b": p.b, "h": p.h,
            "flops_fwd": p.flops("fwd"), "flash_attn_backend": flash_attn_backends(p),
            "results": results, "speedup": _report.speedups(results, args.directions)}


def run_overhead(impls: list, args) -> dict:
    print("[overhead] host time per call at a tiny shape", file=sys.stderr, flush=True)
    p = Point(causal=False, device=args.device, dtype=DTYPES[args.dtype], **OVERHEAD_SHAPE)
    backend = flash_attn_backends(p)
    return {"shape": OVERHEAD_SHAPE, "flash_attn_backend": f"{backend['fwd']}/{backend['bwd']}",
            "results": {impl.name: _timing.host_overhead(impl, p) for impl in impls}}


def _document(args) -> dict:
    config = {k: getattr(args, k) for k in ("device", "dtype", "headdims", "seqlens", "causal",
                                            "directions", "peers", "repeats", "tokens", "threads", "quick")}
    return {"meta": _report.metadata(args.device), "config": config,
            "method": {"convention": CONVENTION, "measurement": _timing.__doc__.strip()},
            "points": [], "overhead": None}


def _print_summary(doc: dict, args) -> None:
    names = [OURS] + args.peers
    print(_report.results_table(doc["points"], names, args.directions))
    print()
    print(_report.memory_table(doc["points"], names))
    print()
    print(_report.overhead_table(doc["overhead"]))
    notes = _report.notes(doc["points"], doc["overhead"])
    if notes:
        print(notes)
    if args.anchors:
        print()
        print(_report.anchors_context(args.anchors, doc["points"]))


def main(argv=None) -> int:
    args = parse_args(argv)
    _timing.setup(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    impls = [IMPLS[OURS]] + [IMPLS[n] for n in args.peers]
    points = _points(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{args.device}_{datetime.datetime.now():%Y%m%d-%H%M%S}"
    json_path = stem.with_suffix(".json")
    doc = _document(args)
    started = time.perf_counter()
    for i, p in enumerate(points):
        t0 = time.perf_counter()
        doc["points"].append(run_point(p, impls, args))
        _report.write_json(json_path, doc)
        _progress(i, points, started, doc["points"][-1], time.perf_counter() - t0)
    doc["overhead"] = run_overhead(impls, args)
    doc["meta"]["wall_seconds"] = round(time.perf_counter() - started, 1)
    _report.write_json(json_path, doc)
    _print_summary(doc, args)
    print(f"\nwrote {json_path}")
    for path in write_pngs(doc, stem):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
