"""The built-in term catalogue (DESIGN.md §5), grouped by family.

Importing this package registers every term with :data:`lossdsl.registry`.
"""

from . import regression, sequence  # noqa: F401  (registration on import)
