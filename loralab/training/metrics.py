"""Moved to `loralab.training.scores` (issue 19: one meaning per module name); this alias goes in the release
after 0.1."""
import sys
import warnings

from loralab.training import scores as _moved

warnings.warn("loralab.training.metrics is now loralab.training.scores; the old name goes in the release after 0.1",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
