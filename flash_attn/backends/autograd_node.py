"""The optional C++ module for planned dense, varlen and KV-cache calls (csrc_torch/autograd_node.cpp): a per-thread
cache of them, served from C++, and their autograd node.

A torch extension works only under the torch it was compiled against, so csrc_torch/build.py names
the module file after torch's version and the Python ABI, and this loads exactly that file: built
for another torch it is not loaded (never imported, so no undefined symbols), and flash_attn keeps
its Python autograd node. `python -m flash_attn info` says which and why.
FLASH_ATTENTION_AUTOGRAD_NODE=0 turns the C++ node off (read once, at first use).
"""
from __future__ import annotations

import atexit
import importlib.util
import os
import sys
from pathlib import Path
from typing import Optional

import torch

from . import native
from ..dispatch import flags as flagmod

MODULE = "flash_attn_autograd"
DISABLE = "FLASH_ATTENTION_AUTOGRAD_NODE"
PLAN_VERSION = 4  # make_plan's arguments (the module's plan_version); 4: the plan kind, KV-cache plans
_state: Optional[tuple] = None  # (module or None, why not)


def file_name(torch_version: str = torch.__version__, cache_tag: str = sys.implementation.cache_tag) -> str:
    """The module's file name for this torch and Python ABI; csrc_torch/build.py writes it under this name."""
    safe = "".join(c if c.isalnum() or c in ".+" else "_" for c in torch_version)
    return f"{MODULE}-torch{safe}-{cache_tag}.so"


def path() -> Path:
    """Where the module is looked for: FLASH_ATTENTION_LIB_DIR, then flash_attn/_lib."""
    base = os.environ.get("FLASH_ATTENTION_LIB_DIR")
    if base and (Path(base) / file_name()).exists():
        return Path(base) / file_name()
    return native._LIB_DIR / file_name()


def load():
    """(module, "") or (None, why it is not used); loaded once."""
    global _state
    if _state is None:
        _state = _load()
    return _state


def serving():
    """The module where it may serve this call, else None: not while Dynamo traces (loading it is a
    file lookup, which cannot be traced) or under a functorch transform (its tensors are wrappers)."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return None
    return load()[0]


def _load():
    switch = os.environ.get(DISABLE, "").strip().lower()
    if switch in ("0", "false", "no", "off"):
        return None, f"{DISABLE}={os.environ[DISABLE]}"
    if switch not in ("", "1", "true", "yes", "on"):
        raise ValueError(f"{DISABLE}={os.environ[DISABLE]!r}: use 1/true/yes/on (the default: the C++ path where "
                         f"it is built) or 0/false/no/off (the Python path)")
    p = path()
    if not p.exists():
        return None, (f"{p.name} not built for torch {torch.__version__}: "
                      f"python csrc_torch/build.py builds it (about a minute)")
    spec = importlib.util.spec_from_file_location(MODULE, p)
    try:
        module = importlib.util.module_from_spec(spec)  # an extension module is loaded here
        spec.loader.exec_module(module)
    except ImportError as e:
        return None, f"{p.name} does not load ({e}): rebuild it with python csrc_torch/build.py"
    if module.torch_version != torch.__version__:
        return None, f"{p.name} was built for torch {module.torch_version}, this is {torch.__version__}: rebuild it"
    if getattr(module, "plan_version", 1) != PLAN_VERSION:
        return None, f"{p.name} was built from an older flash_attn: rebuild it with python csrc_torch/build.py"
    module.configure(list(flagmod.ALL))  # a cached call's key includes these flags' raw values
    # The main thread's cached calls hold tensors: release them while torch can still free them.
    atexit.register(module.clear_calls)
    return module, ""


def describe() -> str:
    module, why = load()
    return f"C++ ({path().name})" if module is not None else f"Python ({why})"
