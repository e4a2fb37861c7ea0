"""Builds libflash_attn_rocm.so from csrc_rocm/ with ninja. Pure Python; setup.py calls
build(build_dir, out_lib), every other choice coming from the environment.

    python csrc_rocm/build.py --build-dir build/rocm --out build/rocm/libflash_attn_rocm.so

Environment (each also a build() argument, which wins):
    FLASH_ATTENTION_ROCM_ARCHS   offload archs, ';' or ',' separated; else GPU_ARCHS (the ROCm
                                 fork's name for it); default "gfx90a;gfx942"
    FLASH_ATTENTION_HEAD_DIMS    head dims to serve, e.g. "64,128" (default: every bucket)
    FLASH_ATTENTION_DTYPES       "fp16,bf16"
    FLASH_ATTENTION_DIRECTIONS   "fwd,bwd"
    FLASH_ATTENTION_ROCM_SKIP_FEATURES  instance features not to compile, e.g. "rtz,deterministic"
                                 (names: generate.SKIPPABLE; unset or empty: generate.DEFAULT_SKIP;
                                 "none" compiles every instance); calls needing them run elsewhere
    MAX_JOBS                     parallel compiles (default: cores, at most one per 3 GiB of RAM)
    CK_DIR                       Composable Kernel checkout or include dir (else $ROCM_PATH/include)
    ROCM_PATH                    default /opt/rocm
    FLASH_ATTENTION_ROCM_CXX     compiler override (a clang++ that accepts -x hip)

No CUDA source is shared with csrc_cuda, so nothing goes through torch.utils.hipify.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _load_sibling(name: str):
    # Loaded by path under a private name: csrc_cuda has a generate.py too, and a plain
    # `import generate` would hand whichever came first to both builds in one process.
    spec = importlib.util.spec_from_file_location(f"_csrc_rocm_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


generate = _load_sibling("generate")

DEFAULT_ARCHS = "gfx90a;gfx942"
GLUE = ("glue/api.cpp", "glue/plan.cpp", "glue/registry.cpp", "glue/gqa_reduce.cpp")
# Debian's split ROCm packages (clang-19, libamdhip64-dev, rocm-device-libs): used to
# compile-check on machines without ROCm.
DEBIAN_DEVICE_LIBS = Path("/usr/lib/x86_64-linux-gnu/amdgcn/bitcode")

# ck_tile's own build settings for its FMHA kernels: exp2-based softmax, denormals flushed.
CK_FLAGS = (
    "-DCK_TILE_FMHA_FWD_FAST_EXP2=1",
    "-fgpu-flush-denormals-to-zero",
    "-fno-offload-uniform-block",
    "-Wno-undefined-func-template",
    "-Wno-float-equal",
)
# The LLVM options ck_tile's CMake adds for ROCm's own clang (inline everything early, no device
# calls, no post-RA rescheduling of its hand-ordered code). Only for ROCm's clang: measured with
# Debian's upstream clang-19, early-inline-all kept one forward instance in the middle end for
# over 18 CPU minutes without finishing, against 66 s without these options (same code object
# quality: no calls, no scratch, v_mfma present).
AMDCLANG_FLAGS = (
    "-mllvm", "-enable-post-misched=0",
    "-mllvm", "-amdgpu-early-inline-all=true",
    "-mllvm", "-amdgpu-function-calls=false",
)


class BuildError(RuntimeError):
    pass


# NamedTuples, not dataclasses: setup.py execs this file without registering it as a module,
# and a dataclass looks its module up in sys.modules while being defined.
class Toolchain(NamedTuple):
    cxx: str
    hip_flags: list[str]   # how this clang finds HIP headers and device libraries, and tuning
    link_flags: list[str]  # how the host link finds libamdhip64
    description: str


def _split(value: Optional[str]) -> Optional[list[str]]:
    if value is None or not value.strip():
        return None
    return [v.strip() for v in value.replace(";", ",").split(",") if v.strip()]


def find_ck_include(ck_dir: Optional[str] = None) -> Path:
    """The directory holding ck_tile/ (CK_DIR may be a checkout or its include/ dir)."""
    rocm = Path(os.environ.get("ROCM_PATH", "/opt/rocm"))
    given = ck_dir or os.environ.get("CK_DIR")
    candidates = []
    if given:
        candidates += [Path(given) / "include", Path(given)]
    candidates.append(rocm / "include")
    for c in candidates:
        if (c / "ck_tile" / "ops" / "fmha.hpp").is_file():
            return c
    raise BuildError(
        "Composable Kernel's ck_tile headers were not found: looked for ck_tile/ops/fmha.hpp "
        f"under CK_DIR ({given or 'unset'}; <CK_DIR>/include or <CK_DIR>) and under "
        f"$ROCM_PATH/include (ROCM_PATH={rocm}). Set CK_DIR to a composable_kernel checkout, or "
        "ROCM_PATH to a ROCm install with Composable Kernel's headers (composablekernel-dev).")


def find_toolchain() -> Toolchain:
    rocm = Path(os.environ.get("ROCM_PATH", "/opt/rocm"))
    override = os.environ.get("FLASH_ATTENTION_ROCM_CXX")
    amdclang = rocm / "llvm" / "bin" / "clang++"
    if (rocm / "include" / "hip" / "hip_runtime.h").is_file() and (override or amdclang.exists()):
        return Toolchain(override or str(amdclang), [f"--rocm-path={rocm}", *AMDCLANG_FLAGS],
                         [f"-L{rocm / 'lib'}", f"-Wl,-rpath,{rocm / 'lib'}", "-lamdhip64"],
                         f"ROCm at {rocm}")
    debian_cxx = override or shutil.which("clang++-19")
    if debian_cxx and Path("/usr/include/hip/hip_runtime.h").is_file() and DEBIAN_DEVICE_LIBS.is_dir():
        return Toolchain(debian_cxx,
                         ["--rocm-path=/usr", f"--rocm-device-lib-path={DEBIAN_DEVICE_LIBS}"],
                         ["-lamdhip64"], "Debian clang-19 + libamdhip64-dev + rocm-device-libs")
    raise BuildError(
        f"no HIP compiler: neither {amdclang} (ROCm, set ROCM_PATH) nor Debian's clang++-19 with "
        "libamdhip64-dev and rocm-device-libs was found (FLASH_ATTENTION_ROCM_CXX overrides)")


def find_ninja() -> str:
    exe = shutil.which("ninja")
    if exe:
        return exe
    try:
        import ninja  # the PyPI wheel
        return str(Path(ninja.BIN_DIR) / "ninja")
    except ImportError:
        raise BuildError("ninja not found: pip install ninja") from None


def default_jobs() -> int:
    cores = os.cpu_count() or 1
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return cores
    return max(1, min(cores, int(mem_gib // 3)))  # a ck_tile backward TU peaks near 3 GiB


def _ninja_escape(path: str) -> str:
    return path.replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def write_ninja(build_dir: Path, out_lib: Path, units: Sequence[tuple[Path, Path]],
                toolchain: Toolchain, archs: Sequence[str], ck_include: Path) -> Path:
    """Writes build_dir/build.ninja compiling each (source, object) of units into out_lib."""
    cflags = ["-x", "hip", "-std=c++17", "-O3", "-fPIC", "-fvisibility=hidden",
              "-fno-gpu-rdc", *toolchain.hip_flags, *[f"--offload-arch={a}" for a in archs],
              *CK_FLAGS, f"-I{HERE}", f"-I{REPO / 'dispatch' / 'include'}", f"-I{ck_include}",
              f"-DFA_ROCM_ARCHS=\"{';'.join(archs)}\""]
    lines = [
        "# generated by csrc_rocm/build.py, do not edit",
        "ninja_required_version = 1.3",
        f"cxx = {toolchain.cxx}",
        f"cflags = {' '.join(shlex.quote(f) for f in cflags)}",
        f"ldflags = {' '.join(shlex.quote(f) for f in toolchain.link_flags)}",
        "rule hip",
        "  command = $cxx $cflags -MD -MF $out.d -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = HIP $in",
        "rule link",
        "  command = $cxx -shared -fvisibility=hidden $in -o $out $ldflags",
        "  description = LINK $out",
    ]
    for src, obj in units:
        lines.append(f"build {_ninja_escape(str(obj))}: hip {_ninja_escape(str(src))}")
    lines.append(f"build {_ninja_escape(str(out_lib))}: link "
                 + " ".join(_ninja_escape(str(obj)) for _, obj in units))
    lines.append(f"default {_ninja_escape(str(out_lib))}")
    path = build_dir / "build.ninja"
    text = "\n".join(lines) + "\n"
    if not path.exists() or path.read_text() != text:  # keep ninja's timestamps otherwise
        path.write_text(text)
    return path


class Options(NamedTuple):
    """Every choice of one build, resolved from arguments and the environment."""
    archs: list[str]
    head_dims: Optional[list[int]]  # None: every bucket
    dtypes: Optional[list[str]]
    directions: Optional[list[str]]
    skip_features: list[str]
    jobs: int


def resolve(archs: Optional[Iterable[str]] = None, head_dims: Optional[Iterable[int]] = None,
            dtypes: Optional[Iterable[str]] = None, directions: Optional[Iterable[str]] = None,
            jobs: Optional[int] = None, skip_features: Optional[Iterable[str]] = None,
            env=os.environ) -> Options:
    """Arguments left None come from the environment variables in the module docstring."""
    if not archs:
        archs = (_split(env.get("FLASH_ATTENTION_ROCM_ARCHS")) or _split(env.get("GPU_ARCHS"))
                 or _split(DEFAULT_ARCHS))
    if head_dims is None and _split(env.get("FLASH_ATTENTION_HEAD_DIMS")):
        head_dims = [int(d) for d in _split(env["FLASH_ATTENTION_HEAD_DIMS"])]
    if skip_features is None:  # unset or empty: the default; "none": compile everything
        skip_features = (_split(env.get("FLASH_ATTENTION_ROCM_SKIP_FEATURES"))
                         or generate.DEFAULT_SKIP)
    skip_features = [f for f in skip_features if f != "none"]
    options = Options(
        archs=list(archs), head_dims=list(head_dims) if head_dims is not None else None,
        dtypes=list(dtypes) if dtypes else _split(env.get("FLASH_ATTENTION_DTYPES")),
        directions=list(directions) if directions else _split(env.get("FLASH_ATTENTION_DIRECTIONS")),
        skip_features=skip_features,
        jobs=jobs or int(env.get("MAX_JOBS") or 0) or default_jobs())
    generate.select(options.head_dims, options.dtypes, options.directions,
                    options.skip_features)  # raises ValueError on unknown names
    return options


def build(build_dir, out_lib, archs: Optional[Iterable[str]] = None,
          head_dims: Optional[Iterable[int]] = None, dtypes: Optional[Iterable[str]] = None,
          directions: Optional[Iterable[str]] = None, jobs: Optional[int] = None,
          ck_dir: Optional[str] = None, skip_features: Optional[Iterable[str]] = None,
          names: Optional[Iterable[str]] = None) -> Path:
    """Compiles the selected instances plus the glue into out_lib; returns its path. names, if
    given, picks instances by name instead of head dims / dtypes / directions / features."""
    opts = resolve(archs, head_dims, dtypes, directions, jobs, skip_features)
    ck_include = find_ck_include(ck_dir)
    toolchain = find_toolchain()
    if not generate.is_current():
        generate.write()
    instances = (generate.by_names(names) if names else
                 generate.select(opts.head_dims, opts.dtypes, opts.directions, opts.skip_features))
    if not instances:
        raise BuildError("the requested head dims / dtypes / directions select no instance")

    build_dir = Path(build_dir).resolve()
    out_lib = Path(out_lib).resolve()
    out_lib.parent.mkdir(parents=True, exist_ok=True)
    # Objects: obj/glue/<file>.o and obj/instances/<instance>.o (tools/check_rocm_build.sh
    # disassembles the latter).
    units = [(HERE / g, build_dir / "obj" / Path(g).with_suffix(".o")) for g in GLUE]
    units += [(src, build_dir / "obj" / "instances" / f"{src.stem}.o")
              for src in generate.write_sources(instances, build_dir / "instances")]
    write_ninja(build_dir, out_lib, units, toolchain, opts.archs, ck_include)
    chosen = "by name" if names else f"skipped features: {', '.join(opts.skip_features) or 'none'}"
    print(f"csrc_rocm: {len(instances)} kernel instances for {', '.join(opts.archs)} ({chosen}) with "
          f"{toolchain.description}; ck_tile from {ck_include}; {opts.jobs} jobs", flush=True)
    proc = subprocess.run([find_ninja(), "-C", str(build_dir), f"-j{opts.jobs}"])
    if proc.returncode != 0:
        raise BuildError(f"ninja failed (exit {proc.returncode}) in {build_dir}")
    return out_lib


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", default=str(REPO / "build" / "rocm"))
    ap.add_argument("--out", default=None, help="default: <build-dir>/libflash_attn_rocm.so")
    ap.add_argument("--archs", help="e.g. gfx90a;gfx942")
    ap.add_argument("--head-dims", help="e.g. 64,128")
    ap.add_argument("--dtypes", help="fp16,bf16")
    ap.add_argument("--directions", help="fwd,bwd")
    ap.add_argument("--skip-features", help=f"any of {','.join(generate.SKIPPABLE)}, or none "
                    f"(default: {','.join(generate.DEFAULT_SKIP)})")
    ap.add_argument("--instances", help="instance names, e.g. fwd_d128_bf16 (overrides the above)")
    ap.add_argument("-j", "--jobs", type=int)
    ap.add_argument("--ck-dir")
    args = ap.parse_args(argv)
    out = args.out or str(Path(args.build_dir) / "libflash_attn_rocm.so")
    try:
        lib = build(args.build_dir, out, archs=_split(args.archs),
                    head_dims=[int(d) for d in _split(args.head_dims) or []] or None,
                    dtypes=_split(args.dtypes), directions=_split(args.directions),
                    jobs=args.jobs, ck_dir=args.ck_dir,
                    skip_features=_split(args.skip_features),
                    names=_split(args.instances))
    except (BuildError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"built {lib}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
