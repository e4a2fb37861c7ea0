"""The benchmark runs end to end on the CPU at one tiny point and writes complete results."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "benchmark_flash_attention.py"
DIRECTIONS = ["fwd", "bwd"]
IMPLS = ["flash_attn", "sdpa_math"]


def _run(out: Path) -> dict:
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--seqlens", "128", "--headdims", "64",
           "--causal", "0", "--tokens", "128", "--repeats", "2", "--threads", "1",
           "--directions", ",".join(DIRECTIONS), "--peers", "sdpa_math", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "flash_attn" in done.stdout and "[1/1]" in done.stderr
    (path,) = out.glob("cpu_*.json")
    return json.loads(path.read_text())


def test_cpu_benchmark_writes_complete_results(tmp_path):
    doc = _run(tmp_path)
    assert {"date", "command", "device_name", "torch", "flash_attn"} <= doc["meta"].keys()
    assert doc["config"]["peers"] == ["sdpa_math"] and doc["method"]["convention"]
    (point,) = doc["points"]
    assert (point["d"], point["s"], point["h"], point["b"]) == (64, 128, 32, 1)
    assert point["flash_attn_backend"] == {"fwd": "reference", "bwd": "reference"}
    for name in IMPLS:
        result = point["results"][name]
        assert "errors" not in result, result
        assert all(result[d]["tflops"] > 0 and result[d]["ms"] > 0 for d in DIRECTIONS)
        assert result["peak_mem_mib"] > 0
    assert all(point["speedup"][d]["x"] > 0 for d in DIRECTIONS)
    overhead = doc["overhead"]["results"]
    assert all(overhead[n][d]["us"] > 0 for n in IMPLS for d in ("fwd", "fwdbwd"))
    if importlib.util.find_spec("matplotlib"):
        assert len(list(tmp_path.glob("cpu_*.png"))) == 2
