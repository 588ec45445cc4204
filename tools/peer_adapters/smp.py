"""conftest.py for smp's tests/test_losses.py: segmentation_models_pytorch.losses'
classes are segfast.compat.smp's (the test bodies import them from smp as
usual); smp's functional helpers and MCCLoss, which segfast does not
replace, stay smp's."""

from segfast.compat import smp as _compat

_losses = _compat.load_smp_losses()  # smp's losses package, without its model zoo
if _losses is None:
    raise RuntimeError("segmentation_models_pytorch must be installed "
                       "(pip install --no-deps segmentation-models-pytorch)")
for _name in _compat.__all__:
    if hasattr(_losses, _name):
        setattr(_losses, _name, getattr(_compat, _name))
