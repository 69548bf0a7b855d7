"""Moved to `loralab.core.targeting` (issue 19: the module-name rules sit below surgery, quantization and models,
which all read them, so the three packages form no cycle); this alias goes in the release after 0.1."""
import sys
import warnings

from loralab.core import targeting as _moved

warnings.warn("loralab.surgery.targeting is now loralab.core.targeting; the old name goes in the release after 0.1",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = _moved
