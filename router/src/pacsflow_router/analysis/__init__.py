"""From a study to model findings: series matching, volume loading, preprocessing, inference, findings.

Imports neither :mod:`pacsflow_router.ingest` nor :mod:`pacsflow_router.results` (import-linter layers).
"""
