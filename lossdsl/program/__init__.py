"""IR to the compiled form: a ``torch.fx`` graph and its metadata (DESIGN.md §2).

>>> import lossdsl
>>> type(lossdsl.compile("mse").program).__name__
'Program'
"""

from .program import Program, build_program

__all__ = ["Program", "build_program"]
