"""Import alias, kept for one release: what this module held moved to loralab.runtime (issue 19).
`loralab.from_pretrained` is unchanged; new code imports from loralab.runtime."""
from loralab.runtime.folder import adapter_task_and_labels, resolve_base
from loralab.runtime.load import from_pretrained

__all__ = ["adapter_task_and_labels", "from_pretrained", "resolve_base"]
