"""Pure functions: a resource (and what it is bound to) -> desired child manifests and status.

No I/O and no kopf here, so every rule is unit-tested without an API server; ``handlers/`` applies what
these functions return.
"""
