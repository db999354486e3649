"""params.yaml: the schema of every section, checked when a stage starts.

A bad value gives one line naming the full key, e.g. ``params.yaml: data.holdout must be in [0, 0.5), got 0.9``.
Values in [0,1] pixel units may be written as fractions (``8/255``). One module per concern, lowest first:
:mod:`~robustlora.config.schema` (the section base and shared field types), :mod:`~robustlora.config.adaptation`
(the settings of each kind of adaptation: ``full``, ``lora``, ``none``), the sections of each stage
(:mod:`~robustlora.config.data`, :mod:`~robustlora.config.training`, :mod:`~robustlora.config.attacks`,
:mod:`~robustlora.config.defences`, :mod:`~robustlora.config.report`), :mod:`~robustlora.config.params` (all of
params.yaml, the rules across sections, loading) and :mod:`~robustlora.config.explain` (the one-line errors).
Import any public name from here: ``from robustlora.config import AttackConfig, load_params``.
"""

from robustlora.config.adaptation import KIND_SCHEMAS, TARGET_SETS, FullSettings, KindSchema, LoraSettings, NoneSettings
from robustlora.config.attacks import (
    BLACKBOX_ATTACKS,
    AttackConfig,
    AutoAttackConfig,
    AutoAttackName,
    BlackboxConfig,
    BoundaryConfig,
    ConvergenceConfig,
    HopSkipJumpConfig,
    PgdConfig,
    SlowBlackboxConfig,
    SquareConfig,
    TransferConfig,
    ZooConfig,
)
from robustlora.config.data import DataConfig, SyntheticConfig
from robustlora.config.defences import AdaptiveSqueezeConfig, SqueezeConfig, SwitchingConfig
from robustlora.config.explain import explain
from robustlora.config.params import Params, VariantSpec, load_params, parse_params, to_dict
from robustlora.config.report import ARMS, Arm, MlflowConfig, ReportConfig
from robustlora.config.schema import (
    Device,
    EpsGrid,
    EpsGridOrDefault,
    Invalid,
    Number,
    Schema,
    Text,
    as_tuple,
    eps_grid,
    fraction,
    off_grid,
)
from robustlora.config.training import (
    AdversarialOption,
    AdversarialSettings,
    ModelConfig,
    TrainConfig,
    TrainLoopConfig,
    adversarial_input,
)
from robustlora.errors import ParamError

__all__ = [
    "ARMS", "AdaptiveSqueezeConfig", "AdversarialOption", "AdversarialSettings", "Arm", "AttackConfig",
    "AutoAttackConfig", "AutoAttackName", "BLACKBOX_ATTACKS", "BlackboxConfig", "BoundaryConfig", "ConvergenceConfig",
    "DataConfig", "Device", "EpsGrid", "EpsGridOrDefault", "FullSettings", "HopSkipJumpConfig", "Invalid",
    "KIND_SCHEMAS", "KindSchema", "LoraSettings", "MlflowConfig", "ModelConfig", "NoneSettings", "Number",
    "ParamError", "Params", "PgdConfig", "ReportConfig", "Schema", "SlowBlackboxConfig", "SquareConfig",
    "SqueezeConfig", "SwitchingConfig", "SyntheticConfig", "TARGET_SETS", "Text", "TrainConfig", "TrainLoopConfig",
    "TransferConfig", "VariantSpec", "ZooConfig", "adversarial_input", "as_tuple", "eps_grid", "explain",
    "fraction", "load_params", "off_grid", "parse_params", "to_dict",
]
