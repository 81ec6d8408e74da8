"""The ``pacsflow`` command: developer and operator tools (the router itself is ``pacsflow-router``).

Subcommands are imported lazily so that ``pacsflow phantom`` does not load ONNX Runtime or DALI.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> module with ``main(argv: list[str]) -> int``
SUBCOMMANDS = {
    "phantom": ("pacsflow_router.models.phantom", "write synthetic head-CT phantom studies with ground truth"),
    "radiograph": ("pacsflow_router.models.radiograph_phantom",
                   "write synthetic chest radiographs (DX/CR) with ground truth"),
    "model-repository": ("pacsflow_router.models.repository", "render/check the deployable Triton model repository"),
    "api-key": ("pacsflow_router.results.apikey_command", "create/rotate/revoke results API keys (hashed at rest)"),
    "ground-truth": ("pacsflow_router.results.groundtruth_command",
                     "import ground-truth labels (accession -> finding present/absent) from a CSV file"),
    "audit": ("pacsflow_router.results.audit_command", "verify the tamper-evident audit chain (audit verify)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print("usage: pacsflow <command> [options]\n\ncommands:")
        for name, (_, doc) in SUBCOMMANDS.items():
            print(f"  {name:18} {doc}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
