"""The ``data`` section: which archive the study uses (Tiny ImageNet or the offline synthetic miniature), which
classes and how many images per class, and the holdout share kept for model selection."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from robustlora.config.schema import Invalid, Number, Schema, Text

_CLASS = re.compile(r"[^/\\\s]+")  # one folder name of the archive, e.g. a wnid


def _md5(value: Any) -> Any:
    if value is not None and not (isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{32}", value)):
        raise ValueError("must be 32 hex digits or null")
    return value.lower() if value else None


def _classes(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError("must be in [1, inf]")
    # a class is a folder name of the archive: a wnid like n01443537, or a user's own name (no '/')
    bad = [c for c in value if not (isinstance(c, str) and _CLASS.fullmatch(c))] if isinstance(value, list) else [value]
    if not value or bad:
        raise Invalid("", "must be a number of classes or a non-empty list of class folder names like n01443537",
                      (bad or [value])[0])
    if len(set(value)) != len(value):
        raise ValueError("must not repeat a wnid")
    return tuple(value)


class SyntheticConfig(Schema):
    """``data.synthetic``: the offline miniature (see :mod:`robustlora.data.synthetic`)."""

    seed: int = Field(0, ge=0)
    image_size: int = Field(64, ge=16, le=512)
    source_classes: int = Field(16, ge=2, le=256)
    target_classes: int = Field(10, ge=2, le=256)  # a subset of the source classes, drawn with a domain shift
    source_train_per_class: int = Field(150, ge=2)
    source_val_per_class: int = Field(30, ge=1)
    target_train_per_class: int = Field(100, ge=2)
    target_val_per_class: int = Field(50, ge=1)
    test_images: int = Field(20, ge=0)
    shift: Number = Field(1.0, ge=0, le=2)  # domain-shift strength (0 = the source domain's look)

    @model_validator(mode="after")
    def _target_within_source(self) -> SyntheticConfig:
        if self.target_classes > self.source_classes:
            raise Invalid("target_classes", f"must be <= source_classes ({self.source_classes})", self.target_classes)
        return self


class DataConfig(Schema):
    source: Literal["synthetic", "tiny-imagenet"] = "synthetic"
    url: Text = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"  # or a local path / file:// URL
    md5: Annotated[str | None, BeforeValidator(_md5)] = "90528d7ca1a48142e341f4ef8d21d0de"
    classes: Annotated[int | tuple[str, ...], BeforeValidator(_classes)] = 10  # the first N wnids, or wnids
    train_per_class: int | None = Field(None, ge=1)  # null = all
    val_per_class: int | None = Field(None, ge=1)
    holdout: Number = Field(0.1, ge=0, lt=0.5)  # share of each class's training images kept for model selection
    seed: int = Field(0, ge=0)
    synthetic: SyntheticConfig = SyntheticConfig()
