# SPDX-License-Identifier: Apache-2.0
"""The report of `patch_model`: one `PatchEntry` per module touched, in model order."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PatchEntry", "PatchReport"]


@dataclass(frozen=True)
class PatchEntry:
    """One module that `patch_model` touched.

    Attributes:
        path: dotted path of the new module in the model (its state-dict prefix).
        action: `"insert"`, `"replace"` or `"swap"`.
        channels: channels the module works on.
        window_size: `(Wh, Ww)`.
        shift_size: `(sh, sw)`, the shift the module really applies (for a window-level swap,
            the shift of the host block that calls it).
        params_added: parameters the model gained (negative when it lost some).
        note: anything else worth knowing (what was replaced, what was kept).
        level: for a swap, `"block"` (the host's whole pad / roll / partition / attention /
            reverse / crop path is one `window_attention` call) or `"window"` (only the
            attention on already partitioned windows is swapped; the host still does the
            rest); `"block"` for insert and replace.
        host: `module.qualname` of the class that was replaced (empty for insert).
        max_delta: for a swap, the largest difference between the host's and the swapped
            module's outputs on the probe (fp32, `winattn.patch.probe`); 0.0 means bit-exact
            there. None for insert and replace.
    """

    path: str
    action: str
    channels: int
    window_size: tuple[int, int]
    shift_size: tuple[int, int]
    params_added: int
    note: str = ""
    level: str = "block"
    host: str = ""
    max_delta: float | None = None

    @property
    def bit_exact(self) -> bool:
        """Whether the swap gave exactly the host's outputs on the probe."""
        return self.max_delta == 0.0


@dataclass
class PatchReport:
    """What `patch_model` did; attached to the model as `model.winattn_report`.

    Attributes:
        mode: the mode asked for.
        init: the initialisation asked for.
        entries: every module touched, in model order.
        notes: remarks, e.g. that the model was already patched, or which attention modules
            were left as they are.

    Example:
        >>> import torch.nn as nn
        >>> from winattn import patch_model
        >>> model = nn.Sequential(*[m for _ in range(4) for m in (nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())])
        >>> print(patch_model(model).winattn_report.entries[0].path)
        winattn_stage2
    """

    mode: str
    init: str
    entries: list[PatchEntry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def params_added(self) -> int:
        """Total parameters added (negative if the model shrank)."""
        return sum(e.params_added for e in self.entries)

    @property
    def actions(self) -> list[str]:
        """The distinct actions taken, in order of first use."""
        return list(dict.fromkeys(e.action for e in self.entries))

    def __str__(self) -> str:
        head = f"winattn patch (mode={self.mode!r}, init={self.init!r})"
        rows = [("path", "action", "level", "channels", "window", "shift", "params", "max delta", "host", "note")]
        for e in self.entries:
            rows.append(
                (
                    e.path,
                    e.action,
                    e.level,
                    str(e.channels),
                    "x".join(map(str, e.window_size)),
                    "x".join(map(str, e.shift_size)),
                    f"{e.params_added:+,}",
                    "-" if e.max_delta is None else f"{e.max_delta:.1g}",
                    e.host,
                    e.note,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [head]
        if self.entries:
            lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
            lines.append(f"total parameters added: {self.params_added:+,}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)
