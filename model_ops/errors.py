"""Errors that carry what went wrong, what to do about it, and the command-line exit code.

Every error the library raises on purpose derives from :class:`ModelOpsError`; anything else is a bug.
The command line maps ``exit_code`` straight to the process exit status (0 ok, 1 not found or check failed,
2 usage, bad input or a refused request).
"""

from __future__ import annotations


class ModelOpsError(Exception):
    """Base class. ``hint`` tells the user what to do next; it is printed on its own line."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(ModelOpsError):
    """Bad input: a malformed reference, an unreadable file, invalid JSON, an unknown stage."""


class NotFoundError(ModelOpsError):
    """A model, version, alias or blob that does not exist."""

    exit_code = 1


class PolicyError(ModelOpsError):
    """The registry policy forbids the request (transition not allowed, gate not met)."""


class PermissionDeniedError(PolicyError):
    """The actor's role does not grant the verb. Always recorded in the audit log."""


class IntegrityError(ModelOpsError):
    """Stored bytes do not match their digest, or a manifest's signature is missing or wrong."""

    exit_code = 1


class ConflictError(ModelOpsError):
    """Too many concurrent writers: the write was retried and still lost the race. Nothing was written."""

    exit_code = 1


class InstanceUnavailableError(ModelOpsError):
    """The Dagster instance's database could not be reached or refused the connection; nothing was run, so running
    the command again once it is back is safe."""

    exit_code = 1
