"""Property: whatever single value of params.yaml is replaced (a wrong type, out of range, a section gone odd),
load_params either accepts the file or refuses it with a ParamError whose message is one line naming the key —
never another exception, never a traceback from a stage."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from robustlora.config import Params, load_params
from robustlora.errors import ParamError, RobustloraError

DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())


def _keys(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of the mapping, sections and leaves alike (a list counts as one leaf)."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(prefix + (str(k),))
            out += _keys(v, prefix + (str(k),))
    return out


KEYS = _keys(DEFAULT)

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-10 ** 12, max_value=10 ** 12),
    st.sampled_from([0, -1, 1, 2 ** 63, 0.0, -0.5, 1.5, 255.0, 1e300, -1e-300, math.nan, math.inf, -math.inf]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["8/255", "1/0", "auto", "cuda:7", "cpu", "custom", "lora", "none", "pretrained", "1e-4", ""]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(st.text(max_size=6), scalars, max_size=3))


def _replace(key: tuple[str, ...], value: Any) -> dict:
    raw = copy.deepcopy(DEFAULT)
    node = raw
    for part in key[:-1]:
        node = node[part]
    node[key[-1]] = value
    return raw


@pytest.fixture(scope="module")
def params_file(tmp_path_factory):
    return tmp_path_factory.mktemp("params") / "params.yaml"


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), value=values)
def test_one_bad_value_is_valid_or_one_line_naming_its_key(params_file, key, value):
    params_file.write_text(yaml.safe_dump(_replace(key, value), sort_keys=False, allow_unicode=True))
    dotted = ".".join(key)
    try:
        parsed = load_params(params_file)
    except RobustloraError as e:
        message = str(e)
        assert isinstance(e, ParamError), (dotted, value, message)
        assert "\n" not in message and message.strip() == message and message, (dotted, value, message)
        # the key itself, or (a rule across keys, e.g. report.eps vs attack.eps) the key beside it that names it
        named = [".".join(key[:n]) for n in range(len(key), min(2, len(key)) - 1, -1)]
        assert any(k in message for k in named), (dotted, value, message)
        return
    assert isinstance(parsed, Params)


def test_the_property_sees_every_section_and_a_deep_key():
    """The strategy draws from all of params.yaml: each section, and keys three deep."""
    assert {k[0] for k in KEYS} == set(DEFAULT)
    assert ("attack", "convergence", "eps") in KEYS and ("variants", "lora_fc", "targets") in KEYS
