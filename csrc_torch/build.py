"""Builds flash_attn's C++ autograd node (autograd_node.cpp) against the torch it imports.

    python csrc_torch/build.py            # -> <installed flash_attn>/_lib/<autograd_node.file_name()>
    python csrc_torch/build.py --check    # compile only, no output

A torch extension runs only under the torch it was compiled against, so the file is named after
torch's version and the Python ABI (autograd_node.file_name); flash_attn loads it only under that pair and
otherwise uses its Python autograd node (same results, more host time per call). It uses only
c10's device-generic interface, so it builds against CPU torch too (CI does; the node itself runs
on GPU tensors). One translation unit: about a minute of g++ (torch's headers dominate).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SOURCE = HERE / "autograd_node.cpp"


def _flash_attn():
    """The installed flash_attn (whose _lib the module goes into), else this checkout's."""
    try:
        import flash_attn
    except ImportError:
        sys.path.insert(0, str(REPO))
        import flash_attn
    return flash_attn


def command(out: Path, check: bool) -> list:
    import torch
    from torch.utils import cpp_extension

    from flash_attn.backends.autograd_node import MODULE

    c = torch._C
    defines = [f"-DTORCH_EXTENSION_NAME={MODULE}", f'-DFA_TORCH_VERSION="{torch.__version__}"',
               f"-D_GLIBCXX_USE_CXX11_ABI={int(c._GLIBCXX_USE_CXX11_ABI)}"]
    # pybind11 keys its internals by these where torch defines them (older torch)
    for name in ("COMPILER_TYPE", "STDLIB", "BUILD_ABI"):
        value = getattr(c, f"_PYBIND11_{name}", None)
        if value is not None:
            defines.append(f'-DPYBIND11_{name}="{value}"')
    includes = [f"-I{p}" for p in (*cpp_extension.include_paths(), sysconfig.get_paths()["include"])]
    cmd = [os.environ.get("CXX", "g++"), "-std=c++20", "-O2", "-fPIC", "-fvisibility=hidden", *defines,
           *includes, str(SOURCE)]
    if check:
        return cmd + ["-fsyntax-only"]
    libs = [f"-L{p}" for p in cpp_extension.library_paths()]
    return cmd + ["-shared", "-o", str(out), *libs, "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python"]


def build(out_dir=None, check: bool = False) -> Path:
    import torch

    package = _flash_attn()
    from flash_attn.backends.autograd_node import file_name

    out_dir = Path(out_dir or Path(package.__file__).parent / "_lib")
    out = out_dir / file_name(torch.__version__)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    subprocess.run(command(out, check), check=True)
    what = "checked" if check else f"built {out}"
    print(f"[flash_attn autograd node] {what} in {time.time() - start:.0f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", default=None, help="default: the installed flash_attn's _lib")
    ap.add_argument("--check", action="store_true", help="compile only, no output")
    args = ap.parse_args()
    build(args.out_dir, args.check)


if __name__ == "__main__":
    main()
