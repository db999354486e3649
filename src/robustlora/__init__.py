"""robustlora: does LoRA make an image classifier more robust to adversarial attacks?

Subpackages in the order the data flows, each importing only from those before it (tests/test_layers.py):
config -> data -> models -> attacks -> training -> evaluation -> defences -> analysis -> reporting -> tracking,
over the base modules errors, io, layout, formatting and stats. Everything but ``tracking`` (MLflow, DVC) and
``data.validation`` (Great Expectations) imports only torch, numpy, pandas and pydantic, so it runs in a
notebook or on a bare GPU machine.
"""

__version__ = "0.1.0"
