"""Statistics a reviewer accepts: Wilson, McNemar, Holm from scipy / statsmodels; a hierarchical bootstrap of one arm;
ONE paired test of two arms over images and training seeds together, whose interval and p-value agree.

Conventions shared by every function:
- per-image outcomes come as an (S, N) array: S training seeds of one arm, N images (the same images for every arm
  and seed); bool outcomes count as 0/1;
- ``mask`` is an optional (N,) bool array selecting the images a statistic is computed over (None = all);
- an arm's value is the mean over its seeds of the mean over the masked images;
- intervals are two-sided at ``confidence`` (0.95 = a 95 % interval) unless ``sided`` says otherwise; the same
  inputs (and ``seed``) always give the same numbers.

One arm (:func:`hierarchical_mean`, :func:`share_mean`): percentile intervals of ``n_boot`` seeded two-level
resamples (images, and independently seeds; ``n_boot=0`` gives NaN bounds); a share's interval always contains the
Wilson interval of the mean share on the smallest per-seed count of images it is over, so it is never zero width.

Two arms on the same images (:func:`paired_test`): see its docstring (Tango's score interval for one seed, its
design-effect extension with a crossed image x seed variance for several).
"""

from __future__ import annotations

from robustlora.stats._base import SIDES
from robustlora.stats.intervals import Estimate, hierarchical_mean, seed_summary, share_mean, wilson_interval
from robustlora.stats.paired import (PairedTest, holm_adjust, majority_vote, mcnemar_exact, mcnemar_paired,
                                     mde_share, paired_pvalues, paired_test, tango_interval)

__all__ = ["Estimate", "PairedTest", "SIDES", "wilson_interval", "mcnemar_exact", "holm_adjust", "majority_vote",
           "mcnemar_paired", "tango_interval", "paired_test", "paired_pvalues", "mde_share", "hierarchical_mean",
           "share_mean", "seed_summary"]

