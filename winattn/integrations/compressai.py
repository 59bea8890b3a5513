# SPDX-License-Identifier: Apache-2.0
"""CompressAI integration: patched architectures for CompressAI's tools, and rebuilding a patched
model from its state dict alone.

* `from_state_dict(arch, state_dict)` rebuilds a patched model: it reads the patch options
  (insert or replace, window sizes, heads) from the state dict and the architecture's sizes
  (`N`, `M`) as CompressAI does, then loads the weights strictly.
* `register()` adds every architecture as `<arch>-winattn` (`<arch>-winattn-vbr` for the
  variable-rate ones, so that CompressAI's `-vbr` handling still applies) to the dictionaries
  CompressAI's tools read: `compressai.zoo.image_models` (`eval_model -a`, `examples/train.py
  -m`), `compressai.zoo.image.model_architectures` (`eval_model checkpoint`), the `models` dict
  of `compressai.utils.update_model`, and CompressAI's model registry.
* `python -m winattn.integrations.compressai TOOL ARGS...` registers, then runs a CompressAI
  tool (`eval_model`, `update_model`, or any module name) with `ARGS`, as
  `python -m compressai.utils.TOOL ARGS...` would, e.g.
  `python -m winattn.integrations.compressai eval_model checkpoint images/ -a
  bmshj2018-hyperprior-winattn -p model.pth.tar`.

This module imports CompressAI (through `import_compressai`, which keeps a torch deprecation
warning about CompressAI's internals quiet); `import winattn` does not import it.

Example:
    >>> from compressai.models import ScaleHyperprior
    >>> from winattn import patch_model
    >>> from winattn.integrations.compressai import from_state_dict
    >>> model = patch_model(ScaleHyperprior(N=32, M=48))
    >>> rebuilt = from_state_dict("bmshj2018-hyperprior", model.state_dict())
    >>> type(rebuilt).__name__
    'ScaleHyperpriorWinAttn'
"""

from __future__ import annotations

import argparse
import functools
import math
import runpy
import sys
import warnings
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from torch import Tensor, nn

from winattn.patch import LATENT_NAME, LATENT_WINDOW, STAGE_NAME, STAGE_WINDOW, patch_model

__all__ = [
    "SUFFIX",
    "base_name",
    "from_state_dict",
    "import_compressai",
    "main",
    "patched_class",
    "patched_name",
    "register",
]

SUFFIX = "winattn"
_VBR = "-vbr"


def import_compressai() -> ModuleType:
    """Imports CompressAI, without the FutureWarning that torch >= 2.10 prints for the
    `torch.jit.script` decorators CompressAI 1.2.8 applies at import time (it concerns
    CompressAI's code, not the caller's). Later imports of CompressAI modules are silent anyway.

    Returns:
        the `compressai` package.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
        import compressai
    return compressai


def patched_name(arch: str) -> str:
    """`"bmshj2018-hyperprior"` -> `"bmshj2018-hyperprior-winattn"`; `"mbt2018-vbr"` -> `"mbt2018-winattn-vbr"`."""
    if arch.endswith(_VBR):
        return f"{arch[: -len(_VBR)]}-{SUFFIX}{_VBR}"
    return f"{arch}-{SUFFIX}"


def base_name(name: str) -> str:
    """Inverse of `patched_name`; names without the suffix are returned unchanged."""
    return name.replace(f"-{SUFFIX}", "")


def _base_class(arch: str | type) -> type:
    if isinstance(arch, type):
        return getattr(arch, "winattn_base", arch)
    import_compressai()
    from compressai.registry import MODELS

    name = base_name(arch)
    cls = MODELS.get(name)
    if not isinstance(cls, type):
        known = sorted(k for k, v in MODELS.items() if isinstance(v, type) and SUFFIX not in k)
        raise ValueError(f"unknown architecture arch={arch!r}; use one of {known} (or a model class).")
    return getattr(cls, "winattn_base", cls)


@functools.cache
def _patched_class_cached(base: type, options: tuple[tuple[str, Any], ...]) -> type:
    opts = dict(options)

    def __init__(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        base.__init__(self, *args, **kwargs)
        patch_model(self, **opts)

    def _from_state_dict(cls: type, state_dict: Mapping[str, Tensor], *args: Any, **kwargs: Any) -> nn.Module:
        return from_state_dict(cls.winattn_base, state_dict)

    name = f"{base.__name__}WinAttn"
    return type(
        name,
        (base,),
        {
            "__init__": __init__,
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"`{base.__name__}` patched by `winattn.patch_model({opts})`.",
            "from_state_dict": classmethod(_from_state_dict),
            "winattn_base": base,
            "winattn_options": dict(opts),
        },
    )


def patched_class(arch: str | type, **patch_kwargs: Any) -> type:
    """A subclass of the architecture whose constructor calls `patch_model(self, **patch_kwargs)`.

    Its `from_state_dict` rebuilds from a patched state dict (see `from_state_dict`).

    Args:
        arch: a CompressAI architecture name (`"bmshj2018-hyperprior"`) or class.
        **patch_kwargs: arguments of `patch_model`.

    Returns:
        the class, e.g. `ScaleHyperpriorWinAttn`; the same object for the same arguments.
    """
    return _patched_class_cached(_base_class(arch), tuple(sorted(patch_kwargs.items())))


def _window_of_table(table: Tensor) -> int:
    side = (math.isqrt(table.shape[0]) + 1) // 2
    if (2 * side - 1) ** 2 != table.shape[0]:
        raise ValueError(
            f"a relative_position_bias_table with {table.shape[0]} rows is not that of a square "
            f"window; from_state_dict rebuilds square windows only."
        )
    return side


def infer_patch_options(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """Reads the `patch_model` options from a patched CompressAI state dict.

    Returns:
        `mode`, `num_heads` and `window_size` (None when the windows are the paper's).

    Raises:
        ValueError: the state dict holds no window attention, or options that differ per block.
    """
    tables = {k: v for k, v in state_dict.items() if k.endswith("relative_position_bias_table")}
    if not tables:
        raise ValueError(
            "the state dict holds no window attention (no relative_position_bias_table keys): "
            "it is not from a patched model; use the architecture's own from_state_dict."
        )
    heads = {v.shape[1] for v in tables.values()}
    if len(heads) != 1:
        raise ValueError(f"the blocks of this state dict have different head counts {sorted(heads)}.")
    inserted = [k for k in tables if f".{STAGE_NAME}." in k or f".{LATENT_NAME}." in k]
    windows = {k: _window_of_table(v) for k, v in tables.items()}
    if inserted:
        paper = all(
            w == (LATENT_WINDOW if f".{LATENT_NAME}." in k else STAGE_WINDOW)
            for k, w in windows.items()
        )
    else:
        paper = set(windows.values()) == {LATENT_WINDOW, STAGE_WINDOW}
    sizes = set(windows.values())
    if not paper and len(sizes) != 1:
        raise ValueError(f"the blocks of this state dict have windows {windows}; cannot rebuild.")
    return {
        "mode": "insert" if inserted else "replace",
        "num_heads": heads.pop(),
        "window_size": None if paper else sizes.pop(),
    }


def _constructor_args(base: type, state_dict: Mapping[str, Tensor]) -> dict[str, Any] | None:
    """Sizes for architectures whose own `from_state_dict` misreads them (None: use theirs)."""
    import_compressai()
    from compressai.models.sensetime import Elic2022Chandelier, Elic2022Official

    if issubclass(base, (Elic2022Official, Elic2022Chandelier)):
        # upstream builds cls(N) and so always M=320; M is the output of g_a.13 = conv(N, M)
        return {"N": state_dict["g_a.0.weight"].size(0), "M": state_dict["g_a.13.weight"].size(0)}
    return None


def from_state_dict(arch: str | type, state_dict: Mapping[str, Tensor]) -> nn.Module:
    """Rebuilds a patched CompressAI model from its state dict alone.

    Args:
        arch: the architecture, as a name (`"bmshj2018-hyperprior"`, with or without the
            `-winattn` suffix) or a class.
        state_dict: the state dict of a model patched by `patch_model`, possibly after
            `update()` (`module.` prefixes are stripped, as CompressAI does).

    Returns:
        the patched model with the weights loaded strictly, in training mode.

    Raises:
        ValueError: an unknown architecture, or a state dict without winattn blocks.
    """
    import_compressai()
    from compressai.zoo import load_state_dict

    base = _base_class(arch)
    state = load_state_dict(dict(state_dict))
    cls = patched_class(base, **infer_patch_options(state))
    kwargs = _constructor_args(base, state)
    if kwargs is not None:
        net = cls(**kwargs)
        net.load_state_dict(state)
        return net
    if "vr_entbttlnck" in base.from_state_dict.__func__.__code__.co_varnames:
        vbr = any(k.startswith("gayn2zqstep.") for k in state)
        return base.from_state_dict.__func__(cls, state, vr_entbttlnck=vbr)
    return base.from_state_dict.__func__(cls, state)


def _zoo_entry(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    @functools.wraps(fn)
    def entry(*args: Any, **kwargs: Any) -> nn.Module:
        return patch_model(fn(*args, **kwargs))

    entry.__doc__ = f"`compressai.zoo.{fn.__name__}`, patched by `winattn.patch_model`."
    return entry


def register() -> list[str]:
    """Registers `<arch>-winattn` for every CompressAI image architecture with CompressAI's tools.

    Idempotent. After it, `compressai.zoo.image_models["bmshj2018-hyperprior-winattn"](quality)`
    builds a patched zoo model (a pretrained one too, with `pretrained=True`, which downloads
    CompressAI's weights as the zoo does), and `eval_model` / `update_model` accept the names.

    Returns:
        the registered names.
    """
    import_compressai()
    import compressai.zoo as zoo
    import compressai.zoo.image as zoo_image
    import compressai.zoo.image_vbr as zoo_image_vbr
    from compressai.registry import MODELS
    from compressai.utils.update_model import __main__ as update_model

    names = []
    for table in (zoo_image.model_architectures, zoo_image_vbr.model_architectures):
        for arch, cls in list(table.items()):
            if SUFFIX in arch:
                continue
            # zoo.image spells this one with an underscore; the zoo and registry use a dash
            arch = arch.replace("bmshj2018_factorized_relu", "bmshj2018-factorized-relu")
            name = patched_name(arch)
            patched = patched_class(cls)
            zoo_image.model_architectures[name] = patched
            update_model.models[name] = patched
            MODELS[name] = patched
            if arch in zoo.image_models:
                zoo.image_models[name] = _zoo_entry(zoo.image_models[arch])
                zoo.models[name] = zoo.image_models[name]
            names.append(name)
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m winattn.integrations.compressai",
        description="Registers every CompressAI image architecture patched by winattn as\n"
        "<arch>-winattn, then runs a CompressAI tool with the remaining arguments, as\n"
        "`python -m compressai.utils.TOOL ARGS...` would. `winattn models` lists the names.",
        epilog="examples:\n"
        "  python -m winattn.integrations.compressai update_model ckpt.pth.tar "
        "-a bmshj2018-hyperprior-winattn -d exported\n"
        "  python -m winattn.integrations.compressai eval_model checkpoint images/ "
        "-a bmshj2018-hyperprior-winattn -p exported/ckpt-*.pth.tar\n"
        "  python -m winattn.integrations.compressai eval_model --help   # the tool's options",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "tool",
        help="eval_model or update_model (short for compressai.utils.TOOL), or a full module "
        "name, e.g. examples.train run from a CompressAI checkout",
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the tool's own arguments")
    return parser


def _hint_for(error: BaseException) -> str | None:
    """A hint when CompressAI failed on a patched checkpoint loaded as the unpatched model."""
    text = str(error)
    if f"{SUFFIX}_" in text and "Unexpected key" in text:
        return (
            "winattn: the checkpoint holds winattn blocks, but the architecture named is the "
            "unpatched one; name the patched one, e.g. -a bmshj2018-hyperprior-winattn "
            "(`winattn models` lists them)."
        )
    return None


def main(argv: list[str] | None = None) -> None:
    """`python -m winattn.integrations.compressai TOOL ARGS...`: register, then run the tool."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    tool = args.tool if "." in args.tool else f"compressai.utils.{args.tool}"
    register()
    sys.argv = [tool, *args.args]
    # `register` imported update_model's `__main__` to add the names to its table: run that
    # module's `main`, as its `if __name__ == "__main__"` block does, rather than a second copy.
    imported = sys.modules.get(f"{tool}.__main__")
    try:
        if imported is not None and callable(getattr(imported, "main", None)):
            imported.main(sys.argv[1:])
        else:
            runpy.run_module(tool, run_name="__main__", alter_sys=True)
    except RuntimeError as error:
        hint = _hint_for(error)
        if hint is not None:
            print(hint, file=sys.stderr)
        raise


if __name__ == "__main__":
    from winattn.integrations.compressai import main as _main

    _main()
