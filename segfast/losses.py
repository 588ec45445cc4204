"""nn.Module wrappers: they hold the arguments and call the functional form.

Each is defined beside its function in its family's module
(segfast/ops/<family>.py) and collected here from the list of families
(segfast/_families.py).
"""

from ._families import public as _public

globals().update(_public(modules=True))
__all__ = list(_public(modules=True))
