"""Errors of the ledger, all subclasses of :class:`appliance.errors.ApplianceError`.

Whose fault it is decides the class:

- :class:`TamperError` (exit 1): the stored evidence contradicts itself or its signatures
  (damage inside signed history, a forged or rolled-back checkpoint, an edited blob). It is a
  *finding* about the ledger, never something the ledger code repairs.
- :class:`LedgerUnavailable`: the writer has stopped (an fsync error, a closed writer); the
  proxy must fail closed.
- :class:`CanonicalError`: a producer passed a value that has no canonical JSON form (a float,
  a non-string key); the producer's bug, raised at ``append`` time.
- :class:`LedgerError`: anything else that stops a ledger operation (missing files, bad
  arguments, a locked directory); exit 2, "could not do what was asked".
"""

from __future__ import annotations

from appliance.errors import ApplianceError


class LedgerError(ApplianceError):
    """A ledger operation could not be carried out (exit 2)."""


class TamperError(LedgerError):
    """The ledger contradicts itself or its signatures: tampering or corruption (exit 1).

    ``findings`` lists every problem found, each a sentence naming the entry or checkpoint.
    """

    exit_code = 1

    def __init__(self, message: str, findings: list[str] | None = None) -> None:
        self.findings = list(findings) if findings else [message]
        super().__init__(message)


class ProofError(LedgerError):
    """A Merkle proof does not verify, or its parameters are impossible (exit 1; raised by
    :mod:`appliance.ledger.merkle`)."""

    exit_code = 1


class LedgerUnavailable(LedgerError):
    """The ledger writer cannot record (stopped or failed); callers must fail closed."""


class CanonicalError(LedgerError):
    """A value cannot be written as canonical JSON (float, NaN, non-string key, other type)."""
