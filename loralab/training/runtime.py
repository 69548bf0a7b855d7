"""Moved to `loralab.training.reproducibility` (issue 19: one meaning per module name, `loralab.runtime` is model
loading); this alias goes in the release after 0.1."""
import sys
import warnings

from loralab.training import reproducibility as _moved

warnings.warn("loralab.training.runtime is now loralab.training.reproducibility; the old name goes in the release "
              "after 0.1", DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
