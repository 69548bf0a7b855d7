"""Moved to `loralab.timing.tensor_memory` (issue 19: one meaning per module name); this alias goes in the release
after 0.1."""
import sys
import warnings

from loralab.timing import tensor_memory as _moved

warnings.warn("loralab.benchmarking.memory is now loralab.timing.tensor_memory; the old name goes in the release after 0.1",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
