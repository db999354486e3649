"""How a nested config becomes MLflow params: flattened dotted keys, names MLflow accepts, values within its
length limit. ``{"lora": {"rank": 8}}`` -> ``{"lora.rank": "8"}``."""

from __future__ import annotations

import re
from typing import Any, Mapping

MAX_PARAM_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH; longer values are rejected


def _param_value(value: Any) -> str:
    """A config value as an MLflow param string, truncated to MLflow's length limit."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return str(value)[:MAX_PARAM_LENGTH]


def mlflow_key(name: str) -> str:
    """``name`` with the characters MLflow refuses in param, metric and tag names as '_'
    (``fc+conv1`` -> ``fc_conv1``)."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name)


def flatten_params(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"lora.rank": "8", "attack.eps_255": "1,2,4"}``; lists of dicts get index keys.

    Keys are made valid MLflow names (``mlflow_key``)."""
    flat: dict[str, str] = {}
    for key, value in cfg.items():
        name = mlflow_key(f"{prefix}{key}")
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        elif isinstance(value, (list, tuple)) and any(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                sub = item if isinstance(item, Mapping) else {"value": item}
                flat.update(flatten_params(sub, f"{name}.{i}."))
        else:
            flat[name] = _param_value(value)
    return flat
