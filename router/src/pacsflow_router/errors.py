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


class Hl7Error(PacsflowError):
    """An HL7 v2 message was refused; the ACK carries :attr:`ack_code` and an ERR segment.

    Attributes
    ----------
    ack_code
        ``AE`` (the message is malformed) or ``AR`` (unsupported message type or version).
    error_code
        HL7 table 0357 condition code: 100 segment sequence error, 101 required field missing, 102 data type error,
        103 table value not found, 200 unsupported message type, 203 unsupported version ID, 207 application error.
    location
        ERR-2 error location (``OBR^1^18``; empty when no field can be named). The message text never holds a
        field's value.
    """

    def __init__(self, message: str, *, ack_code: str, error_code: int, location: str = "") -> None:
        super().__init__(message)
        self.ack_code = ack_code
        self.error_code = error_code
        self.location = location


class Hl7MessageError(Hl7Error):
    """The message is malformed (no MSH, bad encoding characters, a required field missing or of the wrong type):
    answered AE with ERR naming the field."""

    def __init__(self, message: str, *, error_code: int, location: str = "") -> None:
        super().__init__(message, ack_code="AE", error_code=error_code, location=location)


class Hl7UnsupportedError(Hl7Error):
    """The message type or HL7 version is not one pacsflow accepts: answered AR (200 or 203)."""

    def __init__(self, message: str, *, error_code: int, location: str = "") -> None:
        super().__init__(message, ack_code="AR", error_code=error_code, location=location)


class MllpFramingError(PacsflowError):
    """Bytes on an MLLP connection are not <VT> message <FS><CR>: the connection is closed."""
