"""The study's numbers from per-image results: estimates, paired comparisons, findings, checks.

Layers above (reporting, the stages) import from ``robustlora.analysis``; the modules inside are its own business.
"""

from robustlora.analysis.results import *  # noqa: F401,F403
from robustlora.analysis.results import __all__  # noqa: F401
