"""Build and install flash_attn.

Native backends are plain shared libraries (no torch headers, see ../shared/DESIGN.md) built by
csrc_cuda/build.py or csrc_rocm/build.py and placed in flash_attn/_lib/. Switches:
  FLASH_ATTENTION_BUILD_TARGET=auto|cuda|rocm|none   auto: ROCm if hipcc/ROCM_PATH is found,
                                                     else CUDA if nvcc is found, else none
  FLASH_ATTENTION_SKIP_CUDA_BUILD=1, FLASH_ATTENTION_SKIP_ROCM_BUILD=1   skip that backend
  MAX_JOBS                                            parallel compile jobs (default: cores)
With a native backend it also builds the C++ autograd node (csrc_torch/build.py) against the torch
the build sees (--no-build-isolation); python csrc_torch/build.py builds it after installing.
Narrowing the kernel set (archs, head dims, dtypes, directions) is documented in each build.py.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def build_target() -> str:
    target = os.environ.get("FLASH_ATTENTION_BUILD_TARGET", "auto").strip().lower()
    if target not in ("auto", "cuda", "rocm", "none"):
        sys.exit(f"FLASH_ATTENTION_BUILD_TARGET={target!r}: use auto, cuda, rocm or none")
    if target == "auto":
        # A compiler alone is not enough: CPU machines often have nvcc or hipcc installed, and
        # building there would take long for kernels nothing can run. Auto builds for a GPU
        # driver it finds; docker builds without a GPU set the target explicitly.
        rocm = (shutil.which("hipcc") or os.path.isdir(os.environ.get("ROCM_PATH", "/opt/rocm"))) \
            and os.path.exists("/dev/kfd")
        cuda = (shutil.which("nvcc") or os.path.exists(os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"))) \
            and (os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi"))
        target = "rocm" if rocm else "cuda" if cuda else "none"
        if target == "none":
            print("flash_attn: FLASH_ATTENTION_BUILD_TARGET=auto found no GPU driver with its compiler "
                  "(nvcc + NVIDIA driver, or hipcc + /dev/kfd); set it to cuda or rocm to build anyway")
    if target == "cuda" and _truthy("FLASH_ATTENTION_SKIP_CUDA_BUILD"):
        return "none"
    if target == "rocm" and _truthy("FLASH_ATTENTION_SKIP_ROCM_BUILD"):
        return "none"
    return target


def _load_build_module(backend: str):
    path = os.path.join(ROOT, f"csrc_{backend}", "build.py")
    spec = importlib.util.spec_from_file_location(f"_flash_attn_build_{backend}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildWithNative(build_py):
    def run(self):
        super().run()
        target = build_target()
        if target == "none":
            print("flash_attn: no native backend built (reference backend only)")
            return
        lib_root = ROOT if getattr(self, "editable_mode", False) else self.build_lib
        out_lib = os.path.join(lib_root, "flash_attn", "_lib", f"libflash_attn_{target}.so")
        module = _load_build_module(target)
        module.build(build_dir=os.path.join(ROOT, "build", f"native_{target}"), out_lib=out_lib)
        self._build_autograd_node(os.path.dirname(out_lib))

    @staticmethod
    def _build_autograd_node(out_dir: str) -> None:
        """The C++ autograd node (csrc_torch/) must match the torch it runs with, so it is built
        only where the build sees that torch (--no-build-isolation); without it every call still
        works, with more host time per call."""
        try:
            import torch  # noqa: F401
        except ImportError:
            print("flash_attn: torch is not visible to this build (build isolation): the C++ autograd "
                  "node is not built; run python csrc_torch/build.py after installing")
            return
        try:
            _load_build_module("torch").build(out_dir=out_dir)
        except Exception as e:  # optional: a failure leaves the Python node, and says so
            print(f"flash_attn: the C++ autograd node was not built ({e}); calls use the Python node")


# dispatch/ is installed as flash_attn.dispatch (the design card keeps it at the top level);
# flash_attn/dispatch is a symlink to it so a source checkout imports the same way.
setup(
    packages=["flash_attn", "flash_attn.backends", "flash_attn.backends.reference",
              "flash_attn.layers", "flash_attn.dispatch"],
    package_dir={"flash_attn": "flash_attn", "flash_attn.dispatch": "dispatch"},
    package_data={"flash_attn.dispatch": ["include/*.h"]},
    cmdclass={"build_py": BuildWithNative},
)
