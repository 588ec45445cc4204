"""Drop-in layers for users of other libraries: ``segfast.compat.monai`` and
``segfast.compat.smp`` (segmentation_models_pytorch). Neither imports the
library it imitates."""
