# SPDX-License-Identifier: Apache-2.0
"""Every fenced code block of README.md and docs/*.md runs as written.

* `python` blocks are executed, each in a fresh namespace, in a temporary working directory
  (blocks that put tensors on `device="cuda"` only where a CUDA GPU is present).
* `bash` blocks: every command is checked without doing the work: `winattn ...` is parsed by
  winattn's own parser; `python FILE.py`, `torchrun ... FILE.py` and `python -m MODULE`
  must start and print their `--help`.
* `text` and `json` blocks show output; they are not code.

An HTML comment on the line before a fence changes that:

* `<!-- docs-test: ci -->`: an install command; `.ci/run` runs it on a fresh venv.
* `<!-- docs-test: setup=NAME -->`: the block needs files or models that are not here
  (downloads, datasets, full-size checkpoints); `SETUPS[NAME]` provides small stand-ins
  made from bundled data first.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import winattn
from winattn.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(
    r"^(?:<!-- docs-test: (?P<marker>[^>]*?) -->\n)?```(?P<lang>\w*)[^\n]*\n(?P<code>.*?)^```",
    re.MULTILINE | re.DOTALL,
)
OUTPUT_LANGUAGES = {"text", "json"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    marker: str

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.line}"


def _blocks() -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start("lang")) + 1
            found.append(Block(page, line, m["lang"], m["code"], m["marker"] or ""))
    return found


BLOCKS = _blocks()


def _winattn_examples() -> None:
    """Makes `winattn_examples` this checkout's `examples/` (as `pip install -e .` does), also
    when the environment's editable install points at another checkout."""
    spec = importlib.util.find_spec("winattn_examples")
    here = ROOT / "examples"
    if spec is not None and Path(spec.origin).parent == here:
        return
    for name in [m for m in sys.modules if m.split(".")[0] == "winattn_examples"]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        "winattn_examples", here / "__init__.py", submodule_search_locations=[str(here)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["winattn_examples"] = module
    spec.loader.exec_module(module)


# ---------------------------------------------------------------------------------------------
# Stand-ins for what a block needs and this machine does not have.


def _hyperprior_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """`hyperprior.pth.tar` and `hyperprior-winattn.pth.tar`: random weights in the layout of
    CompressAI's `bmshj2018_hyperprior(quality=3)` checkpoint (N=128, M=192)."""
    from compressai.models import ScaleHyperprior

    from winattn import patch_model

    torch.manual_seed(0)
    torch.save(ScaleHyperprior(N=128, M=192).state_dict(), "hyperprior.pth.tar")
    patched = patch_model(ScaleHyperprior(N=128, M=192))
    torch.save({"state_dict": patched.state_dict()}, "hyperprior-winattn.pth.tar")


def _tiny_stf(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny test configurations of `winattn_examples.stf.zoo` stand in for the paper's
    sizes, and official-format checkpoint files (`module.` prefix, under `state_dict`) of them
    stand in for the published ones."""
    _winattn_examples()
    from winattn_examples.stf import loader, models, zoo

    tiny = {}
    for arch, name in zoo.MODEL_CLASSES.items():
        base = getattr(models, name)
        tiny[arch] = type(name, (base,), {"__init__": _with_defaults(base, zoo.TINY_CONFIGS[arch])})
        monkeypatch.setattr(models, name, tiny[arch])
        monkeypatch.setitem(loader.ARCHITECTURES, arch, tiny[arch])
    torch.manual_seed(0)
    for arch, file in (("stf", "stf_0035_best.pth.tar"), ("cnn", "cnn_0035.pth.tar")):
        state = {f"module.{k}": v for k, v in tiny[arch]().state_dict().items()}
        torch.save({"epoch": 1, "state_dict": state}, file)


def _with_defaults(base: type, defaults: dict) -> Callable[..., None]:
    def __init__(self, **kwargs):  # noqa: N807
        base.__init__(self, **{**defaults, **kwargs})

    return __init__


SETUPS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "hyperprior-checkpoint": _hyperprior_checkpoint,
    "tiny-stf": _tiny_stf,
}


# ---------------------------------------------------------------------------------------------
# Running blocks


def _setup(block: Block) -> str | None:
    if not block.marker:
        return None
    key, _, value = block.marker.partition("=")
    if key == "setup" and value in SETUPS:
        return value
    pytest.fail(f"{block.id}: unknown marker {block.marker!r}; use 'ci' or 'setup=' + one of {sorted(SETUPS)}")


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.chdir(tmp_path)
    backend = winattn.get_backend()
    yield monkeypatch
    winattn.set_backend(backend)


PYTHON = [b for b in BLOCKS if b.lang == "python"]


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_block_runs(block: Block, in_tmp: pytest.MonkeyPatch) -> None:
    if 'device="cuda"' in block.code and not torch.cuda.is_available():
        pytest.skip(f"{block.id} runs on a CUDA GPU")
    setup = _setup(block)
    if "winattn_examples" in block.code:
        _winattn_examples()
    if setup is not None:
        SETUPS[setup](in_tmp)
    code = compile(block.code, f"{block.page}:{block.line}", "exec")
    exec(code, {"__name__": "__docs__"})


def _commands(code: str) -> list[list[str]]:
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def _help_target(words: list[str]) -> tuple[str, ...] | None:
    """What to ask for `--help`: `("file", path)` or `("module", name)`; None for `winattn`."""
    if words[0] == "torchrun":
        script = next(w for w in words[1:] if w.endswith(".py"))
        return ("file", script)
    if words[0] in ("python", "python3"):
        if words[1] == "-m":
            return None if words[2] == "winattn" else ("module", words[2])
        return ("file", words[1])
    return None


BASH = [b for b in BLOCKS if b.lang in ("bash", "sh", "console") and b.marker != "ci"]


@pytest.mark.parametrize("block", BASH, ids=[b.id for b in BASH])
def test_bash_block_commands_exist(block: Block) -> None:
    helps = set()
    for words in _commands(block.code):
        if words[0] == "winattn" or words[:3] == ["python", "-m", "winattn"]:
            args = words[1:] if words[0] == "winattn" else words[3:]
            if "--help" not in args:
                build_parser().parse_args(args)  # exits 2 on an unknown option
            continue
        target = _help_target(words)
        assert target is not None, f"{block.id}: cannot check {' '.join(words)!r}; mark the block"
        helps.add(target)
    for kind, name in sorted(helps):
        failure = _help_fails(kind, name)
        assert failure is None, f"{block.id}: {failure}"


@functools.cache
def _help_fails(kind: str, name: str) -> str | None:
    """Why `python NAME --help` (or `python -m NAME --help`) does not print a usage; None if
    it does. Cached: several pages show the same scripts."""
    cmd = [sys.executable, name, "--help"] if kind == "file" else [sys.executable, "-m", name, "--help"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or "usage" not in done.stdout.lower():
        return f"{' '.join(cmd[1:])} failed ({done.returncode}):\n{done.stderr[-2000:]}"
    return None


def test_every_block_is_run_or_declared() -> None:
    languages = {"python", "bash", "sh", "console"} | OUTPUT_LANGUAGES
    unknown = [f"{b.id} ({b.lang or 'no language'})" for b in BLOCKS if b.lang not in languages]
    assert not unknown, f"code blocks the docs test does not know how to run: {unknown}"
