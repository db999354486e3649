"""Dynamic LoRA adapter switching: one frozen backbone, several adapters, chosen per batch or per input.

An adapter is the LoRA factors of every wrapped layer (`<layer>.lora_A`, `<layer>.lora_B`) of one backbone that
was wrapped by `apply_lora` with the same targets, rank and α for every adapter (α is not stored in a state_dict,
so the bank uses the wrappers' α for all). Variants whose non-LoRA weights differ (re-estimated BatchNorm statistics,
full fine-tuning) cannot share the backbone and are refused by `adapter_from_state_dict`. A fresh head that every
variant trains (`model.head: new`) travels with its adapter, as PEFT's ``modules_to_save`` does: name it in
``modules_to_save`` (e.g. ``("fc",)``) and its weights become part of each adapter instead of the shared backbone.

Per-input routing runs each group of inputs through `torch.func.functional_call` with that adapter's tensors in
place of the wrappers' factors: nothing is modified in place, so gradients w.r.t. x flow through every group (an
attacker sees the whole switching system; the route itself is treated as given, i.e. not differentiated).
In eval mode (and with BatchNorm frozen, as apply_lora leaves it) each input's output depends on that input only,
so grouping changes nothing but the batch composition of each forward.
"""

from __future__ import annotations

import copy
import time
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call

from robustlora.errors import ModelError
from robustlora.models.lora import LoRALayer, merge_lora
from robustlora.models.resnet import eval_mode

__all__ = ["AdapterBank", "SwitchingClassifier", "adapter_from_state_dict", "adapter_keys", "lora_keys",
           "switch_cost"]


def _wrappers(model: nn.Module) -> dict[str, LoRALayer]:
    wrappers = {n: m for n, m in model.named_modules() if isinstance(m, LoRALayer)}
    if not wrappers:
        raise ModelError("model has no LoRA wrappers; call apply_lora(model, targets, rank, alpha) before switching")
    return wrappers


def lora_keys(model: nn.Module) -> dict[str, torch.Size]:
    """State-dict keys of the LoRA factors of `model` (`<layer>.lora_A`, `<layer>.lora_B`) and their shapes."""
    return {f"{n}.{f}": getattr(m, f).shape for n, m in _wrappers(model).items() for f in ("lora_A", "lora_B")}


def adapter_keys(model: nn.Module, modules_to_save: Sequence[str] = ()) -> dict[str, torch.Size]:
    """The keys an adapter holds: the LoRA factors, then every parameter and buffer of the ``modules_to_save``
    (module names, e.g. ``fc``: a head trained with each adapter), with their shapes."""
    keys = lora_keys(model)
    if not modules_to_save:
        return keys
    modules = dict(model.named_modules())
    for name in modules_to_save:
        if name not in modules:
            raise ModelError(f"modules_to_save: the model has no module '{name}'")
    saved = {k: v.shape for k, v in model.state_dict().items()
             if k not in keys and any(k.startswith(f"{m}.") for m in modules_to_save)}
    return {**keys, **saved}


def _check_adapter(name: str, adapter: Mapping[str, torch.Tensor], shapes: Mapping[str, torch.Size]) -> None:
    missing = [k for k in shapes if k not in adapter]
    if missing:
        raise ModelError(f"adapter '{name}' lacks LoRA key '{missing[0]}' ({len(missing)} of {len(shapes)} missing)")
    extra = [k for k in adapter if k not in shapes]
    if extra:
        raise ModelError(f"adapter '{name}' has key '{extra[0]}' that is not a LoRA factor of this model's wrappers "
                         "(nor of its modules_to_save)")
    for k, shape in shapes.items():
        if not isinstance(adapter[k], torch.Tensor) or adapter[k].shape != shape:
            got = tuple(adapter[k].shape) if isinstance(adapter[k], torch.Tensor) else type(adapter[k]).__name__
            raise ModelError(f"adapter '{name}': '{k}' has shape {got}, the model's wrapper needs {tuple(shape)} "
                             "(same targets and rank for every adapter)")


def adapter_from_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module,
                            name: str = "state_dict", modules_to_save: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """The LoRA factors (and the ``modules_to_save``' weights) of a variant's state_dict, after checking every other
    entry equals `model`'s own.

    `model` is the bank's backbone (already wrapped). Refuses, naming the first differing key, a state_dict whose
    other weights or buffers differ: switching adapters requires one shared backbone.
    """
    shapes = adapter_keys(model, modules_to_save)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    if missing:
        raise ModelError(f"{name}: missing key '{missing[0]}'; not a LoRA variant of this backbone "
                         "(same targets and rank?)")
    extra = [k for k in state_dict if k not in own]
    if extra:
        raise ModelError(f"{name}: unexpected key '{extra[0]}'; not a LoRA variant of this backbone")
    for k, mine in own.items():
        if k in shapes:
            continue
        theirs = state_dict[k]
        if theirs.shape != mine.shape or not torch.equal(theirs.to(mine.device, mine.dtype), mine):
            hint = (" (a head trained with each adapter: modules_to_save=('fc',), which model.head: new sets)"
                    if k.startswith("fc.") and "fc" not in modules_to_save else "")
            raise ModelError(f"{name}: backbone differs from the bank's at '{k}'; switching needs one shared "
                             f"backbone (LoRA-only variants of the same pretrained weights, BatchNorm frozen){hint}")
    adapter = {k: state_dict[k].detach().clone() for k in shapes}
    _check_adapter(name, adapter, shapes)
    return adapter


class AdapterBank(nn.Module):
    """One LoRA-wrapped backbone holding several adapters; `use` switches in place, `forward` routes per input.

    Adapters are kept as non-persistent buffers (they follow `bank.to(device)`); the bank never changes the
    model's train/eval mode. Order of `names` = the indices a route uses.
    """

    def __init__(self, model: nn.Module, adapters: Mapping[str, Mapping[str, torch.Tensor]],
                 modules_to_save: Sequence[str] = ()) -> None:
        super().__init__()
        if not adapters:
            raise ModelError("AdapterBank needs at least one adapter; got none")
        self.model = model
        self.modules_to_save = tuple(modules_to_save)
        self.shapes = adapter_keys(model, self.modules_to_save)
        self.keys = list(self.shapes)
        self.names: list[str] = []
        params = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        for name, adapter in adapters.items():
            if not isinstance(name, str) or not name:
                raise ModelError(f"adapter names must be non-empty strings, got {name!r}")
            _check_adapter(name, adapter, self.shapes)
            for j, k in enumerate(self.keys):
                like = params[k]
                self.register_buffer(self._buffer(len(self.names), j),
                                     adapter[k].detach().to(like.device, like.dtype).clone(), persistent=False)
            self.names.append(name)
        self.active: str | None = None

    @staticmethod
    def _buffer(i: int, j: int) -> str:
        return f"adapter{i}_factor{j}"

    def index(self, name: str) -> int:
        """Position of adapter `name` in `names` (its route index)."""
        if name not in self.names:
            raise ModelError(f"adapter '{name}' is not in the bank; adapters: {', '.join(self.names)}")
        return self.names.index(name)

    def adapter(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of adapter `name`, keyed like the model's state_dict (the bank's own storage, not copies)."""
        i = self.index(name)
        return {k: getattr(self, self._buffer(i, j)) for j, k in enumerate(self.keys)}

    @torch.no_grad()
    def use(self, name: str) -> AdapterBank:
        """Switch the whole model to adapter `name`: copy its factors into the wrappers in place (no reallocation)."""
        params = {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}
        for k, t in self.adapter(name).items():
            params[k].copy_(t)
        self.active = name
        return self

    def resolve_route(self, x: torch.Tensor, route: torch.Tensor | str) -> torch.Tensor:
        """`route` as a LongTensor of one adapter index per input of x, on x's device; refuses a bad route."""
        if isinstance(route, str):
            return torch.full((x.shape[0],), self.index(route), dtype=torch.long, device=x.device)
        if not isinstance(route, torch.Tensor) or route.dtype == torch.bool or route.is_floating_point() \
                or route.is_complex():
            got = str(route.dtype) if isinstance(route, torch.Tensor) else type(route).__name__
            raise ModelError(f"route must be an integer tensor of adapter indices or an adapter name, got {got}")
        if route.shape != (x.shape[0],):
            raise ModelError(f"route has shape {tuple(route.shape)}; "
                             f"it needs one adapter index per input ({x.shape[0]},)")
        if route.numel() and (route.min() < 0 or route.max() >= len(self.names)):
            bad = route[(route < 0) | (route >= len(self.names))][0].item()
            raise ModelError(f"route index {bad} out of range; "
                             f"adapters 0..{len(self.names) - 1}: {', '.join(self.names)}")
        return route.to(x.device, torch.long)

    def forward(self, x: torch.Tensor, route: torch.Tensor | str) -> torch.Tensor:
        """Outputs for x, input i run with adapter route[i] (an index into `names`) or all with adapter `route`.

        Differentiable w.r.t. x (the route is not). Does not touch the wrappers' own factors or the model's mode.
        """
        route = self.resolve_route(x, route)
        groups = [(i, (route == i).nonzero().squeeze(1)) for i in route.unique().tolist()]
        if len(groups) <= 1:
            i = groups[0][0] if groups else 0
            return functional_call(self.model, self.adapter(self.names[i]), (x,))
        outs = [functional_call(self.model, self.adapter(self.names[i]), (x[idx],)) for i, idx in groups]
        order = torch.cat([idx for _, idx in groups])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return torch.cat(outs)[inverse]  # back to input order


class SwitchingClassifier(nn.Module):
    """forward(x) = bank(x, router(x)); the router runs under no_grad and its route is kept in `last_route`."""

    def __init__(self, bank: AdapterBank, router: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.bank = bank
        self.router = router
        self.last_route: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            route = self.bank.resolve_route(x, self.router(x))
        self.last_route = route
        return self.bank(x, route)

    def route_counts(self) -> dict[str, int]:
        """How many inputs of the last forward went to each adapter (0 before any forward)."""
        if self.last_route is None:
            return {n: 0 for n in self.bank.names}
        counts = torch.bincount(self.last_route.cpu(), minlength=len(self.bank.names))
        return {n: int(c) for n, c in zip(self.bank.names, counts)}


def _param_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _seconds_per_batch(step: Callable[[int], object], n: int, repeats: int, device: torch.device) -> list[float]:
    """Seconds per batch of each repeat (one repeat = one batch through each of the n ways, in turn)."""
    step(0)  # warm-up, untimed
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(n):
            step(i)
        sync()
        times.append((time.perf_counter() - start) / n)
    return times


@torch.no_grad()
def switch_cost(bank: AdapterBank, x: torch.Tensor, repeats: int = 3) -> dict[str, float | int]:
    """Measurement only: seconds per batch and parameter bytes of three ways to serve N adapters (eval mode).

    switch_s: `bank.use(name)` + forward; merged_s: pick one of N pre-built merged full models + forward;
    reload_s: `load_state_dict` of a full checkpoint state_dict + forward. Each cycles through all N adapters;
    the mean over repeats, and each repeat's seconds per batch in `<key>_runs`.
    bank_bytes: backbone parameters + stored adapters; full_models_bytes: parameters of N merged models.
    The model's factors, active adapter and train/eval flags are restored afterwards.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ModelError(f"switch_cost repeats must be an int >= 1, got {repeats!r}")
    model, names = bank.model, bank.names
    device = next(model.parameters()).device
    params = dict(model.named_parameters())
    saved = {k: params[k].detach().clone() for k in bank.keys}
    active = bank.active
    try:
        merged, states = [], []
        for name in names:
            bank.use(name)
            merged.append(merge_lora(model).eval())
            states.append(copy.deepcopy(model.state_dict()))
        with eval_mode(model):
            runs = {"switch": _seconds_per_batch(lambda i: bank.use(names[i]).model(x), len(names), repeats, device),
                    "merged": _seconds_per_batch(lambda i: merged[i](x), len(names), repeats, device),
                    "reload": _seconds_per_batch(lambda i: (model.load_state_dict(states[i]), model(x)),
                                                 len(names), repeats, device)}
    finally:
        for k, t in saved.items():
            params[k].copy_(t)
        bank.active = active
    adapters = [t for name in names for t in bank.adapter(name).values()]
    return {
        **{f"{k}_s": sum(v) / len(v) for k, v in runs.items()},
        **{f"{k}_s_runs": v for k, v in runs.items()},
        "bank_bytes": _param_bytes(model.parameters()) + _param_bytes(adapters),
        "full_models_bytes": sum(_param_bytes(m.parameters()) for m in merged),
        "n_adapters": len(names),
        "batch_size": int(x.shape[0]),
        "repeats": repeats,
    }
