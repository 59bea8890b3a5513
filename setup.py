# SPDX-License-Identifier: Apache-2.0
"""The package layout that pyproject.toml cannot say: `examples/` is installed as
`winattn_examples`, because the CompressAI wheel already installs a top-level `examples`.
Everything else (metadata, dependencies, extras) is in pyproject.toml."""

from setuptools import find_packages, setup

EXAMPLES = "winattn_examples"
examples = find_packages(include=["examples", "examples.*"])

setup(
    packages=find_packages(include=["winattn", "winattn.*"])
    + [EXAMPLES + name.removeprefix("examples") for name in examples],
    package_dir={EXAMPLES: "examples"},
    package_data={
        "winattn": [
            "py.typed",
            "backends/triton/verified.json",
            "pretrained/*/*.pt",
            "pretrained/*/*.json",
            "pretrained/*/*.md",
        ],
        f"{EXAMPLES}.stf": ["assets/smoke/*.png"],
    },
)
