"""The router's error hierarchy: one root, messages that say what to do."""


class PacsflowError(Exception):
    """Root of every error the router raises on purpose."""


class ConfigError(PacsflowError):
    """The routing config is invalid; the message names the key and the fix."""


class AuditSchemaError(ConfigError):
    """The audit database was written by an older pacsflow; the router refuses to start (exit 2) rather than fail on
    its first insert."""


class SpoolFullError(PacsflowError):
    """The spool's disk is above its watermark; the C-STORE is answered 0xA700."""


class UnparseableInstanceError(PacsflowError):
    """Received data cannot be parsed as a DICOM instance; answered with a 0xC000-range status."""


class InferenceError(PacsflowError):
    """The model could not be run for a study (missing model/version, backend error)."""


class InferenceUnavailableError(InferenceError):
    """The inference backend is down or the model not ready: retry later, keep the study queued."""


class ModelNotFoundError(InferenceError):
    """The model name/version does not exist in the repository: a permanent, audited error."""


class ExportError(PacsflowError):
    """A result could not be delivered; the outbox keeps it and retries."""
