# SPDX-License-Identifier: Apache-2.0
"""Loading checkpoints of the official STF code (github.com/Googolxx/STF) into
`examples.stf.models`.

Official checkpoint files are dicts holding the weights under `"state_dict"` (next to
`"epoch"`, optimizer states, ...), sometimes with a `module.` prefix from DataParallel, with
the entropy bottleneck's parameters under the names of CompressAI < 1.2
(`_matrix0`, `_bias0`, `_factor0`, ...) and with persistent `relative_position_index`
buffers. `convert_official_state_dict` maps all of that onto our layout; `load_official`
builds the model and loads it strictly.

Example:
    >>> model = WACNN(N=32, M=40, num_slices=5)
    >>> ckpt = {"epoch": 3, "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}
    >>> load_official(ckpt, arch="cnn", N=32, M=40, num_slices=5).N
    32
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from . import zoo
from .models import WACNN, SymmetricalTransFormer

__all__ = [
    "ARCHITECTURES",
    "check_state_dict",
    "convert_official_state_dict",
    "infer_arch",
    "load_official",
]

#: Architecture names of the official code (`-m stf` / `-m cnn`) and our classes.
ARCHITECTURES = {"stf": SymmetricalTransFormer, "cnn": WACNN}

# CompressAI < 1.2 kept the entropy bottleneck's parameters as attributes `_matrix0`, ...;
# 1.2 moved them into ParameterLists `matrices.0`, ...
_OLD_BOTTLENECK_NAME = re.compile(r"^(?P<prefix>(?:.*\.)?entropy_bottleneck)\._(?P<kind>matrix|bias|factor)(?P<index>\d+)$")
_NEW_KIND = {"matrix": "matrices", "bias": "biases", "factor": "factors"}
_MAX_LISTED = 10


def _unwrap(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    for key in ("state_dict", "model", "net"):
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
            return dict(inner)
    if checkpoint and all(isinstance(v, Tensor) for v in checkpoint.values()):
        return dict(checkpoint)
    raise ValueError(
        "the checkpoint holds no state dict: expected a mapping of tensors, or one under "
        f"'state_dict', 'model' or 'net'; got top-level keys {sorted(checkpoint)[:_MAX_LISTED]}."
    )


def convert_official_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """Maps an official checkpoint (or its state dict) onto the layout of our models.

    * takes the weights from under `"state_dict"` (or `"model"`/`"net"`) when nested;
    * strips a `module.` prefix (DataParallel / DistributedDataParallel);
    * renames the old EntropyBottleneck names `_matrixN`/`_biasN`/`_factorN` to
      `matrices.N`/`biases.N`/`factors.N`.

    Persistent `relative_position_index` buffers are kept: our attention modules check them
    against the index they compute when the state dict is loaded.

    Args:
        checkpoint: what `torch.load` returned for an official checkpoint file.

    Returns:
        A new state dict; the tensors are shared, not copied.
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(
            f"checkpoint must be a dict (what torch.load returns), got {type(checkpoint).__name__}."
        )
    state = _unwrap(checkpoint)
    odd_keys = [repr(k) for k in state if not isinstance(k, str)]
    if odd_keys:
        raise ValueError(
            f"the checkpoint's state dict has keys that are not parameter names: "
            f"{_listed(odd_keys)}; a state dict maps names such as 'g_a.0.weight' to tensors."
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        match = _OLD_BOTTLENECK_NAME.match(key)
        if match:
            key = f"{match['prefix']}.{_NEW_KIND[match['kind']]}.{match['index']}"
        converted[key] = value
    return converted


def infer_arch(state_dict: Mapping[str, Tensor]) -> str:
    """`"stf"` or `"cnn"`, from the names of a converted state dict."""
    if "patch_embed.proj.weight" in state_dict:
        return "stf"
    if "g_a.0.weight" in state_dict:
        return "cnn"
    raise ValueError(
        "cannot tell the architecture: the state dict has neither 'patch_embed.proj.weight' "
        f"(stf) nor 'g_a.0.weight' (cnn); pass arch='stf' or arch='cnn'. First keys: "
        f"{list(state_dict)[:_MAX_LISTED]}."
    )


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def check_state_dict(
    model: torch.nn.Module,
    state_dict: Mapping[str, Tensor],
    arch: str,
    float_dtype: torch.dtype | None = None,
) -> None:
    """Checks that `state_dict` fits `model` before anything is loaded into it.

    Args:
        model: the model as built.
        state_dict: a converted state dict (see `convert_official_state_dict`).
        arch: the architecture name, for the message.
        float_dtype: the dtype the floating-point entries may have besides the model's own
            (a weights export in float16); None allows the model's dtypes only.

    Raises:
        ValueError: listing the missing, unexpected and mis-shaped keys, the entries of
            another dtype, and the entries holding NaN or infinity.
    """
    expected = model.state_dict()
    optional = {
        f"{name}.relative_position_index"
        for name, module in model.named_modules()
        if hasattr(module, "relative_position_bias_table")
    }
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected and k not in optional]
    # the entropy coder's tables are resized on load, so only compare the other shapes
    resized = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and not k.endswith(resized) and state_dict[k].shape != v.shape
    ]
    wrong_dtype = [
        f"{k} {state_dict[k].dtype} vs {v.dtype}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].dtype != v.dtype
        and not (v.is_floating_point() and state_dict[k].dtype == float_dtype)
    ]
    non_finite = [
        k for k, v in state_dict.items()
        if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (checkpoint vs model): {_listed(mismatched)}")
    if wrong_dtype:
        problems.append(f"dtype mismatches (checkpoint vs model): {_listed(wrong_dtype)}")
    if non_finite:
        problems.append(f"NaN or infinite values in: {_listed(non_finite)}")
    if problems:
        raise ValueError(
            f"the checkpoint does not fit {type(model).__name__} (arch={arch!r}) as built; "
            + "; ".join(problems)
            + ". Pass the constructor arguments the checkpoint was trained with, or the right "
            "arch; weights of another dtype or with NaN/infinity come from a damaged or "
            "diverged training run."
        )


def load_official(
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any],
    arch: str | None = None,
    map_location: str | torch.device | None = "cpu",
    update: bool = True,
    weights_only: bool = True,
    **model_kwargs: Any,
) -> SymmetricalTransFormer | WACNN:
    """Builds a model and loads an official checkpoint into it strictly.

    Args:
        path_or_state_dict: a checkpoint file, or what `torch.load` returned for one.
        arch: `"stf"` or `"cnn"`; inferred from the names when None.
        map_location: where to load the tensors (the default "cpu" works without a GPU).
        update: fill the entropy coder's tables (`model.update()`) if the checkpoint has none.
        weights_only: passed to `torch.load`; set False only for trusted files that pickle
            more than tensors and plain containers.
        **model_kwargs: constructor arguments of the model (defaults: the paper's).

    Returns:
        The model in eval mode, on `map_location`.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: the file cannot be read (the message names it and the cause), or the
            checkpoint does not fit the model; the message lists the missing, unexpected and
            mis-shaped keys, the entries of another dtype and those holding NaN or infinity.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        checkpoint = zoo.read_checkpoint(path_or_state_dict, map_location or "cpu", weights_only)
    else:
        checkpoint = path_or_state_dict
    state_dict = convert_official_state_dict(checkpoint)
    arch = infer_arch(state_dict) if arch is None else arch
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got arch={arch!r}.")
    model = ARCHITECTURES[arch](**model_kwargs)
    check_state_dict(model, state_dict, arch)
    model.load_state_dict(state_dict, strict=True)
    if map_location is not None:
        model.to(map_location)
    if update:
        model.update(force=False)
    return model.eval()
