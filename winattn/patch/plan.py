# SPDX-License-Identifier: Apache-2.0
"""A patch as a transaction: every new module is built first, then all are set at once.

Each action (insert, replace, swap) only *plans*: it builds its new modules and records, per
parent module, the children the parent will have. Nothing in the model changes until
`Plan.apply`, which cannot fail half-way (it only reassigns dictionaries), and `Plan.undo`
puts every parent's children back as they were.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from winattn.patch.report import PatchEntry

__all__ = ["Plan"]


@dataclass
class _Children:
    parent: nn.Module
    before: dict[str, nn.Module]
    after: dict[str, nn.Module]


@dataclass
class Plan:
    """The children every touched parent will have, and the report entries that say why."""

    entries: list[PatchEntry] = field(default_factory=list)
    _parents: dict[int, _Children] = field(default_factory=dict)

    def _of(self, parent: nn.Module) -> _Children:
        if id(parent) not in self._parents:
            before = dict(parent._modules)
            self._parents[id(parent)] = _Children(parent, before, dict(before))
        return self._parents[id(parent)]

    def children(self, parent: nn.Module) -> list[tuple[str, nn.Module]]:
        """The children `parent` will have once the plan is applied, in order."""
        return list(self._of(parent).after.items())

    def set_child(self, parent: nn.Module, key: str, module: nn.Module, entry: PatchEntry) -> None:
        """Plans `parent.<key> = module` (same key, same position)."""
        self._of(parent).after[key] = module
        self.entries.append(entry)

    def set_children(
        self, parent: nn.Module, children: list[tuple[str, nn.Module]], entries: list[PatchEntry]
    ) -> None:
        """Plans the new ordered children of `parent` (an `nn.Sequential` gaining modules)."""
        self._of(parent).after = dict(children)
        self.entries += entries

    def __bool__(self) -> bool:
        return bool(self.entries)

    def apply(self) -> None:
        for c in self._parents.values():
            _set_modules(c.parent, c.after)

    def undo(self) -> None:
        for c in self._parents.values():
            _set_modules(c.parent, c.before)


def _set_modules(parent: nn.Module, modules: dict[str, nn.Module]) -> None:
    parent._modules.clear()
    parent._modules.update(modules)
