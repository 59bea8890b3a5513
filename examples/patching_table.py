# SPDX-License-Identifier: Apache-2.0
"""Prints the table of docs/patching.md: for every architecture, what `patch_model` patches and
how many parameters it adds, at the zoo's highest-quality sizes (N=192, M=320; cheng2020: N=192;
ELIC's defaults N=192, M=320; ScaleSpaceFlow: its fixed 128/192 channels).

Run: `python examples/patching_table.py > table.md`.
"""

from __future__ import annotations

import torch

from winattn import patch_model


def _models() -> list[tuple[str, str, object]]:
    from compressai.models.video import ScaleSpaceFlow
    from compressai.registry import MODELS
    from compressai.zoo.image import cfgs
    from compressai.zoo.image_vbr import cfgs as cfgs_vbr

    rows = []
    for arch, sizes in [*cfgs.items(), *cfgs_vbr.items()]:
        args = sizes[max(sizes)] if isinstance(sizes, dict) else sizes
        cls = MODELS[arch.replace("_", "-")]
        rows.append((arch.replace("_", "-"), f"{cls.__name__}{args}", lambda c=cls, a=args: c(*a)))
    for arch in ("cheng2020-anchor-checkerboard", "elic2022-official", "elic2022-chandelier"):
        rows.append((arch, f"{MODELS[arch].__name__}()", MODELS[arch]))
    rows.append(("ssf2020", "ScaleSpaceFlow()", ScaleSpaceFlow))
    return rows


def main() -> None:
    torch.manual_seed(0)
    print("| architecture | built as | action | paths patched (channels, window/shift) | parameters added |")
    print("|---|---|---|---|---|")
    for arch, built_as, build in _models():
        model = build()
        before = sum(p.numel() for p in model.parameters())
        report = patch_model(model).winattn_report
        paths = "<br>".join(
            f"`{e.path}` ({e.channels}, {e.window_size[0]}/{e.shift_size[0]})" for e in report.entries
        )
        pct = 100 * report.params_added / before
        print(
            f"| {arch} | `{built_as}` | {', '.join(report.actions)} | {paths} | "
            f"{report.params_added:+,} ({pct:+.1f}% of {before:,}) |"
        )


if __name__ == "__main__":
    main()
