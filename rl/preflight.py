"""What the trainer needs on this machine that only fails once Ray is up, checked before Ray starts.

OpenRLHF 0.11.2 imports flash-attn 2's `flash_attn.bert_padding` at module top (openrlhf/models/
ring_attn_utils.py), in the Ray driver too. SGLang's environment brings flash-attn-4 instead, which installs
only `flash_attn/cute` into the same package, so `import flash_attn` works and the trainer still dies.
"""

from __future__ import annotations

import importlib
from importlib import metadata

# The newest 2.8.3 release; OpenRLHF 0.11.2 pins 2.8.3, and is installed --no-deps so the two do not clash.
FLASH_ATTN_VERSION = "2.8.3.post2"
# Not `pip install flash-attn`: the release compiles with C++17, which torch 2.14 refuses (rl/flash_attn_build.py).
FLASH_ATTN_BUILD = "python -m rl.flash_attn_build"
FLASH_ATTN_FIX = (
    f"{FLASH_ATTN_BUILD} (builds flash-attn {FLASH_ATTN_VERSION} with C++20 against the installed torch), "
    "or use the image's training stage: docker build --target rl"
)


def _installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def flash_attn_problem() -> str | None:
    """Why OpenRLHF's import of `flash_attn.bert_padding` would fail here, with the fix; None when it works."""
    try:
        importlib.import_module("flash_attn.bert_padding")
    except ImportError as e:  # not installed, or a build for another torch (undefined symbol)
        v2 = _installed("flash-attn")
        if v2 is not None:
            found = f"flash-attn {v2} is installed but flash_attn.bert_padding fails to import ({e})"
        elif _installed("flash-attn-4") is not None:
            found = "flash-attn 2 is not installed (the flash_attn here is SGLang's flash-attn-4, only flash_attn.cute)"
        else:
            found = "flash-attn 2 is not installed"
        return f"OpenRLHF needs flash-attn 2's flash_attn.bert_padding: {found}. Fix: {FLASH_ATTN_FIX}"
    return None
