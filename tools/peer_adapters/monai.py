"""conftest.py for MONAI's tests/losses: monai.losses' classes are
segfast.compat.monai's (the test modules import them from monai.losses as
usual, after this runs); MONAI itself provides its test helpers."""

import monai.losses as _losses

from segfast.compat import monai as _compat

for _name in _compat.__all__:
    if hasattr(_losses, _name):
        setattr(_losses, _name, getattr(_compat, _name))
