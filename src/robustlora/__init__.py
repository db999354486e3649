"""robustlora: does LoRA make an image classifier more robust to adversarial attacks?

The core modules (data, models, lora, train, attacks, metrics) import only torch,
torchvision, numpy and pandas, so they run in a notebook or on a bare GPU machine.
Tracking (MLflow) and validation (Great Expectations) live in their own modules.
"""

__version__ = "0.1.0"
