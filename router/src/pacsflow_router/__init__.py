"""pacsflow router: DICOM in, AI results (TID 1500 SR) out, nothing acknowledged ever lost."""

__version__ = "0.1.0"
