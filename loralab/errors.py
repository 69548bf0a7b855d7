"""One exception type for every error meant for the user: a one-line message naming the problem and the fix."""


class LoraLabError(ValueError):
    """Bad input from the user (config, file, model, data). The CLI prints it as one line and exits 2."""
