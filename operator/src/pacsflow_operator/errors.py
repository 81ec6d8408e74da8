"""The operator's error hierarchy: one root, messages that say what to do."""


class OperatorError(Exception):
    """Root of every error the operator raises on purpose."""


class InvalidSpecError(OperatorError):
    """A resource's spec cannot be rendered; the message names the field and the fix (permanent)."""


class KubeApiError(OperatorError):
    """The Kubernetes API refused or failed a request; retried by the handler (temporary)."""
