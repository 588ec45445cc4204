"""segfast: fused GPU and CPU kernels for segmentation and detection losses.

Public API: the functional losses (``segfast.dice_loss`` ...), their
nn.Module wrappers (``segfast.DiceLoss`` ...), drop-in layers for MONAI and
segmentation_models_pytorch users (``segfast.compat.monai``,
``segfast.compat.smp``) and ``segfast.info()``.
"""

__version__ = "0.1.0"


def _refuse_shadowed_source_tree():
    """Run from the repository root, ``import segfast`` finds the source folder
    before a normal (non-editable) install, and that folder has no compiled
    ``_C`` nor ``triton_kernels``. Fail clearly instead of running half-built."""
    import importlib.util
    import json
    import pathlib

    here = pathlib.Path(__file__).resolve().parent
    if not (here.parent / "pyproject.toml").is_file() or not (here.parent / "csrc").is_dir():
        return  # an installed copy, not the source tree
    if importlib.util.find_spec("segfast._C") is not None:
        return  # editable install (redirect finder) or in-place build
    try:
        from importlib.metadata import distribution

        dist = distribution("segfast")
    except Exception:
        return  # never installed: a bare source tree (torch backend only)
    direct = dist.read_text("direct_url.json") or "{}"
    try:
        editable = json.loads(direct).get("dir_info", {}).get("editable", False)
    except ValueError:
        editable = False
    if not editable:
        raise ImportError(
            f"segfast is being imported from its source tree ({here}), which shadows the "
            "installed package and has no compiled extension. Run from another directory, "
            "or for development install it editable: pip install -e . --no-build-isolation")


_refuse_shadowed_source_tree()

from . import backends  # noqa: E402
from ._families import namespaces as _namespaces, public as _public  # noqa: E402
from .backends import empty_cache  # noqa: E402

# Every family's public functions and Modules (segfast/_families.py), and the
# families with a namespace of their own (segfast.metrics).
globals().update(_public())
globals().update(_namespaces())


def info(print_out: bool = True) -> dict:
    """What this installation offers: version, backends, CUDA architectures, versions, GPU.

    Args:
        print_out: print the table (default) as well as returning it.

    Returns:
        dict: the version, the backends built and usable here, the CUDA
        architectures compiled in, the torch / triton versions, whether a GPU
        is visible and whether the cuda backend runs on it.

    Raises:
        Nothing: a missing piece is reported in the table, not raised.

    Example:
        >>> import segfast
        >>> d = segfast.info(print_out=False)
        >>> d["segfast"] == segfast.__version__ and "torch" in d["backends_cpu"]
        True
    """
    d = backends.info()
    if print_out:
        width = max(map(len, d))
        for k, v in d.items():
            print(f"{k:<{width}}  {', '.join(map(str, v)) if isinstance(v, list) else v}")
    return d


__all__ = [*_public(), "info", "empty_cache", "backends", "__version__"]
