"""The attack sections: ``attack`` (PGD and its convergence check), ``autoattack``, ``blackbox`` (the ART attacks that
only query the model) and ``transfer``. Every ε and step is in [0,1] pixel units; the image subsets are the first
N of the attack stage's seeded subset, so every comparison between attacks is paired."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BeforeValidator, Field, model_validator

from robustlora.config.schema import Device, EpsGrid, EpsGridOrDefault, Invalid, Number, Schema, as_tuple, off_grid


class PgdConfig(Schema):
    steps: int = Field(10, ge=1)
    rel_step_size: Number | None = Field(None, gt=0)  # step = rel_step_size·ε
    step_size: Number | None = Field(None, gt=0, le=1)  # or an absolute step, [0,1] pixels
    random_start: bool = True
    restarts: int = Field(1, ge=1)
    sanity_eps: Number | None = Field(1.0, gt=0, le=1)  # one extra, unbounded run that must reach ~100 %; null = skip
    # then, on the images cross-entropy PGD left correct, a targeted margin run towards each of the `targets` most
    # likely wrong classes, `target_steps` steps (null = steps) with the same travel (0 = the study's PGD alone)
    targets: int = Field(0, ge=0)
    target_steps: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_step_size(self) -> PgdConfig:
        if (self.rel_step_size is None) == (self.step_size is None):
            raise Invalid("", "needs exactly one of step_size (absolute, [0,1] pixels) or rel_step_size "
                          "(fraction of ε)")
        return self

    def step_for(self, eps: float) -> float:
        """The PGD step at ``eps``, both in [0,1] pixels."""
        return self.step_size if self.step_size is not None else self.rel_step_size * eps  # type: ignore[operator]


class ConvergenceConfig(Schema):
    """``attack.convergence``: PGD with ``steps_factor`` x the steps and ``restarts`` random restarts, on the first
    ``n_images`` of the attacked images at every ε; it must not fool more images than PGD did beyond the noise."""

    n_images: int = Field(50, ge=0)  # 0 = skip the check
    all_seeds: bool = True  # false: on each arm's first training seed only
    steps_factor: int = Field(10, ge=1)
    restarts: int = Field(5, ge=1)
    eps: EpsGridOrDefault = None  # values of attack.eps; None = all


class AttackConfig(Schema):
    n_images: int = Field(200, ge=1)  # a fixed seeded subset of val, the same for every arm and seed
    batch_size: int = Field(128, ge=1)
    seed: int = Field(0, ge=0)
    device: Device = "auto"
    eps: EpsGrid = tuple(k / 255 for k in (1, 2, 4, 8, 16))
    pgd: PgdConfig = PgdConfig(rel_step_size=0.25)
    convergence: ConvergenceConfig = ConvergenceConfig()
    # PGD is the costly attack: it covers all n_images at the ε of ``full_eps`` (the paper's comparisons; None = at
    # every ε), and the first ``grid_images`` of them at the other ε of the grid and the sanity ε (None = all).
    # FGSM (one gradient for the whole grid) always covers all n_images.
    full_eps: EpsGridOrDefault = None
    grid_images: int | None = Field(None, ge=1)

    def pgd_images(self, eps: float, n: int) -> int:
        """How many of the ``n`` attacked images PGD covers at ``eps`` (the first ones of the subset)."""
        if self.grid_images is None or self.full_eps is None or any(abs(eps - e) < 1e-12 for e in self.full_eps):
            return n
        return min(self.grid_images, n)

    @property
    def convergence_eps(self) -> tuple[float, ...]:
        """The ε of the convergence check (all of ``eps`` unless convergence.eps names some); () when it is off."""
        if not self.convergence.n_images:
            return ()
        return self.convergence.eps if self.convergence.eps is not None else self.eps

    @model_validator(mode="after")
    def _convergence_on_grid(self) -> AttackConfig:
        for e in self.convergence.eps or ():
            if e not in self.eps:
                raise Invalid("convergence.eps", f"must be values of attack.eps {off_grid(e, self.eps)}")
        for e in self.full_eps or ():
            if e not in self.eps:
                raise Invalid("full_eps", f"must be values of attack.eps {off_grid(e, self.eps)}")
        return self


AutoAttackName = Literal["apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square"]


class AutoAttackConfig(Schema):
    """``autoattack``: the official AutoAttack (Croce & Hein 2020, package ``pyautoattack``), L∞.

    ``version: standard`` is the authors' ensemble and settings (APGD-CE, APGD-T, FAB-T, Square with 100 iterations,
    9 target classes, 5000 queries): the setting to report, on a GPU. ``custom`` runs ``attacks`` with ``n_iter`` /
    ``n_target_classes`` / ``square_queries``, cheap enough for the CPU default. The images are the first
    ``n_images`` of the attack stage's subset, so every comparison with PGD is paired.
    """

    version: Literal["standard", "custom"] = "standard"
    attacks: Annotated[tuple[AutoAttackName, ...], BeforeValidator(as_tuple)] = ("apgd-ce", "apgd-t")  # custom only
    n_iter: int = Field(100, ge=1)  # custom only: APGD / FAB iterations
    n_target_classes: int = Field(9, ge=1)  # custom only: APGD-T / FAB-T targets (capped at classes - 1)
    square_queries: int = Field(5000, ge=1)  # custom only
    eps: EpsGrid = (8 / 255,)
    sanity_eps: Number | None = Field(None, gt=0, le=1)  # one more, unbounded ε: success must reach 100 %
    n_images: int = Field(1000, ge=1)
    batch_size: int = Field(500, ge=1)
    seed: int = Field(0, ge=0)
    device: Device = "auto"

    @model_validator(mode="after")
    def _some_attack(self) -> AutoAttackConfig:
        if not self.attacks:
            raise Invalid("attacks", "must name at least one of " + ", ".join(get_args(AutoAttackName)))
        return self


class SquareConfig(Schema):
    """``blackbox.square``: Square Attack (Andriushchenko et al. 2020), score-based, L∞, ε-bounded."""

    n_images: int = Field(100, ge=1)  # the first N of the attack stage's images
    queries: int = Field(1000, ge=1)  # query budget per image (ART max_iter)
    p_init: Number = Field(0.8, gt=0, le=1)
    restarts: int = Field(1, ge=1)
    eps: EpsGrid = (8 / 255,)
    sanity_eps: Number | None = Field(None, gt=0, le=1)


class SlowBlackboxConfig(Schema):
    """What the slow black-box attacks (HopSkipJump, Boundary, ZOO) share: their image subset and iterations."""

    all_seeds: bool = True  # false: each arm's first training seed only (the CPU default: these are slow)
    n_images: int = Field(20, ge=1)
    max_iter: int = Field(20, ge=1)


class HopSkipJumpConfig(SlowBlackboxConfig):
    """``blackbox.hopskipjump``: HopSkipJump (Chen et al. 2020), decision-based, minimises the L∞ distance."""

    max_eval: int = Field(1000, ge=1)
    init_eval: int = Field(100, ge=1)
    init_size: int = Field(100, ge=1)


class BoundaryConfig(SlowBlackboxConfig):
    """``blackbox.boundary``: the Boundary Attack (Brendel et al. 2018), decision-based, untargeted, L2."""

    max_iter: int = Field(1000, ge=1)
    delta: Number = Field(0.01, gt=0)
    epsilon: Number = Field(0.01, gt=0)
    step_adapt: Number = Field(0.667, gt=0, lt=1)
    num_trial: int = Field(25, ge=1)
    sample_size: int = Field(20, ge=1)
    init_size: int = Field(100, ge=1)


class ZooConfig(SlowBlackboxConfig):
    """``blackbox.zoo``: ZOO (Chen et al. 2017), score-based, coordinate-wise gradient estimates, untargeted, L2."""

    n_images: int = Field(10, ge=1)
    max_iter: int = Field(100, ge=1)
    binary_search_steps: int = Field(1, ge=1)
    initial_const: Number = Field(1.0, gt=0)
    learning_rate: Number = Field(0.01, gt=0)
    confidence: Number = Field(0.0, ge=0)
    nb_parallel: int = Field(128, ge=1)
    use_resize: bool = False
    use_importance: bool = False
    variable_h: Number = Field(1e-4, gt=0)


BLACKBOX_ATTACKS = ("square", "hopskipjump", "boundary", "zoo")


class BlackboxConfig(Schema):
    """``blackbox``: attacks that only query the model (Adversarial Robustness Toolbox), one DVC stage each.

    The decision-based and ZOO attacks minimise a distance; success at ε means an adversarial input within the
    L∞ ε-ball was found, and the query count is the first query that found one. ``eps`` (default: attack.eps) is
    their grid; Square has its own, since it runs once per ε.
    """

    batch_size: int = Field(256, ge=1)  # model queries per forward pass
    seed: int = Field(0, ge=0)
    device: Device = "auto"
    square: SquareConfig = SquareConfig()
    hopskipjump: HopSkipJumpConfig = HopSkipJumpConfig()
    boundary: BoundaryConfig = BoundaryConfig()
    zoo: ZooConfig = ZooConfig()


class TransferConfig(Schema):
    """``transfer``: PGD examples crafted on one model (a surrogate) and evaluated on every other arm and seed.

    Surrogates are variants (default: every variant, the unadapted ``pretrained`` one the natural choice); each is
    attacked through its first training seed's model with the attack stage's PGD settings, at ``eps``.
    """

    surrogates: Annotated[tuple[str, ...] | None, BeforeValidator(as_tuple)] = None  # None = every variant
    eps: EpsGrid = (8 / 255,)
    n_images: int = Field(200, ge=1)  # the first N of the attack stage's images

