"""Builds libflash_attn_cuda.so: writes a build.ninja and runs ninja (MAX_JOBS jobs, with progress).

    python csrc_cuda/build.py --out flash_attn/_lib/libflash_attn_cuda.so

setup.py calls build(build_dir, out_lib). Environment variables narrow what is compiled (lists split on ';' or ','):
    FLASH_ATTENTION_CUDA_ARCHS  default "80;90": sm_80 and sm_90 code, plus compute_90 PTX for newer
    FLASH_ATTENTION_HEAD_DIMS   default all buckets of generate.HEAD_DIMS
    FLASH_ATTENTION_DTYPES      default "fp16;bf16"
    FLASH_ATTENTION_DIRECTIONS  default "fwd;bwd"
    FLASH_ATTENTION_PTXAS_VERBOSE=1 prints registers and spills per kernel
The library links the CUDA and C++ runtimes statically and exports only the fa_* C ABI, so it loads
under any torch build and on systems older than the one it was built on (glibc permitting).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import generate  # noqa: E402

GLUE_SOURCES = ("common/abi_glue.cu",)


def _env_list(name: str, default):
    raw = os.environ.get(name)
    if not raw:
        return list(default)
    return [x.strip() for x in raw.replace(",", ";").split(";") if x.strip()]


def find_nvcc() -> str:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return str(Path(cuda_home) / "bin" / "nvcc")
    found = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not Path(found).exists():
        raise RuntimeError("nvcc not found: set CUDA_HOME or put nvcc on PATH")
    return found


def find_cutlass_include() -> str:
    env = os.environ.get("CUTLASS_INCLUDE_DIR")
    if env:
        return env
    try:
        import cutlass_library  # the nvidia-cutlass wheel ships the headers
        inc = Path(cutlass_library.__file__).parent / "source" / "include"
        if (inc / "cute" / "tensor.hpp").exists():
            return str(inc)
    except ImportError:
        pass
    for p in map(Path, sys.path):
        for hit in p.glob("**/include/cute/tensor.hpp") if p.is_dir() and "site-packages" in str(p) else []:
            return str(hit.parent.parent)
    raise RuntimeError("CuTe headers not found: pip install nvidia-cutlass==4.2.0.0, then install flash_attn "
                       "with pip install --no-build-isolation . (an isolated build cannot see it), or set "
                       "CUTLASS_INCLUDE_DIR")


def gencode_flags(archs) -> list[str]:
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    top = max(archs)
    return flags + [f"-gencode=arch=compute_{top},code=compute_{top}"]


def _ninja_escape(s: str) -> str:
    return s.replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def write_ninja(build_dir: Path, units, archs, info) -> Path:
    nvcc = find_nvcc()
    registry = build_dir / "registry.cu"
    generate.write_registry(registry, units, info)
    exports = build_dir / "exports.map"
    exports.write_text("{ global: fa_*; local: *; };\n")
    cflags = ["-std=c++17", "-O3", "-DNDEBUG", "--expt-relaxed-constexpr", "-lineinfo", "-Xcompiler", "-fPIC",
              f"-I{HERE}", f"-I{REPO / 'dispatch' / 'include'}",
              f"-I{find_cutlass_include()}"] + gencode_flags(archs)
    if os.environ.get("FLASH_ATTENTION_PTXAS_VERBOSE") == "1":
        cflags += ["-Xptxas", "-v"]
    sources = [HERE / "generated" / f"{generate.unit_name(*u)}.cu" for u in units]
    sources += [HERE / s for s in GLUE_SOURCES] + [registry]
    lines = [
        "ninja_required_version = 1.3",
        f"nvcc = {_ninja_escape(nvcc)}",
        "cflags = " + " ".join(_ninja_escape(f) for f in cflags),
        "rule nvcc",
        "  command = $nvcc $cflags -MD -MF $out.d -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = nvcc $in",
        # The C++ runtime is linked in too (its symbols stay hidden behind the version script), so
        # a library built on a newer system still loads on an older one: a build on the GPU image
        # needed GLIBCXX_3.4.32, which this project's build machine lacks.
        "rule link",
        f"  command = $nvcc -shared -cudart static -Xcompiler -static-libstdc++ -Xcompiler -static-libgcc "
        f"-Xlinker --version-script={_ninja_escape(str(exports))} -Xlinker --no-undefined $in -o $out",
        "  description = link $out",
    ]
    objects = []
    for src in sources:
        obj = f"obj/{src.stem}.o"
        objects.append(obj)
        lines.append(f"build {obj}: nvcc {_ninja_escape(str(src))}")
    lines.append(f"build libflash_attn_cuda.so: link {' '.join(objects)}")
    lines.append("default libflash_attn_cuda.so")
    path = build_dir / "build.ninja"
    path.write_text("\n".join(lines) + "\n")
    return path


def build(build_dir, out_lib, archs=None, head_dims=None, dtypes=None, directions=None, jobs=None) -> Path:
    """Compiles the selected units into out_lib; arguments left None come from the environment."""
    archs = sorted({int(a) for a in (archs or _env_list("FLASH_ATTENTION_CUDA_ARCHS", ("80", "90")))})
    head_dims = sorted({int(h) for h in (head_dims or _env_list("FLASH_ATTENTION_HEAD_DIMS", generate.HEAD_DIMS))})
    dtypes = list(dtypes or _env_list("FLASH_ATTENTION_DTYPES", generate.DTYPES))
    directions = list(directions or _env_list("FLASH_ATTENTION_DIRECTIONS", generate.DIRECTIONS))
    jobs = int(jobs or os.environ.get("MAX_JOBS") or os.cpu_count() or 1)
    for h in head_dims:
        if h not in generate.HEAD_DIMS:
            raise ValueError(f"head dim {h} is not a bucket; buckets: {generate.HEAD_DIMS}")
    for t in dtypes:
        if t not in generate.DTYPES:
            raise ValueError(f"dtype {t!r} unknown; choose from {list(generate.DTYPES)}")
    for d in directions:
        if d not in generate.DIRECTIONS:
            raise ValueError(f"direction {d!r} unknown; choose from {generate.DIRECTIONS}")
    if min(archs) < 80:
        raise ValueError("the SM80-class kernels need compute capability 8.0 or newer")

    generate.write_units()
    units = [(d, h, t) for d in generate.DIRECTIONS if d in directions for h in head_dims
             for t in generate.DTYPES if t in dtypes]
    if not units:
        raise ValueError("nothing to build: the head dims, dtypes and directions selected are empty")
    build_dir = Path(build_dir).resolve()
    (build_dir / "obj").mkdir(parents=True, exist_ok=True)
    info = generate.build_info(archs, max(archs), head_dims, dtypes, directions)
    write_ninja(build_dir, units, archs, info)
    ninja = shutil.which("ninja")
    if ninja is None:
        raise RuntimeError("ninja not found: pip install ninja")
    print(f"[flash_attn cuda] {len(units)} kernel units for sm_{archs}, {jobs} jobs, in {build_dir}", flush=True)
    start = time.time()
    subprocess.run([ninja, "-C", str(build_dir), "-j", str(jobs)], check=True)
    out_lib = Path(out_lib).resolve()
    out_lib.parent.mkdir(parents=True, exist_ok=True)
    built = build_dir / "libflash_attn_cuda.so"
    if out_lib != built:  # --out may name the build directory's own copy
        shutil.copy2(built, out_lib)
    print(f"[flash_attn cuda] built {out_lib} in {time.time() - start:.0f} s", flush=True)
    return out_lib


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "flash_attn" / "_lib" / "libflash_attn_cuda.so"))
    ap.add_argument("--build-dir", default=str(REPO / "build" / "cuda"))
    ap.add_argument("--jobs", type=int, default=None)
    args = ap.parse_args(argv)
    build(args.build_dir, args.out, jobs=args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
