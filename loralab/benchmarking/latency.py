"""Moved to `loralab.timing.latency` (issue 19: one meaning per module name); this alias goes in the release
after 0.1."""
import sys
import warnings

from loralab.timing import latency as _moved

warnings.warn("loralab.benchmarking.latency is now loralab.timing.latency; the old name goes in the release after 0.1",
              DeprecationWarning, stacklevel=2)
if __name__ == "__main__":                  # python -m loralab.benchmarking.latency still runs the study
    raise SystemExit(_moved.main())
sys.modules[__name__] = _moved
