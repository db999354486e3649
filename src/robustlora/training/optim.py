"""SGD with momentum, weight decay and Nesterov as ``torch.optim.SGD`` computes it, without ``torch.optim``.

Constructing any ``torch.optim.Optimizer`` imports ``torch._dynamo`` (``add_param_group`` is wrapped in
``torch._disable_dynamo``), which costs every training process ~2.5-3 s of start-up on a CPU (issue 19); the
lr schedulers of ``torch.optim.lr_scheduler`` need such an optimizer. This module is the update rule of
``torch.optim.SGD`` (its single-tensor path, which torch takes on a CPU), operation for operation, so a run gives the
same parameters bit for bit (tests/test_optim.py). ``state_dict`` has torch's layout (``state``: per parameter
index its ``momentum_buffer``; ``param_groups``: one group), so either optimizer's state loads into the other.

One parameter group: the training loop has one (every trainable parameter, one lr and one weight decay).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch

__all__ = ["SGD"]


def _check(value: float, name: str, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise ValueError(f"SGD {name} must be a finite number >= {low:g}, got {value!r}")
    return float(value)


class SGD:
    """``torch.optim.SGD(params, lr, momentum, dampening, weight_decay, nesterov)`` for one parameter group.

    ``lr`` is an attribute the training loop sets per epoch (its schedule), as a scheduler sets a group's lr.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("SGD got an empty parameter list")
        if not all(isinstance(p, torch.Tensor) for p in self.params):
            raise ValueError("SGD params must be tensors")
        self.lr = _check(lr, "lr")
        self.momentum = _check(momentum, "momentum")
        self.dampening = _check(dampening, "dampening")
        self.weight_decay = _check(weight_decay, "weight_decay")
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("SGD nesterov needs a momentum > 0 and zero dampening")
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        """Drop every gradient (``set_to_none=True``, torch's default)."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """One update of every parameter that has a gradient (torch.optim.sgd._single_tensor_sgd)."""
        with torch.no_grad():
            for i, p in enumerate(self.params):
                if p.grad is None:
                    continue
                grad = p.grad
                if self.weight_decay != 0:
                    grad = grad.add(p, alpha=self.weight_decay)
                if self.momentum != 0:
                    buf = self.buffers[i]
                    if buf is None:
                        buf = torch.clone(grad).detach()
                        self.buffers[i] = buf
                    else:
                        buf.mul_(self.momentum).add_(grad, alpha=1 - self.dampening)
                    grad = grad.add(buf, alpha=self.momentum) if self.nesterov else buf
                p.add_(grad, alpha=-self.lr)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim.SGD's layout: ``{"state": {i: {"momentum_buffer": t}}, "param_groups": [{..., "params"}]}``."""
        state = {i: {"momentum_buffer": b} for i, b in enumerate(self.buffers) if b is not None}
        group = {"lr": self.lr, "momentum": self.momentum, "dampening": self.dampening,
                 "weight_decay": self.weight_decay, "nesterov": self.nesterov, "maximize": False,
                 "params": list(range(len(self.params)))}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore lr and the momentum buffers (from this class or torch.optim.SGD with one group), on the
        parameters' devices. A dict of another shape is refused, naming what differs."""
        groups = state_dict.get("param_groups")
        if not isinstance(groups, list) or len(groups) != 1:
            raise ValueError("SGD.load_state_dict: expected exactly one parameter group")
        indices = list(groups[0].get("params", []))
        if len(indices) != len(self.params):
            raise ValueError(f"SGD.load_state_dict: the state has {len(indices)} parameters, the optimizer "
                             f"{len(self.params)}")
        if groups[0].get("maximize"):
            raise ValueError("SGD.load_state_dict: maximize=True is not supported")
        buffers: list[torch.Tensor | None] = [None] * len(self.params)
        for pos, index in enumerate(indices):
            entry = state_dict.get("state", {}).get(index)
            buf = entry.get("momentum_buffer") if entry else None
            if buf is None:
                continue
            p = self.params[pos]
            if buf.shape != p.shape:
                raise ValueError(f"SGD.load_state_dict: momentum buffer {pos} has shape {tuple(buf.shape)}, its "
                                 f"parameter {tuple(p.shape)}")
            buffers[pos] = buf.detach().to(device=p.device, dtype=p.dtype).clone()
        self.buffers = buffers
        self.lr = _check(groups[0].get("lr", self.lr), "lr")
