import math

import pytest
import torch

from robustlora.data.dataset import Split
from robustlora.models.resnet import (
    ModelError, accuracy, build_model, load_backbone, load_checkpoint, load_imagenet_backbone,
    load_variant, predict, save_checkpoint,
)

SOURCE = ["n01440764", "n01443537", "n01484850", "n01491361"]


def test_model_takes_pixels_in_0_1_and_resizes_inside():
    torch.manual_seed(0)
    model = build_model(3, input_size=32).eval()
    x = torch.rand(2, 3, 64, 64)
    ref = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        a, b = model(x), model(ref)
    assert a.shape == (2, 3)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # normalisation is inside: the raw torchvision forward on normalised input gives the same logits
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        c = super(type(model), model).forward((ref - mean) / std)
    torch.testing.assert_close(b, c)
    # torchvision-compatible state dict (normalisation buffers are not saved)
    assert "mean" not in model.state_dict() and "fc.weight" in model.state_dict()


def test_head_is_sliced_by_wnid(tmp_path):
    torch.manual_seed(0)
    source = build_model(len(SOURCE))
    save_checkpoint(tmp_path / "b.pt", source.state_dict(), SOURCE)
    target = ["n01491361", "n01443537"]
    model = load_backbone(tmp_path / "b.pt", target, input_size=32)
    torch.testing.assert_close(model.fc.weight[0], source.fc.weight[3])
    torch.testing.assert_close(model.fc.bias[1], source.fc.bias[1])
    torch.testing.assert_close(model.conv1.weight, source.conv1.weight)


def test_missing_class_is_an_error_unless_head_is_new(tmp_path):
    source = build_model(len(SOURCE))
    save_checkpoint(tmp_path / "b.pt", source.state_dict(), SOURCE)
    with pytest.raises(ModelError, match="class n09999999 is not in the pretrained head.*model.head: new"):
        load_backbone(tmp_path / "b.pt", ["n01443537", "n09999999"], input_size=32)
    a = load_backbone(tmp_path / "b.pt", ["n01443537", "n09999999"], input_size=32, head="new", seed=3)
    b = load_backbone(tmp_path / "b.pt", ["n01443537", "n09999999"], input_size=32, head="new", seed=3)
    assert a.fc.weight.shape == (2, 512)
    torch.testing.assert_close(a.fc.weight, b.fc.weight)  # seeded
    assert not torch.allclose(a.fc.weight[0], source.fc.weight[1])


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(ModelError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save(build_model(2).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ModelError, match="bare.pt: a bare state_dict without the wnids"):
        load_checkpoint(tmp_path / "bare.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ModelError, match="junk.pt: truncated or not a checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    save_checkpoint(tmp_path / "small.pt", {"fc.weight": torch.zeros(2, 512), "fc.bias": torch.zeros(2)}, SOURCE[:2])
    with pytest.raises(ModelError, match="weights do not fit this ResNet18"):
        load_backbone(tmp_path / "small.pt", SOURCE[:2], 32)


def test_imagenet_weights_missing_or_corrupt(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ModelError, match=r"ImageNet weights not found at .*resnet18-f37072fd.pth"):
        load_imagenet_backbone()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(b"not the weights")
    with pytest.raises(ModelError, match="does not start with f37072fd"):
        load_imagenet_backbone()


def test_variant_round_trip(tmp_path):
    torch.manual_seed(0)
    from robustlora.models.lora import apply_lora

    model = apply_lora(build_model(3, 32), ["fc", "conv1"], rank=2, alpha=0.5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.normal_()
    save_checkpoint(tmp_path / "v.pt", model.state_dict(), SOURCE[:3], input_size=32,
                    variant={"adaptation": "lora", "targets": ["fc", "conv1"], "rank": 2, "alpha": 0.5})
    loaded, meta = load_variant(tmp_path / "v.pt")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), loaded(x))
    assert not loaded.training and meta["wnids"] == SOURCE[:3]


def test_unavailable_device_names_the_param_key():
    from robustlora.models.resnet import pick_device

    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match=r"params.yaml: attack.device is 'cuda' but CUDA is not available"):
            pick_device("cuda", "attack.device")
    assert pick_device("auto").type in {"cpu", "cuda", "mps"}


def test_model_weights_typo_is_named(tmp_path):
    from robustlora.config import ModelConfig, TrainConfig
    from robustlora.training.study import pretrain_backbone

    with pytest.raises(ModelError, match=r"model.weights 'imagnet' is neither pretrain, imagenet nor an existing"):
        pretrain_backbone(ModelConfig(weights="imagnet"), TrainConfig(), None, tmp_path / "b.pt")
    source = build_model(len(SOURCE))
    save_checkpoint(tmp_path / "mine.pt", source.state_dict(), SOURCE)
    metrics, history = pretrain_backbone(ModelConfig(weights=str(tmp_path / "mine.pt")), TrainConfig(), None,
                                         tmp_path / "b.pt")
    assert metrics == {"source": "checkpoint", "classes": len(SOURCE)} and history == []
    assert load_checkpoint(tmp_path / "b.pt")["wnids"] == SOURCE


def test_predict_is_float32_eval_mode_and_restores_modes():
    torch.manual_seed(0)
    model = build_model(3, input_size=16).train()
    model.bn1.eval()  # a mixed-mode model (frozen BatchNorm) must come back exactly as it was
    images = torch.randint(0, 256, (10, 16, 16, 3), dtype=torch.uint8)
    stats = model.bn1.running_mean.clone(), model.layer1[0].bn1.running_mean.clone()
    logits = predict(model, images, batch_size=4)
    assert logits.dtype == torch.float32 and logits.shape == (10, 3) and logits.device.type == "cpu"
    assert model.training and not model.bn1.training and model.layer1[0].bn1.training
    # eval mode: BatchNorm running statistics untouched, and the logits are the eval-mode forward's
    assert torch.equal(model.layer1[0].bn1.running_mean, stats[1]) and torch.equal(model.bn1.running_mean, stats[0])
    with torch.no_grad():
        reference = model.eval()(images.permute(0, 3, 1, 2).float() / 255)
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
    assert predict(model, images[:0]).numel() == 0


def test_predict_ignores_a_callers_autocast():
    torch.manual_seed(0)
    model = build_model(3, input_size=16)
    images = torch.randint(0, 256, (6, 16, 16, 3), dtype=torch.uint8)
    plain = predict(model, images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = predict(model, images)
        assert model.eval()(images.permute(0, 3, 1, 2).float() / 255).dtype == torch.bfloat16  # autocast is on
    assert inside.dtype == torch.float32 and torch.equal(inside, plain)


def test_accuracy_counts_top1_and_is_nan_when_empty():
    torch.manual_seed(0)
    model = build_model(3, input_size=16)
    images = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8)
    pred = predict(model, images).argmax(1)
    labels = torch.where(torch.arange(8) < 6, pred, (pred + 1) % 3)  # the last two wrong
    assert accuracy(model, Split(images, labels), batch_size=3) == pytest.approx(6 / 8)
    assert math.isnan(accuracy(model, Split(images[:0], labels[:0])))


def test_centre_tap_conv_equals_the_convolution_on_1x1_maps():
    """models.Conv2d's linear shortcut gives the conv's output and gradients (zero for the taps that see padding)."""
    from torch import nn

    from robustlora.models.resnet import Conv2d

    torch.manual_seed(0)
    plain = nn.Conv2d(8, 6, 3, padding=1, bias=True)
    fast = Conv2d(8, 6, 3, padding=1, bias=True)
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(5, 8, 1, 1, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    out, out2 = plain(x), fast(x2)
    torch.testing.assert_close(out2, out)
    g = torch.randn_like(out)
    out.backward(g)
    out2.backward(g)
    torch.testing.assert_close(x2.grad, x.grad)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad)
    torch.testing.assert_close(fast.bias.grad, plain.bias.grad)
    off_centre = fast.weight.grad.clone()
    off_centre[:, :, 1, 1] = 0
    assert off_centre.abs().sum() == 0 and fast.weight.grad[:, :, 1, 1].abs().sum() > 0
    # any other shape takes the ordinary convolution
    y = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(fast(y), plain(y))


def test_classifier_uses_the_centre_tap_conv_and_keeps_torchvision_names():
    from torch import nn
    from torchvision.models import resnet18

    from robustlora.models.resnet import Conv2d

    model = build_model(10, 32)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is Conv2d for m in convs)
    reference = resnet18(num_classes=10)
    assert model.state_dict().keys() == reference.state_dict().keys()
    # our ResNet18 is torchvision's: same logits with the same weights, at 32 px (layer4 on 1x1 maps) and 64 px
    reference.load_state_dict(model.state_dict())
    for size in (32, 64):
        model.input_size = size
        x = torch.rand(3, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(x), reference.eval()((x - model.mean) / model.std),
                                       rtol=1e-4, atol=1e-5)
    # and the same initialisation: from the same seed, a fresh model has torchvision's very weights
    torch.manual_seed(7)
    fresh = build_model(10, 32).state_dict()
    torch.manual_seed(7)
    ref_fresh = resnet18(num_classes=10).state_dict()
    assert all(torch.equal(fresh[k], ref_fresh[k]) for k in ref_fresh)


def test_checkpoint_bytes_depend_only_on_the_content(tmp_path):
    """Atomic writes go through random temp names; the file must not carry them (DVC would see a change)."""
    torch.manual_seed(0)
    state = build_model(3, 16).state_dict()
    save_checkpoint(tmp_path / "a.pt", state, SOURCE[:3], input_size=16)
    save_checkpoint(tmp_path / "b.pt", state, SOURCE[:3], input_size=16)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
