"""How time and memory are measured.

Time: warm-up calls, then the median of timed calls. CUDA: a pair of CUDA events around each call,
all recorded back to back and read after one synchronize (the GPU queue never drains between
calls). CPU: time.perf_counter around each call. Calls rotate among a few input sets when one set
is smaller than twice the last-level cache, so no call finds its inputs already cached. The number
of timed calls is --repeats, fewer (never below the device's minimum) when that would take longer
than the device's time budget; each result records how many it used.

Peak memory: memory above the inputs during one step (fwd+bwd when a backward is measured, else
fwd). CUDA: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(). CPU (Linux): the
process's resident high-water mark (VmHWM, what ru_maxrss reports) after resetting it through
/proc/self/clear_refs, minus the resident size before the step; meanwhile glibc's mmap threshold
is 64 KiB so every block of that size or more is mapped on allocation and unmapped on free.

Host overhead: the wall time per call of many calls issued back to back, one synchronize at the
end, on a tiny shape where the GPU finishes each call before the host issues the next; the median
of HOST_REPEATS such loops.
"""
from __future__ import annotations

import ctypes
import gc
import math
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from _impls import Impl, Point


@dataclass(frozen=True)
class Budget:
    warmup: int          # untimed calls first
    min_runs: int        # timed calls even when one is slower than max_seconds
    max_seconds: float   # per measurement: fewer timed calls beyond this
    overhead_seconds: float


BUDGET = {"cpu": Budget(1, 1, 2.0, 0.25), "cuda": Budget(3, 5, 3.0, 1.0)}
MAX_INPUT_SETS = 4
HOST_REPEATS = 7
CPU_CACHE_FALLBACK = 32 << 20
GPU_L2_FALLBACK = 50 << 20
_GLIBC_MMAP_THRESHOLD = -3           # mallopt's M_MMAP_THRESHOLD
_MMAP_WHILE_MEASURING = 64 << 10
_MMAP_OTHERWISE = 32 << 20            # the ceiling glibc's own dynamic threshold grows to
_CLEAR_REFS = Path("/proc/self/clear_refs")


def setup(device: str) -> None:
    """Fixes the CPU allocator's regime for the whole run (the memory step changes it briefly)."""
    if device == "cpu" and _CLEAR_REFS.exists():
        ctypes.CDLL(None).mallopt(_GLIBC_MMAP_THRESHOLD, _MMAP_OTHERWISE)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _cache_bytes(device: str) -> int:
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return getattr(props, "L2_cache_size", GPU_L2_FALLBACK)
    try:  # e.g. "32768K"
        return int(Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()[:-1]) << 10
    except (OSError, ValueError):
        return CPU_CACHE_FALLBACK


def make_inputs(p: Point, layout: str, n_sets: int) -> list:
    """n_sets of (q, k, v, dout), random normal (never zeros), q/k/v requiring grad."""
    gen = torch.Generator(device=p.device).manual_seed(0)
    sets = []
    for _ in range(n_sets):
        q, k, v, dout = (torch.randn(p.shape(layout), generator=gen, device=p.device, dtype=p.dtype)
                         for _ in range(4))
        sets.append((q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), dout))
    return sets


def n_input_sets(p: Point) -> int:
    set_bytes = 4 * p.b * p.s * p.h * p.d * p.dtype.itemsize
    return max(1, min(MAX_INPUT_SETS, math.ceil(2 * _cache_bytes(p.device) / set_bytes)))


def _caller(fn, sets: list, direction: str):
    """call(i) runs one `direction` on input set i mod len(sets)."""
    n = len(sets)
    if direction == "fwd":
        return lambda i: fn(*sets[i % n][:3])
    if direction == "fwdbwd":
        def step(i):
            q, k, v, dout = sets[i % n]
            torch.autograd.grad(fn(q, k, v), (q, k, v), dout)
        return step
    outs = [fn(*s[:3]) for s in sets]  # bwd: one graph per set, replayed
    return lambda i: torch.autograd.grad(outs[i % n], sets[i % n][:3], sets[i % n][3],
                                         retain_graph=True)


def _time_calls(call, n: int, device: str) -> list:
    """Seconds taken by each of the calls call(0) .. call(n - 1)."""
    if device == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(n)]
        for i, (start, end) in enumerate(events):
            start.record()
            call(i)
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) / 1e3 for start, end in events]
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - t0)
    return times


def time_direction(fn, sets: list, direction: str, p: Point, repeats: int) -> dict:
    budget = BUDGET[p.device]
    call = _caller(fn, sets, direction)
    for i in range(budget.warmup):
        call(i)
    first = _time_calls(call, 1, p.device)  # also sizes the rest
    runs = max(budget.min_runs, min(repeats, int(budget.max_seconds / max(first[0], 1e-9))))
    seconds = statistics.median(first + _time_calls(call, runs - 1, p.device))
    return {"ms": seconds * 1e3, "tflops": p.flops(direction) / seconds / 1e12, "runs": runs}


def _status_kib(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field))
    return int(line.split()[1])


def _cpu_peak_mib(step):
    if not _CLEAR_REFS.exists():
        return None
    libc = ctypes.CDLL(None)
    libc.mallopt(_GLIBC_MMAP_THRESHOLD, _MMAP_WHILE_MEASURING)
    try:
        gc.collect()
        libc.malloc_trim(0)
        base = _status_kib("VmRSS:")
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident size
        step()
        return (_status_kib("VmHWM:") - base) / 1024
    finally:
        libc.mallopt(_GLIBC_MMAP_THRESHOLD, _MMAP_OTHERWISE)


def peak_memory_mib(fn, inputs: tuple, training: bool, device: str):
    q, k, v, dout = inputs

    def step():
        out = fn(q, k, v)
        if training:
            torch.autograd.grad(out, (q, k, v), dout)

    if device != "cuda":
        return _cpu_peak_mib(step)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def _describe(err: Exception, caught: list) -> str:
    """The error's first line, then the first warnings raised before it (SDPA's reasons)."""
    text = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}"
    reasons = [str(w.message).strip().splitlines()[0][:200] for w in caught[:4] if str(w.message).strip()]
    return text + (f" [{'; '.join(reasons)}]" if reasons else "")


def _release(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _attempt(device: str, errors: dict, key: str, body):
    """body(), or None with errors[key] saying why: an implementation that cannot run a case (an
    unsupported shape, out of memory, a failed compile) is a result, not the end of the run."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            return body()
    except Exception as err:  # noqa: BLE001 (see the docstring)
        errors[key] = _describe(err, caught)
        return None
    finally:
        _release(device)


def _run_cases(impl: Impl, p: Point, n_sets: int, cases: dict) -> dict:
    """{name: case(fn, sets)} for each case that ran, under impl's context, plus
    errors: {name or "setup": why} when something could not."""
    errors = {}

    def body():
        with impl.context():
            fn, sets = impl.build(p), make_inputs(p, impl.layout, n_sets)
            done = {name: _attempt(p.device, errors, name, lambda: case(fn, sets))
                    for name, case in cases.items()}
            return {name: value for name, value in done.items() if name not in errors}

    result = _attempt(p.device, errors, "setup", body) or {}
    return {**result, "errors": errors} if errors else result


def measure(impl: Impl, p: Point, directions: list, repeats: int) -> dict:
    """{direction: {ms, tflops, runs}, peak_mem_mib[, errors]}."""
    training = any(d != "fwd" for d in directions)
    cases = {d: (lambda fn, sets, d=d: time_direction(fn, sets, d, p, repeats)) for d in directions}
    cases["peak_mem_mib"] = lambda fn, sets: peak_memory_mib(fn, sets[0], training, p.device)
    return _run_cases(impl, p, n_input_sets(p), cases)


def _host_us(fn, sets: list, direction: str, device: str) -> dict:
    budget = BUDGET[device]
    call = _caller(fn, sets, direction)
    for i in range(budget.warmup + 1):
        call(i)
    one = _time_calls(call, 1, device)[0]
    calls = max(10, min(1000, int(budget.overhead_seconds / HOST_REPEATS / max(one, 1e-9))))
    per_call = []
    for _ in range(HOST_REPEATS):  # a shared machine's host is noisy: the median of several loops
        _sync(device)
        t0 = time.perf_counter()
        for i in range(calls):
            call(i)
        _sync(device)
        per_call.append((time.perf_counter() - t0) / calls * 1e6)
    return {"us": statistics.median(per_call), "calls": calls, "repeats": HOST_REPEATS}


def host_overhead(impl: Impl, p: Point) -> dict:
    """{fwd: {us, calls}, fwdbwd: {us, calls}[, errors]}: host time per call at a tiny shape."""
    cases = {d: (lambda fn, sets, d=d: _host_us(fn, sets, d, p.device)) for d in ("fwd", "fwdbwd")}
    return _run_cases(impl, p, 1, cases)
