"""DICOM in: the C-STORE SCP, the durable spool and study assembly. Never waits on analysis."""
