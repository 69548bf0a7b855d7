"""Moved to `loralab.serving.telemetry` (issue 19: one meaning per module name); this alias goes in the release
after 0.1."""
import sys
import warnings

from loralab.serving import telemetry as _moved

warnings.warn("loralab.serving.metrics is now loralab.serving.telemetry; the old name goes in the release after 0.1",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
