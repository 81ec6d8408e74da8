"""pacsflow operator: makes ``DicomRouter``, ``TritonCluster`` and ``AIUseCase`` resources real.

Data path, file by file: ``resources/v1alpha1.py`` (the API, single source of the CRD schema) ->
``crdgen.py`` (models -> CRD YAML) -> ``reconcile/`` (pure: resource -> desired children and status)
-> ``handlers/`` (kopf events -> reconcile -> ``kube.py``, the one module that talks to the API).
"""

GROUP = "pacsflow.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
