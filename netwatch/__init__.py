"""netwatch: Kubernetes network observability with exact NetworkPolicy semantics.

Layout (see ../shared/DESIGN.md §1): `core` is the pure engine, `k8s` converts cluster
objects into core types, `render` formats results, `cli` is the command-line front end.
"""

__version__ = "0.1.0"
