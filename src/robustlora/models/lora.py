"""LoRA for Linear and Conv2d layers: W' = W + ΔW with ΔW = α·(A·B).

Shapes (the study's notation): A ∈ R^{Cout×r}, B ∈ R^{r×(Cin·Kh·Kw)}; for Linear, Kh = Kw = 1 and
Cin = in_features. ΔW is reshaped to the layer's weight shape (Cout, Cin, Kh, Kw) for a conv.

Mapping to PEFT, which computes ΔW = (lora_alpha / r) · (lora_B.weight @ lora_A.weight):
    study A = PEFT lora_B.weight              (Cout×r; a conv's Cout×r×1×1 flattened)
    study B = PEFT lora_A.weight flattened    (r×Cin·Kh·Kw)
    study α = PEFT lora_alpha / r             (so α is NOT divided by r here; pass the study's α exactly)
Initialisation matches PEFT: A = 0 (PEFT's lora_B) and B ~ kaiming_uniform(a=√5) (PEFT's lora_A), so a freshly
wrapped model computes exactly what the base model computes.

State-dict keys of a wrapped layer `fc`: `fc.base.weight`, `fc.base.bias` (if any), `fc.lora_A`, `fc.lora_B`.
α and r are not stored: reload a checkpoint by building the same model, calling apply_lora with the same
(targets, rank, alpha), then load_state_dict. BatchNorm keys are unchanged.

Frozen BatchNorm: after apply_lora every BatchNorm whose parameters are all frozen stays in eval mode even under
model.train(), so the running statistics of the frozen backbone never drift during LoRA training.
"""

from __future__ import annotations

import copy
import fnmatch
import math
from numbers import Integral, Real
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustlora.errors import ModelError

__all__ = [
    "LoRALayer",
    "LoRALinear",
    "LoRAConv2d",
    "EvalBatchNorm1d",
    "EvalBatchNorm2d",
    "EvalBatchNorm3d",
    "apply_lora",
    "merge_lora",
    "freeze_batchnorm",
    "lora_parameters",
    "count_parameters",
    "expected_lora_param_count",
    "resolve_targets",
]

# -----------------------------------------------------------------------------
# wrappers


class LoRALayer(nn.Module):
    """A frozen `base` layer plus trainable factors `lora_A` (Cout×r, zero at init) and `lora_B` (r×fan_in)."""

    def __init__(self, base: nn.Linear | nn.Conv2d, rank: int, alpha: float) -> None:
        super().__init__()
        w = base.weight
        cout, fan_in = w.shape[0], w[0].numel()
        self.base = base
        self.rank = rank
        self.alpha = alpha
        # init on CPU in float32 so one seed gives the same factors on any device and dtype
        lora_b = torch.empty(rank, fan_in)
        nn.init.kaiming_uniform_(lora_b, a=math.sqrt(5))  # PEFT's lora_A init; fan_in = size(1)
        self.lora_A = nn.Parameter(torch.zeros(cout, rank).to(device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(lora_b.to(device=w.device, dtype=w.dtype))

    def delta_weight(self) -> torch.Tensor:
        """ΔW = α·(A·B), reshaped to the base weight's shape."""
        return (self.alpha * (self.lora_A @ self.lora_B)).reshape(self.base.weight.shape)

    def merged_weight(self) -> torch.Tensor:
        """W + ΔW, computed in the base weight's dtype (autocast casts it once, where it is used)."""
        w = self.base.weight
        # merging under autocast would round ΔW to bf16 before the add; merge at full precision instead
        with torch.autocast(device_type=w.device.type, enabled=False):
            return w + self.delta_weight().to(w.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"


class LoRALinear(LoRALayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # merged W+ΔW beat base(x) + α·(x@Bᵀ)@Aᵀ on CPU for ResNet18's fc (512->10, batch 256); a tie on an H200
        return F.linear(x, self.merged_weight(), self.base.bias)


class LoRAConv2d(LoRALayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        return F.conv2d(x, self.merged_weight(), b.bias, b.stride, b.padding, b.dilation, b.groups)


# -----------------------------------------------------------------------------
# BatchNorm that stays in eval mode


class _KeepEval:
    """Mixin: train() always means eval(), so running statistics are never updated."""

    def train(self, mode: bool = True) -> nn.Module:  # noqa: ARG002 (mode is ignored on purpose)
        return super().train(False)


class EvalBatchNorm1d(_KeepEval, nn.BatchNorm1d):
    pass


class EvalBatchNorm2d(_KeepEval, nn.BatchNorm2d):
    pass


class EvalBatchNorm3d(_KeepEval, nn.BatchNorm3d):
    pass


_EVAL_BN = {nn.BatchNorm1d: EvalBatchNorm1d, nn.BatchNorm2d: EvalBatchNorm2d, nn.BatchNorm3d: EvalBatchNorm3d}
_PLAIN_BN = {v: k for k, v in _EVAL_BN.items()}


def freeze_batchnorm(model: nn.Module) -> list[str]:
    """Keep every BatchNorm whose parameters are all frozen in eval mode, even under model.train().

    Swaps the module's class to an Eval* subclass (same state_dict, same buffers). Returns the names swapped.
    Call it again after freezing more (e.g. a linear probe that trains only fc); it never unfreezes a BatchNorm.
    """
    frozen = []
    for name, m in model.named_modules():
        if type(m) in _EVAL_BN and not any(p.requires_grad for p in m.parameters()):
            m.__class__ = _EVAL_BN[type(m)]
            m.train(False)
            frozen.append(name)
    return frozen


def _restore_batchnorm(model: nn.Module) -> None:
    """Undo freeze_batchnorm: plain BatchNorm classes that follow the model's train/eval mode again."""
    for m in model.modules():
        if type(m) in _PLAIN_BN:
            m.__class__ = _PLAIN_BN[type(m)]
            m.training = model.training


# -----------------------------------------------------------------------------
# target resolution


def _weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Linear/Conv2d layers (and LoRA wrappers, by their own name) that LoRA can target, in model order."""
    layers: dict[str, nn.Module] = {}
    wrapped: list[str] = []
    for name, m in model.named_modules():
        if not name or any(name.startswith(w + ".") for w in wrapped):
            continue  # the root, or a wrapper's own `base`
        if isinstance(m, LoRALayer):
            wrapped.append(name)
        if isinstance(m, (nn.Linear, nn.Conv2d, LoRALayer)):
            layers[name] = m
    return layers


def _not_found(target: str, layers: dict[str, nn.Module]) -> ModelError:
    return ModelError(f"lora target '{target}' not found; layers with weights: {', '.join(layers)}")


def resolve_targets(model: nn.Module, targets: str | Sequence[str]) -> list[str]:
    """Module names selected by `targets`: exact dotted names, or fnmatch globs on the full dotted name.

    An exact name selects only that module (`conv1` is the stem, not every block's conv1). A glob selects the
    Linear/Conv2d layers it matches and ignores other modules. Already-wrapped layers are returned by their name.
    """
    if isinstance(targets, str):
        targets = [targets]
    if not targets:
        raise ModelError("lora targets is empty; name at least one layer, e.g. ['fc'] or ['layer*.*.conv*']")
    layers = _weight_layers(model)
    modules = dict(model.named_modules())
    selected: list[str] = []
    for t in targets:
        if any(c in t for c in "*?["):
            hits = [n for n in layers if fnmatch.fnmatchcase(n, t)]
        elif t in layers:
            hits = [t]
        elif t in modules and isinstance(modules[t], (nn.Linear, nn.Conv2d)):
            raise ModelError(f"lora target '{t}' is inside a LoRA wrapper; name the wrapper, or use a fresh model")
        elif t in modules and t:
            raise ModelError(
                f"lora target '{t}' is a {type(modules[t]).__name__}, not Linear/Conv2d; "
                f"layers with weights: {', '.join(layers)}"
            )
        else:
            hits = []
        if not hits:
            raise _not_found(t, layers)
        selected += [n for n in hits if n not in selected]
    order = list(layers)
    return sorted(selected, key=order.index)


# -----------------------------------------------------------------------------
# public API


def _check_args(rank: int, alpha: float) -> None:
    if isinstance(rank, bool) or not isinstance(rank, Integral) or rank < 1:
        raise ValueError(f"lora rank must be an int >= 1, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not math.isfinite(alpha):
        raise ValueError(f"lora alpha must be a finite float (the study's α, = PEFT lora_alpha / r), got {alpha!r}")


def _wrap(name: str, layer: nn.Module, rank: int, alpha: float) -> LoRALayer:
    if isinstance(layer, LoRALayer):
        raise ModelError(f"lora target '{name}' already has LoRA; wrap a layer once (use a fresh model for a new rank)")
    if isinstance(layer, nn.Linear):
        return LoRALinear(layer, rank, alpha)
    if layer.groups != 1:
        raise ModelError(f"lora target '{name}' is a grouped conv (groups={layer.groups}); only groups=1 is supported")
    if layer.padding_mode != "zeros":
        raise ModelError(f"lora target '{name}' uses padding_mode='{layer.padding_mode}'; only 'zeros' is supported")
    return LoRAConv2d(layer, rank, alpha)


def apply_lora(model: nn.Module, targets: str | Sequence[str], rank: int, alpha: float) -> nn.Module:
    """Wrap the targeted Linear/Conv2d layers with LoRA in place; freeze everything else; return `model`.

    rank: r >= 1. alpha: the study's α (ΔW = α·A·B, no division by r). All non-LoRA parameters get
    requires_grad=False and BatchNorms with frozen parameters stay in eval mode (see freeze_batchnorm).
    """
    _check_args(rank, alpha)
    names = resolve_targets(model, targets)
    wrappers = {n: _wrap(n, model.get_submodule(n), int(rank), float(alpha)) for n in names}  # validate all, then edit
    factors = {id(p) for p in lora_parameters(model)}
    for p in model.parameters():
        if id(p) not in factors:  # factors of an earlier apply_lora call keep training
            p.requires_grad_(False)
    for n, w in wrappers.items():
        model.set_submodule(n, w)
    freeze_batchnorm(model)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """A plain copy of `model` with W + ΔW folded into each wrapped layer; `model` itself is untouched.

    The copy has no LoRA modules, plain BatchNorm classes (following the copy's train/eval mode) and
    requires_grad=True on every parameter, like a freshly built model.
    """
    merged = copy.deepcopy(model)
    for name, m in list(merged.named_modules()):
        if isinstance(m, LoRALayer):
            with torch.no_grad():
                m.base.weight.copy_(m.merged_weight())
            merged.set_submodule(name, m.base)
    _restore_batchnorm(merged)
    for p in merged.parameters():
        p.requires_grad_(True)
    return merged


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA factors (lora_A, lora_B of each wrapper), in model order; pass these to the optimiser."""
    return [p for m in model.modules() if isinstance(m, LoRALayer) for p in (m.lora_A, m.lora_B)]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared parameters are counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def expected_lora_param_count(model: nn.Module, targets: str | Sequence[str], rank: int) -> int:
    """Σ over targets of r·(Cout + Cin·Kh·Kw): the factor count apply_lora(model, targets, rank, α) adds."""
    _check_args(rank, 1.0)
    layers: Iterable[nn.Module] = (model.get_submodule(n) for n in resolve_targets(model, targets))
    weights = [(m.base if isinstance(m, LoRALayer) else m).weight for m in layers]
    return sum(rank * (w.shape[0] + w[0].numel()) for w in weights)
