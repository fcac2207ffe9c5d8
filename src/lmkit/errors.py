"""The one exception a user can cause. The CLI prints its message on one line and exits non-zero."""


class LmkitError(Exception):
    """Bad input from the user: a missing file, a wrong config value, a corrupt checkpoint."""
