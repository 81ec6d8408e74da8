"""The clinical edges around the router: HL7 orders, Modality Worklist, MPPS, worklist priority and webhooks."""
