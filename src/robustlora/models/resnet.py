"""ResNet18 that takes [0,1] images: resizing and ImageNet normalisation live inside the model.

The architecture, module names and state_dict are torchvision's ResNet18 (``conv1``, ``layer1.0.conv1``, ``fc``;
tests/test_models.py checks equality of keys and outputs against torchvision), so LoRA targets read like the study's
and torchvision's ImageNet weights load as they are. It is written out here rather than imported because importing
torchvision costs about 4 s per stage on a 2-core machine (it pulls in torch._dynamo), a tenth of a default run.
Attacks therefore work in [0,1] pixel space on the very model that was trained.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from robustlora.errors import ModelError
from robustlora.io import atomic_path, file_digest

if TYPE_CHECKING:
    from robustlora.data.dataset import Split

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_WEIGHTS_FILE = "resnet18-f37072fd.pth"  # torchvision's ResNet18_Weights.IMAGENET1K_V1
IMAGENET_WEIGHTS_URL = f"https://download.pytorch.org/models/{IMAGENET_WEIGHTS_FILE}"


class Conv2d(nn.Conv2d):
    """nn.Conv2d that runs a 3x3, stride-1, padding-1 convolution of a 1x1 feature map as the linear map of its
    centre tap — the other taps only ever see the zero padding, so outputs and gradients are those of the conv.

    Why: at 32 px input ResNet18's layer4 works on 1x1 maps, and oneDNN's weight gradient for that shape runs at
    about 3 GFLOP/s on a 2-core AVX2 CPU: half of a training step (benchmarks/bench_conv1x1.py). Same parameters,
    same state_dict.
    """

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (x.shape[-2:] == (1, 1) and self.kernel_size == (3, 3) and self.padding == (1, 1)
                and self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1
                and self.padding_mode == "zeros"):
            return F.linear(x.flatten(1), weight[:, :, 1, 1], bias)[:, :, None, None]
        return super()._conv_forward(x, weight, bias)


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> Conv2d:
    return Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: two 3x3 convs with BatchNorm, identity or 1x1-conv shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, cout, 3, stride), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv(cout, cout, 3), nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """torchvision.models.resnet18: same modules, names, initialisation scheme and forward."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = [64, 128, 256, 512]
        for i, width in enumerate(widths):
            cin, stride = (64, 1) if i == 0 else (widths[i - 1], 2)
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width)))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Classifier(ResNet18):
    """ResNet18 with on-the-fly resizing to ``input_size`` and normalisation in ``forward``."""

    def __init__(self, num_classes: int, input_size: int = 64) -> None:
        super().__init__(num_classes=num_classes)
        self.input_size = input_size
        # non-persistent: state_dicts stay torchvision-compatible
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: float N x 3 x H x W in [0,1] -> logits N x num_classes."""
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.input_size)
        return super().forward((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


def build_model(num_classes: int, input_size: int = 64) -> Classifier:
    return Classifier(num_classes, input_size)


def to_pixels(images_uint8: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 N x H x W x 3 (as stored) -> float N x 3 x H x W in [0,1] on ``device``."""
    x = images_uint8.to(device, non_blocking=True) if device is not None else images_uint8
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def prepare_input(images_uint8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 N x H x W x 3 -> the model's float input in [0,1] on ``device`` (channels_last on CUDA, for cuDNN)."""
    x = to_pixels(images_uint8, device)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


# --- prediction -----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode; restore each submodule's own train/eval flag on exit."""
    # per-module flags, not model.train(prev): a model may mix modes (e.g. frozen BatchNorm kept in eval)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off on ``device``: evaluation runs in float32 even inside a caller's torch.autocast."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256,
            device: torch.device | None = None) -> torch.Tensor:
    """Float32 logits (on the CPU) for uint8 N x H x W x 3 images, in eval mode; each module's mode is restored.

    Runs in float32 on every device (autocast off): evaluation numbers must not depend on the accelerator.
    """
    device = device or next(model.parameters()).device
    out = []
    with eval_mode(model), autocast_off(device):
        for i in range(0, len(images), batch_size):
            out.append(model(prepare_input(images[i:i + batch_size], device)).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def accuracy(model: nn.Module, split: Split, batch_size: int = 256, device: torch.device | None = None) -> float:
    """Top-1 accuracy on a split, in [0,1] (float32, eval mode); NaN for an empty split."""
    if len(split) == 0:
        return float("nan")
    logits = predict(model, split.images, batch_size, device)
    return (logits.argmax(1) == split.labels).float().mean().item()


def pick_device(preference: str = "auto", key: str = "train.device") -> torch.device:
    """cuda, then mps, then cpu for ``auto``; an explicit choice that is not available is an error naming ``key``."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"params.yaml: {key} is {preference!r} but CUDA is not available here; use auto or cpu")
    if preference == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ModelError(f"params.yaml: {key} is 'mps' but MPS is not available here; use auto or cpu")
    return torch.device(preference)


# --- backbones ------------------------------------------------------------------------------------------------------


def imagenet_weights_path() -> Path:
    """Where torchvision keeps downloaded weights ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_WEIGHTS_FILE


def load_imagenet_backbone(path: Path | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """torchvision's IMAGENET1K_V1 ResNet18 weights and the 1000 wnids of its head, sha256-verified."""
    from robustlora.data.synthetic import imagenet_wnids

    path = Path(path) if path else imagenet_weights_path()
    if not path.exists():
        raise ModelError(
            f"ImageNet weights not found at {path}; on a machine with internet the download stage fetches them "
            f"(model.weights: imagenet), or copy {IMAGENET_WEIGHTS_FILE} from {IMAGENET_WEIGHTS_URL} there"
        )
    _check_imagenet_sha(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state, imagenet_wnids()


def _check_imagenet_sha(path: Path) -> None:
    prefix = IMAGENET_WEIGHTS_FILE.split("-")[1].split(".")[0]
    digest = file_digest(path)
    if not digest.startswith(prefix):
        raise ModelError(f"{path}: sha256 {digest[:16]}... does not start with {prefix}; the file is corrupt or not {IMAGENET_WEIGHTS_FILE}")


def fetch_imagenet_weights(url: str = IMAGENET_WEIGHTS_URL) -> Path:
    """Download torchvision's ResNet18 ImageNet weights into the torch hub cache (the download stage calls this)."""
    from robustlora.data.download import fetch_archive

    path = imagenet_weights_path()
    if path.exists():
        _check_imagenet_sha(path)
        return path
    return fetch_archive(url, path, None, is_zip=False, check=_check_imagenet_sha)


def save_checkpoint(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], wnids: list[str], **meta: Any) -> None:
    """A model file: weights (on CPU) + the head's wnids + whatever describes how it was made; atomic."""
    payload = {"state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "wnids": list(wnids), **meta}
    with atomic_path(path, suffix=".pt") as tmp:
        with open(tmp, "wb") as f:  # a file object: torch names the zip's records 'archive/…', not after the
            torch.save(payload, f)  # random temp name, so the same weights give the same bytes (DVC sees no change)


def load_checkpoint(path: str | os.PathLike, fix: str = "") -> dict[str, Any]:
    """A model file as :func:`save_checkpoint` wrote it. A missing, truncated or foreign file is one ModelError line
    naming it, and ``fix`` (e.g. ``re-run `dvc repro train@lora_fc```) when given."""
    path = Path(path)
    fix = f"; {fix}" if fix else ""
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found{fix}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, pickle's and zipfile's errors for broken files
        raise ModelError(f"{path}: truncated or not a checkpoint ({load_failure(e)}){fix}") from None
    if isinstance(ckpt, dict) and "state_dict" not in ckpt and "fc.weight" in ckpt:
        raise ModelError(f"{path}: a bare state_dict without the wnids of its head; save it as {{'state_dict': ..., 'wnids': [...]}}")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "wnids" not in ckpt:
        raise ModelError(f"{path}: expected a dict with 'state_dict' and 'wnids' (as written by robustlora){fix}")
    return ckpt


def load_failure(e: BaseException) -> str:
    """Why torch.load failed, in a few words for a one-line message: the exception type and its first sentence."""
    lines = str(e).strip().splitlines()
    first = lines[0].split(". ")[0].strip() if lines else ""  # torch's zip errors go on with advice, on one line
    first = first if len(first) <= 120 else first[:117] + "..."
    return f"{type(e).__name__}: {first}" if first else f"{type(e).__name__}: the file ends early"


def adapt_head(state_dict: dict[str, torch.Tensor], head_wnids: list[str], wnids: list[str], head: str,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """Slice a pretrained head to ``wnids`` (row i <- the head's row for wnids[i]), or make a fresh one (head='new')."""
    state = dict(state_dict)
    weight, bias = state["fc.weight"], state["fc.bias"]
    if head == "new":
        fresh = nn.Linear(weight.shape[1], len(wnids))
        g = torch.Generator().manual_seed(seed)
        bound = 1.0 / weight.shape[1] ** 0.5  # nn.Linear's default init, from a seeded generator
        with torch.no_grad():
            fresh.weight.uniform_(-bound, bound, generator=g)
            fresh.bias.uniform_(-bound, bound, generator=g)
        state["fc.weight"], state["fc.bias"] = fresh.weight.detach(), fresh.bias.detach()
        return state
    index = {w: i for i, w in enumerate(head_wnids)}
    missing = [w for w in wnids if w not in index]
    if missing:
        raise ModelError(
            f"class {missing[0]} is not in the pretrained head ({len(missing)} of {len(wnids)} missing); "
            "set model.head: new to train a fresh head"
        )
    rows = torch.tensor([index[w] for w in wnids])
    state["fc.weight"], state["fc.bias"] = weight[rows].clone(), bias[rows].clone()
    return state


def load_backbone(path: str | os.PathLike, wnids: list[str], input_size: int, head: str = "pretrained",
                  seed: int = 0) -> Classifier:
    """The pretrained model (a file written by the pretrain stage) with its head adapted to ``wnids``."""
    ckpt = load_checkpoint(path, "re-run `dvc repro pretrain`")
    state = adapt_head(ckpt["state_dict"], ckpt["wnids"], wnids, head, seed)
    model = build_model(len(wnids), input_size)
    _load_state(model, state, path)
    return model


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Any) -> None:
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        bad = (result.missing_keys or result.unexpected_keys)[0]
        kind = "missing" if result.missing_keys else "unexpected"
        raise ModelError(f"{path}: weights do not fit this ResNet18 ({kind} key {bad!r})")


# the torch.nn.init functions that building a ResNet18 (and its LoRA wrappers) calls
_INIT_FUNCTIONS = ("kaiming_normal_", "kaiming_uniform_", "constant_", "uniform_", "normal_", "zeros_", "ones_")


@contextlib.contextmanager
def _weights_left_uninitialised() -> Iterator[None]:
    """Build modules without drawing their initial weights (torch.nn.init's functions return the tensor untouched),
    for a model a strict state-dict load then overwrites entirely: drawing ResNet18's 11M initial weights took 0.15 s
    of a 0.22 s load, and the attack stages load every model once per attack. The global RNG is left as it was."""
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, function in saved.items():
            setattr(nn.init, name, function)


def load_variant(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """A model written by the train stage, rebuilt and loaded, in eval mode; and its metadata.

    A missing or broken file is one ModelError line naming it; for a file where the train stage puts it
    (``<models>/<variant>/seed_<s>.pt``) the line ends with the command that rewrites it."""
    from robustlora.layout import model_variant

    variant = model_variant(Path(path))
    ckpt = load_checkpoint(path, f"re-run `dvc repro train@{variant}`" if variant else "")
    spec = ckpt.get("variant")
    if not isinstance(spec, dict):
        raise ModelError(f"{path}: not a trained variant (no 'variant' entry); was it written by the train stage?")
    from robustlora.models.adaptation import rebuild  # what each kind's architecture is lives there

    with _weights_left_uninitialised():  # every parameter and persistent buffer comes from the file (strict load)
        model = rebuild(build_model(len(ckpt["wnids"]), int(ckpt["input_size"])), spec, str(path))
    _load_state(model, ckpt["state_dict"], path)
    return model.eval(), ckpt
