# SPDX-License-Identifier: Apache-2.0
"""Shared test configuration: hypothesis profiles.

Two profiles: `default`, a fast one for local runs, and `ci`, a deeper one. The profile is
chosen by the `HYPOTHESIS_PROFILE` environment variable, or `ci` when `CI=true`.

Deadlines are off in both: the suite runs on shared CPU runners where a single example can
stall for seconds, and some examples compile; speed is measured by `benchmarks/`, not here.
"""

import os

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}

settings.register_profile("default", max_examples=12, **_COMMON)
settings.register_profile("ci", max_examples=100, print_blob=True, **_COMMON)


def _profile() -> str:
    explicit = os.environ.get("HYPOTHESIS_PROFILE")
    if explicit:
        return explicit
    return "ci" if os.environ.get("CI", "").lower() == "true" else "default"


settings.load_profile(_profile())
