"""kopf handlers (the operator's only kopf edge); importing this package registers them.

``kopf run -m pacsflow_operator.handlers`` and ``pacsflow-operator`` both load exactly this.
"""

from . import indexes, lifecycle, resources

__all__ = ["indexes", "lifecycle", "resources"]
