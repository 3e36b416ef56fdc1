"""Errors shared across layers."""


class SpecError(ValueError):
    """A spec file that cannot run; the message names the file, the field and the value."""
