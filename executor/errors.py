"""The root of the executor's errors, under Forge's one root of user-facing errors."""

from forgefile.diagnostics import ForgeError


class ExecutorError(ForgeError):
    """The host could not do what a plan asked; the message says what and where."""
