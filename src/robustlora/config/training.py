"""The sections of the two training stages: ``model`` (the backbone), ``pretrain`` and ``train`` (the loop), and
adversarial fine-tuning (``train.adversarial`` or a variant's ``adversarial``). ε and steps in [0,1] pixel units."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from robustlora.config.schema import Device, Number, Schema, Text
from robustlora.formatting import format_eps


def adversarial_input(value: Any) -> Any:
    """``adversarial: true`` = the default settings ({}); ``false`` / null = standard training (None)."""
    if value is True:
        return {}
    return None if value is False else value


def _seeds(value: Any) -> Any:
    ok = isinstance(value, (list, tuple)) and value and len(set(value)) == len(value)
    if not ok or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        raise ValueError("must be a non-empty list of distinct integers >= 0")
    return tuple(value)


class ModelConfig(Schema):
    arch: Literal["resnet18"] = "resnet18"
    weights: Text = "pretrain"  # pretrain (on the synthetic source) | imagenet | a checkpoint path
    head: Literal["pretrained", "new"] = "pretrained"  # new: a fresh head, trained in every variant
    input_size: int = Field(64, ge=16, le=512)


class AdversarialSettings(Schema):
    """Adversarial fine-tuning (``train.adversarial`` or a variant's ``adversarial``): PGD adversarial training
    (Madry et al. 2018) or TRADES (Zhang et al. 2019), L∞, ε and steps in [0,1] pixel units. The training examples
    are crafted with the model in eval mode (BatchNorm running statistics, as our attacks use them)."""

    method: Literal["pgd", "trades"] = "pgd"
    eps: Number = Field(4 / 255, gt=0, le=1)
    steps: int = Field(2, ge=1)
    rel_step_size: Number | None = Field(None, gt=0)  # step = rel_step_size·ε; null = 2.5/steps (Madry's travel)
    random_start: bool = True  # pgd only (TRADES starts at x + 0.001·N(0, 1))
    beta: Number = Field(6.0, ge=0)  # TRADES only: weight of KL(p(x) ‖ p(x'))
    select: Literal["robust", "clean"] = "robust"  # the best epoch by holdout PGD accuracy (Rice et al. 2020) or clean
    # select: robust scores the holdout with multi-step PGD, not the training attack: a 1-step training attack's
    # accuracy is what rises during catastrophic overfitting while PGD accuracy collapses (Wong et al. 2020)
    select_steps: int = Field(10, ge=1)  # PGD steps of the holdout attack that selects the best epoch
    select_rel_step_size: Number = Field(0.25, gt=0)  # its step = select_rel_step_size·ε (random start, best iterate)

    @property
    def step_size(self) -> float:
        """The inner attack's step in [0,1] pixels."""
        return (self.rel_step_size if self.rel_step_size is not None else 2.5 / self.steps) * self.eps

    @property
    def label(self) -> str:
        """'PGD-AT ε=4/255, 2 steps of 1.25·ε, random start' or 'TRADES β=6, ε=4/255, 2 steps of 1.25·ε'."""
        head = "PGD-AT" if self.method == "pgd" else f"TRADES β={self.beta:g},"
        start = ", random start" if self.method == "pgd" and self.random_start else ""
        return (f"{head} ε={format_eps(self.eps)}, {self.steps} step{'s' if self.steps > 1 else ''} of "
                f"{self.step_size / self.eps:.3g}·ε{start}")


AdversarialOption = Annotated[AdversarialSettings | None, BeforeValidator(adversarial_input)]


class _Loop(Schema):
    """The training loop shared by ``pretrain`` and ``train``."""

    momentum: Number = Field(0.9, ge=0, lt=1)
    # cosine: to 0 at max_epochs (the cap decides when it converges); step: ×gamma every step_size epochs;
    # plateau: constant after warm-up, ×gamma after decay_patience epochs without a better holdout score (early
    # stopping, not the cap, ends the run)
    schedule: Literal["cosine", "step", "plateau"] = "cosine"
    step_size: int = Field(10, ge=1)  # epochs between decays, for schedule: step
    gamma: Number = Field(0.1, gt=0, le=1)  # the decay factor of schedule step and plateau
    batch_size: int = Field(64, ge=1)
    max_epochs: int = Field(50, ge=1)
    warmup_epochs: int = Field(0, ge=0)  # linear lr warm-up before the decay (fine-tuning: keeps epoch 1 gentle)
    patience: int = Field(5, ge=1)  # epochs without a better holdout accuracy before stopping
    crop_padding: int = Field(4, ge=0, le=64)
    flip: bool = True
    device: Device = "auto"  # auto = cuda, then mps, then cpu
    eval_batch_size: int = Field(256, ge=1)
    decay_patience: int = Field(2, ge=1)  # schedule plateau: epochs without a better holdout score before lr ×gamma


class TrainConfig(_Loop):
    """One training run, as :func:`robustlora.training.loop.fit` takes it: ``pretrain``, or
    :meth:`~robustlora.config.params.Params.fit_config`."""

    lr: Number = Field(0.01, gt=0)
    weight_decay: Number = Field(5e-4, ge=0)
    seed: int = Field(0, ge=0)
    adversarial: AdversarialOption = None  # adversarial fine-tuning (training.loop.fit crafts the examples per batch)


class TrainLoopConfig(_Loop):
    """``train``: the loop of every adapted arm; lr and weight_decay come from the variant's kind."""

    seeds: Annotated[tuple[int, ...], BeforeValidator(_seeds)] = (0,)  # every arm is trained once per seed
    adversarial: AdversarialOption = None  # every adapted arm trains adversarially (a variant's own setting wins)

