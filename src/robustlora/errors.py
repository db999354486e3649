"""The one family of errors robustlora raises for bad input: params, data, models, downloads, validation, tracking.

Each message is one line that names the culprit (params key, file, layer) and the fix. Stage commands catch
:class:`RobustloraError` only and print that line; anything else is a bug and keeps its traceback. The subclasses
are also ``ValueError``/``RuntimeError`` where callers of the library have long caught those.
Torch-free, so ``--help`` and the params schema import it cheaply.
"""

from __future__ import annotations


class RobustloraError(Exception):
    """Bad input to robustlora, with a one-line message naming the culprit."""


class ParamError(RobustloraError, ValueError):
    """A params.yaml value that is missing, of the wrong type or out of range."""


class DataError(RobustloraError, ValueError):
    """A dataset archive, prepared folder or manifest that cannot be used; the message names the file or member."""


class ModelError(RobustloraError, ValueError):
    """A checkpoint, head or LoRA target that does not fit; the message names the file, class or layer."""


class DownloadError(RobustloraError, RuntimeError):
    """A download that failed for good (offline, bad checksum, server refused)."""


class ValidationError(RobustloraError, ValueError):
    """Data that the validation suite refuses; the message summarises the failed expectations."""


class TrackingError(RobustloraError, RuntimeError):
    """The MLflow tracking store cannot be reached or used."""


class OutputError(RobustloraError):
    """An output that cannot be written (disk full, read-only, no permission); the message names the path."""
