"""The error type a user fixes by editing a config field (printed on one line, exit code 2)."""


class ConfigError(ValueError):
    """A configuration problem the user fixes by editing a field."""
