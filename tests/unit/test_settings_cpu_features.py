"""The `cpu_features` setting: the feature set workers act on instead of /proc/cpuinfo's."""

from __future__ import annotations

import pytest

from serving.errors import ConfigError
from serving.settings import build_settings


def test_cpu_features_from_the_environment_are_normalised() -> None:
    s = build_settings(None, {}, {"SERVING_CPU_FEATURES": "AVX2, avx512f"})
    assert s.cpu_features == "avx2,avx512f"
    assert build_settings(None, {}, {}).cpu_features is None


def test_an_unknown_cpu_feature_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"cpu_features.*unknown CPU feature\(s\) avx9.*avx2"):
        build_settings(None, {}, {"SERVING_CPU_FEATURES": "avx2,avx9"})
