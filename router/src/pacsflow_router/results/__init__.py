"""Results out: the TID 1500 SR, the durable outbox, the C-STORE SCU and the audit log."""
