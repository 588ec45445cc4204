"""The public API documents itself: every public function and Module has
Args / Returns / Raises / Example sections (Google style), every example runs
and prints what its docstring says (on the CPU backend), and no public
signature exposes a private parameter."""

from __future__ import annotations

import doctest
import inspect
import re

import pytest
import torch

import segfast
import segfast.compat.monai
import segfast.compat.smp
import segfast.functional
import segfast.losses
import segfast.metrics

SECTIONS = ("Args", "Returns", "Raises", "Example")


def _public():
    """{qualified name: object} of every public callable: segfast.__all__,
    segfast.functional.__all__, the Modules of segfast.losses, the compat
    layers' __all__ and segfast.metrics.__all__ (classes with their public
    methods)."""
    out = {}
    for mod in (segfast, segfast.functional, segfast.compat.monai, segfast.compat.smp, segfast.metrics):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if callable(obj) and not inspect.ismodule(obj):
                out.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    for name, obj in vars(segfast.losses).items():
        if inspect.isclass(obj) and issubclass(obj, torch.nn.Module) and not name.startswith("_"):
            out.setdefault(f"{obj.__module__}.{obj.__qualname__}", obj)
    for qual, obj in list(out.items()):
        if inspect.isclass(obj) and obj.__module__.startswith("segfast.metrics"):
            for mname, m in vars(obj).items():
                if not mname.startswith("_"):
                    out[f"{qual}.{mname}"] = getattr(obj, mname)
    return out


PUBLIC = _public()


def _kind(obj) -> str:
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            return "exception"
        if issubclass(obj, torch.nn.Module) or hasattr(obj, "compute"):
            return "module"  # a Module, or a stateful metric: forward / compute is its call
        return "class"  # a parameter holder (segfast.Gaussian, segfast.Bilateral)
    return "method" if "." in obj.__qualname__ else "function"


def _sections(doc: str) -> set:
    return {m.group(1) for m in re.finditer(r"^(Args|Returns|Raises|Example)s?:\s*$", doc, re.M)}


def _params(obj, variadic: bool = True) -> list:
    """The parameters of a function, or of a class's constructor; ``variadic``:
    with *args / **kwargs (whose docs name what they forward, not themselves)."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    skip = () if variadic else (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [n for n, p in sig.parameters.items() if n not in ("self", "cls") and p.kind not in skip]


def test_the_public_api_is_large_enough_to_mean_something():
    # a regression guard on _public(): the API has ~90 callables
    assert len(PUBLIC) >= 80, sorted(PUBLIC)


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_docstring_sections(name):
    """Functions and Modules (and stateful metrics): all four sections. Methods
    of the metrics: Args when they take arguments, Returns always. Parameter
    holders (Gaussian, Bilateral): Args and Example. Exceptions: a docstring."""
    obj = PUBLIC[name]
    doc = inspect.getdoc(obj) or ""
    assert doc, f"{name} has no docstring"
    have = _sections(doc)
    kind = _kind(obj)
    if kind in ("function", "module"):
        need = set(SECTIONS) if _params(obj) else set(SECTIONS) - {"Args"}
    elif kind == "method":
        need = {"Returns"} | ({"Args"} if _params(obj) else set())
    elif kind == "class":
        need = {"Args", "Example"}
    else:
        need = set()
    assert need <= have, f"{name}: missing {sorted(need - have)} sections"


def _documented_args(doc: str) -> set:
    m = re.search(r"^Args:\s*$(.*?)(?=^\S|\Z)", doc, re.M | re.S)
    if not m:
        return set()
    return {a.lstrip("*") for a in re.findall(r"^    (\*{0,2}\w+):", m.group(1), re.M)}


@pytest.mark.parametrize("name", sorted(n for n, o in PUBLIC.items() if _kind(o) in ("function", "module")))
def test_every_parameter_is_documented(name):
    obj = PUBLIC[name]
    missing = set(_params(obj, variadic=False)) - _documented_args(inspect.getdoc(obj))
    assert not missing, f"{name}: Args does not list {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_no_private_parameter_in_a_public_signature(name):
    obj = PUBLIC[name]
    private = [p for p in _params(obj) if p.startswith("_")]
    assert not private, f"{name} exposes private parameters {private}"


def _examples():
    finder = doctest.DocTestFinder(recurse=False)
    seen, out = set(), []
    for name, obj in sorted(PUBLIC.items()):
        for t in finder.find(obj, name, globs={}):
            if t.examples and t.docstring not in seen:  # an alias shares its class's docstring
                seen.add(t.docstring)
                out.append(t)
    return out


EXAMPLES = _examples()


def test_most_of_the_api_has_examples():
    assert len(EXAMPLES) >= 60, len(EXAMPLES)


@pytest.mark.parametrize("test", EXAMPLES, ids=[t.name for t in EXAMPLES])
def test_docstring_example_runs(test, monkeypatch):
    """Each example, as written, on the CPU backend (the default on CPU tensors)."""
    monkeypatch.delenv("SEGFAST_BACKEND", raising=False)
    torch.manual_seed(0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failures = []
    runner.run(test, out=failures.append)
    assert runner.failures == 0, "".join(failures)
