"""Functional API of segfast: the losses, box ops and dense CRF as functions.

Every function here is re-exported as ``segfast.<name>``; its docstring
lists its arguments, result, errors and an example. Each is defined in its
family's module (segfast/ops/<family>.py) and collected here from the list
of families (segfast/_families.py).
"""

from ._families import public as _public

globals().update(_public(modules=False))
__all__ = list(_public(modules=False))
