"""The one base error of the appliance.

Library code raises subclasses of :class:`ApplianceError`; only the CLI entry point catches
them, prints the message and exits with :attr:`ApplianceError.exit_code`. Anything else that
escapes is a bug in the appliance and is reported as such.
"""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error the appliance raises on purpose.

    ``exit_code`` is what the CLI exits with when this error ends a command: 2 means
    "could not do what was asked" (bad input, missing file); subclasses that report a
    finding (tampering) use 1.
    """

    exit_code = 2


class ConfigError(ApplianceError):
    """The configuration is invalid. ``where`` names the key and line when known."""

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)
