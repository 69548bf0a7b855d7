"""Moved to `loralab.budget.memory_estimate` (issue 19: one meaning per module name); this alias goes in the release
after 0.1."""
import sys
import warnings

from loralab.budget import memory_estimate as _moved

warnings.warn("loralab.budget.memory is now loralab.budget.memory_estimate; the old name goes in the release after 0.1",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
