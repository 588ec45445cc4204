"""Compile every Triton kernel configuration the dispatch code launches, ahead
of time, for real GPU targets (no GPU needed), and report its resources.

The Triton interpreter (TRITON_INTERPRET=1, what runs on a machine without a
GPU) accepts code the compiler rejects, so a kernel that passes every
interpreted test can still fail on its first launch on a GPU. This module
closes that gap in three steps:

1. ``record_launches(run_fn)`` runs ``run_fn`` (public ops on small CPU
   tensors, interpreted) with a hook on ``run`` of Triton's kernel objects and
   records each launch as a ``Launch``: the kernel (module and name), every
   argument reduced to what Triton specialises on (tensor dtype, int / float /
   bool, constexpr values) and the launch options (num_warps, num_stages,
   enable_fp_fusion, ...). Duplicates are dropped.
2. ``expand(launches)`` (or ``exact(fn, args, kwargs)``: the variant a
   given launch gets, integers as divisible by 16 as its own are) makes the integer-divisibility variants the JIT
   launcher specialises on: ``div16`` (every pointer 16-byte aligned, every
   integer argument a multiple of 16, except those recorded as 0 or 1:
   unit strides and the like, which Triton turns into constants) and
   ``plain``, the fully generic kernel (no pointer aligned, no integer a
   multiple of 16, and recorded 1s passed as 33: strided views, several
   chunks per image).
3. ``compile_all(jobs, archs)`` compiles each job in worker processes that
   import the kernels with the interpreter off, through the same path as
   ``JITFunction.run`` (its binder, ``_pack_args``, ``triton.compile`` with an
   ``ASTSource`` and a ``GPUTarget``), and returns one report row per job:
   compile error, shared memory (kernel metadata), registers / local memory
   / stack from the cubin (``cuobjdump --dump-resource-usage``, Triton's own
   copy; ``ptxas -v`` as fallback), spill stores / loads from the ptxas log
   of the compile (spills go to the stack frame: cuobjdump's STACK, not
   LOCAL), the global load/store vector
   widths (PTX ``ld.global.v4`` ..., SASS ``LDG.E.128`` ...) and the barrier
   count (``bar.sync``).

``record_tiles()`` runs the tile sweep (``triton_workload.run_tiles``: every
class count that changes a launcher's tile function x every dtype, kernels
not run) and ``tile_groups`` reads off it what each launcher derives
together (its tile constexprs and num_warps, with the argument dtypes they
follow). ``config_space(launches, tiles)`` derives from both every launch
the dispatch code can make (``KernelSpace``: its size, its configurations),
and ``covering_set(launches, tiles)`` the recorded launches plus a covering
set of that space (every configuration of every kernel, and every argument
dtype / None tuple with every value of every other factor, within the pairs
of values that the recorded launches showed together): what the slow tier
compiles.

``failures(rows)`` lists what must not ship: a compile error, shared memory
over the target's per-block limit, any spill (ptxas's spill stores, or local
memory) in the streaming loss kernels. ``python -m segfast.gpucheck.triton_aot``
prints the table.

Not verified here: launching the compiled kernels (that needs a GPU), and
64-bit integer arguments (tensors of >= 2^31 elements) are not among the
variants.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import inspect
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Iterable, Optional

from . import perf_ptx

# Per-block shared memory a kernel may use (with the opt-in attribute, which
# Triton's launcher sets), in bytes.
SMEM_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
ARCHS = (80, 90)
VARIANTS = ("div16", "plain")

# Streaming loss kernels: a spill (local memory) inside their tile loop costs
# bandwidth on every tile, so it is a failure.
NO_SPILL = ("_region_stats_kernel", "_region_grad_kernel", "_pixel_softmax_kernel", "_pixel_sigmoid_kernel")

# ptxas, left to choose a register count, sometimes keeps a value or two in
# local memory to reach the next occupancy step: saved before the tile loop,
# restored after it, once per program. Such a spill is reported, not failed,
# when no spill access lies inside a loop (perf_ptx.sass_loops) and it stays
# within SPILL_OUTSIDE_LOOPS bytes; any other spill in NO_SPILL fails.
SPILL_OUTSIDE_LOOPS = 16


def spill_bytes(row) -> int:
    """Spill stores in ptxas's log, else (no log) the local memory and stack."""
    if row.get("spill_stores") is not None:
        return max(row["spill_stores"], row["local"])
    return max(row["local"], row["stack"])


def per_program_spill(row) -> bool:
    """The row spills only outside loops (its SASS read: ``local_loop`` is 0),
    at most SPILL_OUTSIDE_LOOPS bytes."""
    return row.get("local_loop") == 0 and spill_bytes(row) <= SPILL_OUTSIDE_LOOPS


# The families whose kernels the workload must reach (segfast.triton_kernels.<family>).
FAMILIES = ("region", "region_finish", "pixel", "lovasz", "boxes", "boxes_match", "crf")


# --------------------------------------------------------------------------
# recording
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Launch:
    """One kernel launch as Triton specialises it.

    ``args``: per kernel parameter (in order) a tuple: ``("T", dtype)`` tensor,
    ``("I", cls)`` int with cls "0", "1", "i32" or "i64", ``("F",)`` float,
    ``("B", value)`` bool, ``("N",)`` None, ``("C", value)`` constexpr.
    ``options``: the non-parameter keyword arguments (num_warps, ...), sorted.
    """

    module: str
    kernel: str
    args: tuple
    options: tuple

    def constexprs_tuple(self) -> tuple:
        return tuple(a[1] for a in self.args if a[0] == "C")

    def constexprs(self, names: list) -> dict:
        return {n: a[1] for n, a in zip(names, self.args) if a[0] == "C"}

    def to_json(self):
        return {"module": self.module, "kernel": self.kernel, "args": [list(a) for a in self.args],
                "options": [list(o) for o in self.options]}

    @staticmethod
    def from_json(d):
        return Launch(d["module"], d["kernel"], tuple(tuple(a) for a in d["args"]),
                      tuple(tuple(o) for o in d["options"]))


def _is_constexpr(param: inspect.Parameter) -> bool:
    ann = param.annotation
    return ann is not inspect.Parameter.empty and "constexpr" in (ann if isinstance(ann, str) else repr(ann))


def _int_class(v: int) -> str:
    if v in (0, 1):
        return str(v)
    return "i32" if -2**31 <= v < 2**31 else "i64"


def _describe(value, constexpr: bool):
    if constexpr:
        if not isinstance(value, (bool, int, float, str, type(None))):
            raise TypeError(f"unsupported constexpr value {value!r}")
        return ("C", value)
    if hasattr(value, "data_ptr") and hasattr(value, "dtype"):
        return ("T", str(value.dtype).replace("torch.", ""))
    if value is None:
        return ("N",)
    if isinstance(value, bool):
        return ("B", value)
    if isinstance(value, int):
        return ("I", _int_class(value))
    if isinstance(value, float):
        return ("F",)
    raise TypeError(f"unsupported kernel argument {value!r}")


def describe_launch(fn, args, kwargs) -> Launch:
    """The ``Launch`` of ``fn[grid](*args, **kwargs)`` (``fn`` the raw Python function)."""
    sig = inspect.signature(fn)
    names = list(sig.parameters)
    params = {k: v for k, v in kwargs.items() if k in sig.parameters}
    options = tuple(sorted((k, v) for k, v in kwargs.items() if k not in sig.parameters))
    bound = sig.bind(*args, **params)
    bound.apply_defaults()
    descs = tuple(_describe(bound.arguments[n], _is_constexpr(sig.parameters[n])) for n in names)
    return Launch(fn.__module__, fn.__name__, descs, options)


@contextlib.contextmanager
def _hook(record: Callable, *, run: bool = True):
    """Call record(fn, args, kwargs) on every kernel launch (interpreted or
    compiled); with ``run=False`` the kernels are not run (outputs stay unwritten)."""
    from triton.runtime.jit import JITFunction
    classes = [JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction
        classes.append(InterpretedFunction)
    except ImportError:  # pragma: no cover
        pass
    saved = {cls: cls.__dict__["run"] for cls in classes}

    def make(orig):
        def launch(self, *args, grid, warmup, **kwargs):
            record(self.fn, args, dict(kwargs, grid=grid))
            if run:
                return orig(self, *args, grid=grid, warmup=warmup, **kwargs)
            return None
        return launch

    try:
        for cls, orig in saved.items():
            cls.run = make(orig)
        yield
    finally:
        for cls, orig in saved.items():
            cls.run = orig


def record_launches(run_fn: Callable[[], None]) -> list:
    """Run ``run_fn`` and return the distinct ``Launch``es it made, in first-seen order."""
    seen = {}

    def record(fn, args, kwargs):
        kwargs.pop("grid", None)
        launch = describe_launch(fn, args, kwargs)
        seen.setdefault(launch, None)

    with _hook(record):
        run_fn()
    return list(seen)


def record_tiles(run_fn: Optional[Callable] = None) -> list:
    """Run the tile sweep (``triton_workload.run_tiles``, or ``run_fn(tag)``)
    with the kernels not run -> [(key, ordinal, Launch)]: the case key the
    sweep tagged, and which launch of that kernel function within the case
    it is (the forward and backward launches of one kernel differ in role,
    not in tile)."""
    from . import triton_workload
    out, state = [], {"key": None, "n": {}}

    def tag(key):
        state.update(key=key, n={})

    def record(fn, args, kwargs):
        kwargs.pop("grid", None)
        la = describe_launch(fn, args, kwargs)
        n = state["n"][la.kernel] = state["n"].get(la.kernel, -1) + 1
        out.append((state["key"], n, la))

    import torch
    assert_async = torch._assert_async
    torch._assert_async = lambda *a, **k: None  # device-side checks read outputs no kernel wrote
    try:
        with _hook(record, run=False):
            (run_fn or triton_workload.run_tiles)(tag)
    finally:
        torch._assert_async = assert_async
    return out


def tile_groups(tiles: Iterable, launches: Iterable = ()) -> dict:
    """-> {(module, kernel): (keys, positions, roles)}: what each launcher derives
    from the class count, the dtypes and the chunk count, read off the tile
    sweep (``record_tiles``).

    keys: the constexprs / launch options that change within one case
    family (same family, form and launch ordinal), but for a key that only
    changes where the case takes another path (other kernels launched) and
    that ``launches`` (the workload) show changing at one tile too: a choice
    of the op, not of the tile (a grad_output flag). positions: the tensor
    arguments whose dtype alone (with the arguments whose dtype always
    follows it) changes the tile at one class count. roles: {key: {value:
    tiles}} for a key that changes between the launches of one case (forward
    and backward) and changes the tiles launched with it: a value the sweep
    showed keeps to its tiles."""
    tiles = list(tiles)
    seq = {}
    for key, _, la in tiles:  # the kernels each case launched, in order
        seq.setdefault(key, []).append(la.kernel)
    by = {}
    for key, n, la in tiles:
        by.setdefault((la.module, la.kernel), []).append((key, n, la))
    recorded = {}
    for la in launches:
        recorded.setdefault((la.module, la.kernel), []).append(la)
    out = {}
    for kern, entries in by.items():
        las = [la for _, _, la in entries]

        def varying(group_key):
            cases = {}
            for key, n, la in entries:
                cases.setdefault(group_key(key, n), []).append(la)
            return [k for k in _config_keys(las)
                    if any(len({_key_value(la, k) for la in case}) > 1 for case in cases.values())]
        tkeys = varying(lambda key, n: (key[:2], n))
        if not tkeys:
            continue
        inner = varying(lambda key, n: (key[:2], tuple(seq[key]), n))
        apos = [p for p in range(len(las[0].args)) if las[0].args[p][0] in ("T", "N")]
        ties = {p: c for c in _components(apos, lambda p, q: _tied(las, p, q)) for p in c}
        drivers = set()
        by_c = {}
        for key, n, la in entries:
            by_c.setdefault((key[:2], n, key[2]), []).append(la)
        for group in by_c.values():
            for a, b in itertools.combinations(group, 2):
                diff = {p for p in apos if a.args[p] != b.args[p]}
                if diff and any(_key_value(a, k) != _key_value(b, k) for k in tkeys):
                    tie = ties[next(iter(diff))]
                    if diff <= set(tie):
                        drivers.update(tie)
        every = las + recorded.get(kern, [])
        for k in [k for k in tkeys if k not in inner]:
            rest = [q for q in tkeys if q != k] + [("A", p) for p in sorted(drivers)]
            vals = {}
            for la in every:
                vals.setdefault(tuple(_key_value(la, q) for q in rest), set()).add(_key_value(la, k))
            if any(len(v) > 1 for v in vals.values()):
                tkeys.remove(k)
        # a key that changes between the launches of one case (forward and
        # backward: a role) and with it the tile: each value keeps the tiles
        # the sweep launched with it (a class count unrolled only without dx)
        roles = {}
        for key, _, la in entries:
            roles.setdefault(key, []).append(la)
        restrict = {}
        for k in _config_keys(las):
            if k in tkeys or not any(len({_key_value(la, k) for la in case}) > 1 for case in roles.values()):
                continue
            seen = {}
            for la in las:
                seen.setdefault(_key_value(la, k), set()).add(tuple(_key_value(la, q) for q in tkeys))
            if len({frozenset(v) for v in seen.values()}) > 1:
                restrict[k] = seen
        out[kern] = (tkeys, sorted(drivers), restrict)
    return out


def kernel_functions() -> list:
    """(module, name) of every Triton kernel of segfast.triton_kernels (jit
    objects whose name ends in ``_kernel``)."""
    out = []
    for fam in FAMILIES:
        mod = importlib.import_module(f"segfast.triton_kernels.{fam}")
        for name, obj in vars(mod).items():
            if name.endswith("_kernel") and hasattr(obj, "fn") and getattr(obj.fn, "__module__", None) == mod.__name__:
                out.append((mod.__name__, name))
    return out


# --------------------------------------------------------------------------
# the configuration space
# --------------------------------------------------------------------------


def arg_class(desc) -> str:
    """What a constexpr can encode about an argument: None, a bool / integer /
    floating tensor, or the kind of a scalar (int, float, bool)."""
    if desc[0] == "T":
        dt = desc[1]
        return "bool" if dt == "bool" else "int" if dt.startswith(("int", "uint")) else "float"
    return desc[0]


def _partitions(pairs) -> bool:
    """True when ``pairs`` ((a, b) observations, a taking >= 2 values) show b
    determined by a as a class: the sets of b seen with each value of a are
    pairwise disjoint."""
    seen = {}
    for a, b in pairs:
        seen.setdefault(a, set()).add(b)
    if len(seen) < 2:
        return False
    groups = list(seen.values())
    return all(not (groups[i] & groups[j]) for i in range(len(groups)) for j in range(i + 1, len(groups)))


def _components(keys: list, linked) -> list:
    """Connected components of ``keys`` under the symmetric relation ``linked``."""
    parent = {k: k for k in keys}

    def root(k):
        while parent[k] != k:
            k = parent[k]
        return k
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if linked(a, b):
                parent[root(a)] = root(b)
    comps = {}
    for k in keys:
        comps.setdefault(root(k), []).append(k)
    return list(comps.values())


def _key_value(la: Launch, key):
    """A launch's value of a configuration key: ("C", i) a constexpr, ("O",
    name) a launch option (None when not given), ("A", i) an argument as
    described (a tile group's dtype)."""
    if key[0] == "C":
        return la.args[key[1]][1]
    if key[0] == "A":
        return la.args[key[1]]
    return dict(la.options).get(key[1], None)


def _config_keys(las: list) -> list:
    return ([("C", i) for i, a in enumerate(las[0].args) if a[0] == "C"]
            + [("O", n) for n in sorted({o[0] for la in las for o in la.options})])


def _tied(las: list, p: int, q: int) -> bool:
    """Arguments p and q determine each other (the gradient has the input's dtype)."""
    pairs = {(la.args[p], la.args[q]) for la in las}
    return len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs}) and len(pairs) >= 2


@dataclasses.dataclass
class KernelSpace:
    """The configuration space of one kernel function, derived from its
    recorded launches (see ``config_space``): the configuration groups'
    recorded tuples crossed, and per configuration the argument groups'
    tuples that it allows, keeping to pairs of values a recorded launch
    showed together (``consistent``). ``launches`` enumerates it, ``size``
    counts it, ``covering`` picks the covering set."""

    module: str
    kernel: str
    config_groups: list   # [[key, ...], ...]: keys ("C", i) constexpr / ("O", name) option / ("A", i) argument
    arg_groups: list      # [[position, ...], ...] of the non-constexpr arguments outside the tile group
    couplings: dict       # position -> [key, ...] whose value fixes the argument's class
    nargs: int = 0
    config_values: list = dataclasses.field(default_factory=list)  # per config group: recorded tuples
    arg_values: list = dataclasses.field(default_factory=list)     # per argument group: recorded tuples
    allowed: dict = dataclasses.field(default_factory=dict)        # (position, key, value) -> classes
    scalar_pos: list = dataclasses.field(default_factory=list)
    scalars: dict = dataclasses.field(default_factory=dict)        # config key -> scalar descriptions
    recorded: list = dataclasses.field(default_factory=list)       # the launches it was derived from
    tile: Optional[int] = None  # index of the tile group (``tile_groups``), if any
    restrict: dict = dataclasses.field(default_factory=dict)  # role key -> value -> the tiles it takes

    def _pinned_ok(self, cfg: dict) -> bool:
        """The argument dtypes the tile group pins have classes that the
        configuration's coupled keys allow (labels with T_IS_LABEL, ...)."""
        for k, v in cfg.items():
            if k[0] == "A":
                for c in self.couplings.get(k[1], ()):
                    if c in cfg and arg_class(v) not in self.allowed.get((k[1], c, cfg[c]), ()):
                        return False
        if self.restrict:
            tkeys = [k for k in self.config_groups[self.tile] if k[0] != "A"]
            if all(k in cfg for k in tkeys):
                tile = tuple(cfg[k] for k in tkeys)
                for k, by_value in self.restrict.items():
                    if k in cfg and cfg[k] in by_value and tile not in by_value[cfg[k]]:
                        return False
        return True

    def _cfg(self, combo) -> dict:
        return {k: v for g, t in zip(self.config_groups, combo) for k, v in zip(g, t)}

    def _gg_ok(self, k, w, m, x) -> bool:
        """Values w, x of configuration groups k, m may combine: seen together
        in a recorded launch, or (the tile group, derived from the launcher)
        its pinned dtypes allowed by the other's coupled keys."""
        if self.tile in (k, m):
            return self._pinned_ok({**dict(zip(self.config_groups[k], w)), **dict(zip(self.config_groups[m], x))})
        pair = (("G", k, w), ("G", m, x)) if k < m else (("G", m, x), ("G", k, w))
        return pair in self.seen()

    def combos(self):
        """Every consistent configuration as a tuple of group values."""
        ng = len(self.config_groups)
        for combo in itertools.product(*self.config_values):
            if all(self._gg_ok(k, combo[k], m, combo[m]) for k, m in itertools.combinations(range(ng), 2)) \
                    and self._pinned_ok(self._cfg(combo)):
                yield combo

    def configs(self):
        """Every configuration: {key: value}."""
        for combo in self.combos():
            yield self._cfg(combo)

    def _ga_ok(self, k, w, i, t) -> bool:
        return k == self.tile or (("G", k, w), ("a", i, tuple(arg_class(d) for d in t))) in self.seen()

    def _aa_ok(self, i, t, j, u) -> bool:
        a, b = (("a", i, tuple(arg_class(d) for d in t)), ("a", j, tuple(arg_class(d) for d in u)))
        return ((a, b) if i < j else (b, a)) in self.seen()

    def choices(self, cfg: dict, combo=None) -> list:
        """Per argument group, the recorded tuples that ``cfg`` allows (its
        couplings; with ``combo``, its group values: the pairs seen)."""
        def ok(p, d):
            return all(arg_class(d) in self.allowed.get((p, k, cfg[k]), ()) for k in self.couplings.get(p, ()))
        out = [[t for t in vals if all(ok(p, d) for p, d in zip(g, t))]
               for g, vals in zip(self.arg_groups, self.arg_values)]
        if combo is not None:
            out = [[t for t in c if all(self._ga_ok(k, w, i, t) for k, w in enumerate(combo))]
                   for i, c in enumerate(out)]
        return out

    def _argcs(self, combo):
        """The consistent argument tuples of one configuration."""
        ch = self.choices(self._cfg(combo), combo)
        for argc in itertools.product(*ch):
            if all(self._aa_ok(i, argc[i], j, argc[j]) for i, j in itertools.combinations(range(len(argc)), 2)):
                yield argc

    def make(self, cfg: dict, argc) -> Launch:
        args = [None] * self.nargs
        for k, v in cfg.items():
            if k[0] == "C":
                args[k[1]] = ("C", v)
            elif k[0] == "A":
                args[k[1]] = v
        for g, t in zip(self.arg_groups, argc):
            for p, d in zip(g, t):
                args[p] = d
        options = tuple(sorted((k[1], v) for k, v in cfg.items() if k[0] == "O" and v is not None))
        cfg_key = tuple(args[i] for i in range(self.nargs) if args[i] is not None and args[i][0] == "C") + options
        first = tuple(self.recorded[0].args[p] for p in self.scalar_pos)
        for p, d in zip(self.scalar_pos, self.scalars.get(cfg_key, first)):
            args[p] = d
        return Launch(self.module, self.kernel, tuple(args), options)

    @property
    def launches(self) -> list:
        """Every launch of the space (see ``size``)."""
        return [self.make(self._cfg(combo), argc) for combo in self.combos() for argc in self._argcs(combo)]

    def size(self) -> int:
        return sum(1 for combo in self.combos() for _ in self._argcs(combo))

    def num_configs(self) -> int:
        """Distinct launch configurations (constexpr values and options) of the space."""
        return len({tuple((k, v) for k, v in self._cfg(c).items() if k[0] != "A") for c in self.combos()})

    def recorded_configs(self) -> int:
        return len({_config(la) for la in self.recorded})

    def _factors(self, la: Launch) -> list:
        """A launch's factor values: configuration groups' value tuples, and
        the argument groups' classes (``arg_class``: None, int / float / bool
        tensor, scalar kind), the level at which pairs must have been seen."""
        out = [("G", n, tuple(_key_value(la, k) for k in g)) for n, g in enumerate(self.config_groups)]
        return out + [("a", n, tuple(arg_class(la.args[p]) for p in g)) for n, g in enumerate(self.arg_groups)]

    def seen(self) -> set:
        """Every pair of factor values (``_factors``) some recorded launch combines."""
        if not hasattr(self, "_seen"):
            self._seen = {(a, b) for la in self.recorded for a, b in itertools.combinations(self._factors(la), 2)}
        return self._seen

    def consistent(self, la: Launch) -> bool:
        """Every pair of its factor values (configuration values, argument
        classes) was seen together in a recorded launch, but for the tile
        group's (derived from the launcher, free of the other choices: its
        dtypes need only be ones the coupled keys allow)."""
        seen = self.seen()
        pairs = [(a, b) for a, b in itertools.combinations(self._factors(la), 2)
                 if self.tile is None or ("G", self.tile) not in (a[:2], b[:2])]
        cfg = {k: _key_value(la, k) for g in self.config_groups for k in g}
        return all(pair in seen for pair in pairs) and self._pinned_ok(cfg)

    def covering(self, max_configs: int = 200, seed: Iterable[Launch] = ()) -> list:
        """A covering subset of ``launches`` (greedy, AETG-like). The factors
        are the configuration groups (constexpr values and launch options
        that vary together) and the argument groups (dtypes, None).

        * Every configuration once at least when the kernel has at most
          ``max_configs`` (``covering_set``: always); beyond that every pair
          of two configuration groups' values (the tile group's by its
          dtypes).
        * ``seed``: launches compiled anyway (the recorded ones), taken first;
          what they cover is not asked again.
        * Every pair of factor values that some launch of the space combines
          (two argument groups' tuples, an argument group's tuple and a
          configuration group's tuple; the tile group's dtypes with every
          other group's value), so every argument tuple (each dtype class an
          argument takes, None) is compiled, with every value of every other
          factor.

        Each launch takes, factor by factor, the value that covers the most
        pairs not yet covered; leftover pairs get launches of their own.

        Every launch is ``consistent``: two configuration values, or an
        argument class and a configuration value or another argument's class,
        combine only if a recorded launch combined them, but for the tile
        group's, which come from the launcher (the derivation
        cannot tell a choice the workload did not reach from one the
        dispatch never makes: a compound loss term under a sigmoid, a
        normaliser left None where the kernel reads it). Dtypes within a
        class cross freely."""
        ng, na = len(self.config_groups), len(self.arg_groups)
        full = self.num_configs() <= max_configs
        ok_gg, ok_aa = self._gg_ok, self._aa_ok

        def fits(k, w, fixed):
            """Value w of configuration group k allows the argument tuples ``fixed`` ({group: tuple})."""
            for i, t in fixed.items():
                if not self._ga_ok(k, w, i, t):
                    return False
                for p, d in zip(self.arg_groups[i], t):
                    for key in self.couplings.get(p, ()):
                        if key in self.config_groups[k]:
                            val = w[self.config_groups[k].index(key)]
                            if arg_class(d) not in self.allowed.get((p, key, val), ()):
                                return False
            return True

        tile_a = [n for n, key in enumerate(self.config_groups[self.tile]) if key[0] == "A"] \
            if self.tile is not None else []

        def fac(k, w):
            """The factor value that pairs must cover: the tile group's by its
            dtypes (each of its configurations is compiled anyway)."""
            return ("D", k, tuple(w[n] for n in tile_a)) if k == self.tile and tile_a else ("G", k, w)

        def gpair(k, w, m, x):
            return (fac(k, w), fac(m, x)) if k < m else (fac(m, x), fac(k, w))

        def apair(i, v, j, u):
            return (("A", i, v), ("A", j, u)) if i < j else (("A", j, u), ("A", i, v))

        cv_all = self.config_values
        need = set()
        for i in range(na):
            for v in self.arg_values[i]:
                need.update((("A", i, v), fac(k, w)) for k in range(ng) for w in cv_all[k] if fits(k, w, {i: v}))
                for j in range(i + 1, na):
                    need.update((("A", i, v), ("A", j, u)) for u in self.arg_values[j]
                                if ok_aa(i, v, j, u)
                                and all(any(fits(k, w, {i: v, j: u}) for w in cv_all[k]) for k in range(ng)))
        if not full:
            need.update(gpair(k, w, m, x) for k in range(ng) for m in range(k + 1, ng) for w in cv_all[k]
                        for x in cv_all[m] if ok_gg(k, w, m, x))
        elif tile_a:  # the tile group's dtypes with every value of every other group
            need.update(gpair(self.tile, w, m, x) for m in range(ng) if m != self.tile
                        for w in cv_all[self.tile] for x in cv_all[m] if ok_gg(self.tile, w, m, x))

        def gain(new, chosen_g, chosen_a):
            kind, n, val = new
            g = sum(gpair(n, val, m, x) in need for m, x in chosen_g.items() if m != n) if kind == "G" else 0
            if kind == "G":
                return g + sum((("A", i, v), fac(n, val)) in need for i, v in chosen_a.items())
            return (sum((("A", n, val), fac(m, x)) in need for m, x in chosen_g.items())
                    + sum(apair(n, val, i, v) in need for i, v in chosen_a.items() if i != n))

        out = []

        def add(chosen_g, chosen_a, dtypes=None):
            """Complete a launch greedily: configuration groups (the tile
            group's with ``dtypes``, if given), then argument groups."""
            for k in range(ng):
                if k not in chosen_g:
                    cands = [w for w in cv_all[k] if fits(k, w, chosen_a)
                             and (dtypes is None or fac(k, w) == dtypes or k != self.tile)
                             and all(ok_gg(k, w, m, x) for m, x in chosen_g.items())]
                    if not cands:
                        return False
                    chosen_g[k] = max(cands, key=lambda w: gain(("G", k, w), chosen_g, chosen_a))
            cfg = {key: v for k, t in chosen_g.items() for key, v in zip(self.config_groups[k], t)}
            if not self._pinned_ok(cfg):
                return False
            ch = [[t for t in c if all(fits(k, w, {i: t}) for k, w in chosen_g.items())]
                  for i, c in enumerate(self.choices(cfg))]
            for i in sorted(range(na), key=lambda i: len(ch[i])):
                if i not in chosen_a:
                    cands = [t for t in ch[i] if all(ok_aa(i, t, j, u) for j, u in chosen_a.items())]
                    if not cands:
                        return False
                    chosen_a[i] = max(cands, key=lambda v: gain(("A", i, v), chosen_g, chosen_a))
                elif chosen_a[i] not in ch[i]:
                    return False
            commit([chosen_g[k] for k in range(ng)], [chosen_a[i] for i in range(na)])
            return True

        done = set()  # configurations taken

        def commit(cv, argc, la=None):
            need.difference_update(gpair(k, cv[k], m, cv[m]) for k in range(ng) for m in range(k + 1, ng))
            for i, v in enumerate(argc):
                need.difference_update((("A", i, v), fac(k, w)) for k, w in enumerate(cv))
                need.difference_update(apair(i, v, j, u) for j, u in enumerate(argc) if j > i)
            cfg = self._cfg(cv)
            done.add(tuple((k, v) for k, v in cfg.items() if k[0] != "A"))
            out.append(la or self.make(cfg, argc))

        for la in seed:  # launches compiled anyway: what they cover is not asked again
            if (la.module, la.kernel) == (self.module, self.kernel) and self.consistent(la):
                commit([tuple(_key_value(la, k) for k in g) for g in self.config_groups],
                       [tuple(la.args[p] for p in g) for g in self.arg_groups], la)
        if full:  # every configuration once (the tile group's dtypes: by the pairs below)
            for combo in self.combos():
                if tuple((k, v) for k, v in self._cfg(combo).items() if k[0] != "A") not in done:
                    add(dict(enumerate(combo)), {})
        for a, b in sorted(need, key=repr):  # leftover pairs, in a fixed order
            if (a, b) not in need:
                continue
            chosen_g = {t[1]: t[2] for t in (a, b) if t[0] == "G"}
            chosen_a = {t[1]: t[2] for t in (a, b) if t[0] == "A"}
            dtypes = next((t for t in (a, b) if t[0] == "D"), None)
            if not add(chosen_g, chosen_a, dtypes):
                need.discard((a, b))  # no launch of the space has it
        return list(dict.fromkeys(out))


def _config(la: Launch) -> tuple:
    return tuple(a for a in la.args if a[0] == "C") + la.options


def config_space(launches: Iterable[Launch], tiles: Iterable = ()) -> list:
    """Every launch the dispatch code can make, per kernel function, from the
    launches it was seen to make and the tile sweep (``record_tiles``)
    -> [KernelSpace].

    The launch configuration (constexpr values and launch options) and the
    non-constexpr arguments (tensor dtypes, None, scalar kinds) are taken
    apart into parts whose cross product, kept to consistent pairs, is the
    space:

    * the tile group (``tile_groups``): the keys a launcher derives from the
      class count, the dtypes and the chunk count, with the dtypes of the
      arguments it reads them from; its tuples are the ones the launcher made
      in the sweep and the workload (every class count that changes a tile x
      every dtype), so the tile keys are never crossed with each other;
    * two other configuration keys are dependent when the values of one split
      the values seen with the other into disjoint sets (a label flag follows
      the loss form); dependent keys form a group whose recorded value
      tuples are kept as they are; the groups are crossed. A key that was
      seen with overlapping values of another (every loss form at some common
      class tile) is independent of it.
    * an argument's class (``arg_class``) is coupled to a configuration key
      (not a tile key) when the key's values split the classes seen at that
      position into disjoint sets (a label-or-dense flag, a has-weight flag
      against None); a configuration then allows at that position the
      recorded values whose class it was seen with.
    * two arguments whose recorded values determine each other (the
      gradient has the input's dtype) form a group of recorded value tuples;
      the groups are crossed.
    * two values of two groups other than the tile group (configuration
      values, argument classes) combine only as some launch combined them
      (``KernelSpace.consistent``).
    """
    tiles = list(tiles)
    launches = list(launches)
    tgroups = tile_groups(tiles, launches)
    swept = {}
    for _, _, la in tiles:
        swept.setdefault((la.module, la.kernel), []).append(la)
    by_kernel = {}
    for la in launches:
        by_kernel.setdefault((la.module, la.kernel), []).append(la)
    out = []
    for (module, kernel), recorded in by_kernel.items():
        las = list(dict.fromkeys(recorded + swept.get((module, kernel), [])))
        nargs = len(las[0].args)
        tkeys, drivers, restrict = tgroups.get((module, kernel), ([], [], {}))
        keys = [k for k in _config_keys(las) if k not in tkeys]
        apos = [i for i in range(nargs) if las[0].args[i][0] != "C"]

        def dep(a, b):
            pairs = [(_key_value(la, a), _key_value(la, b)) for la in las]
            return _partitions(pairs) or _partitions([(y, x) for x, y in pairs])
        cgroups = _components(keys, dep)
        tile = None
        if tkeys:
            tile = len(cgroups)
            cgroups.append(tkeys + [("A", p) for p in drivers])
        couplings = {}
        for p in apos:
            couplings[p] = [k for k in keys if _partitions([(_key_value(la, k), arg_class(la.args[p])) for la in las])]
        # scalar arguments (int / float / bool) vary with shapes, not with the
        # dispatch's choices (divisibility is ``expand``'s variants): a launch
        # takes those of the first recorded launch of its configuration
        scalar = [p for p in apos if all(la.args[p][0] in ("I", "F", "B") for la in las)]
        scalars = {}
        for la in las:
            scalars.setdefault(_config(la), tuple(la.args[p] for p in scalar))
        agroups = _components([p for p in apos if p not in scalar and p not in drivers],
                              lambda p, q: _tied(las, p, q))
        cvals = [sorted({tuple(_key_value(la, k) for k in g) for la in las}, key=repr) for g in cgroups]
        allowed = {(p, k, _key_value(la, k)): set() for la in las for p in apos for k in couplings[p]}
        for la in las:
            for p in apos:
                for k in couplings[p]:
                    allowed[(p, k, _key_value(la, k))].add(arg_class(la.args[p]))
        avals = [sorted({tuple(la.args[p] for p in g) for la in las}, key=repr) for g in agroups]
        out.append(KernelSpace(module, kernel, cgroups, agroups, {p: ks for p, ks in couplings.items() if ks},
                               nargs, cvals, avals, allowed, scalar, scalars, las, tile, restrict))
    return out


# --------------------------------------------------------------------------
# compile jobs
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Job:
    launch: Launch
    variant: str  # "div16" | "plain"
    arch: int

    def to_json(self):
        return {"launch": self.launch.to_json(), "variant": self.variant, "arch": self.arch}

    @staticmethod
    def from_json(d):
        return Job(Launch.from_json(d["launch"]), d["variant"], d["arch"])


def exact(fn, args, kwargs) -> Launch:
    """The ``Launch`` of one launch with the divisibility of its own integer
    arguments (``("I", cls, divisible by 16)``), for a Job of variant
    ``exact`` (tensors 16-byte aligned, as torch allocates them)."""
    la = describe_launch(fn, args, kwargs)
    sig = inspect.signature(fn)
    bound = sig.bind(*args, **{k: v for k, v in kwargs.items() if k in sig.parameters})
    bound.apply_defaults()
    descs = tuple(d + (bound.arguments[n] % 16 == 0,) if d[0] == "I" else d
                  for n, d in zip(sig.parameters, la.args))
    return dataclasses.replace(la, args=descs)


def expand(launches: Iterable[Launch], archs=ARCHS, variants=VARIANTS) -> list:
    """Every (launch, divisibility variant, arch) compile job."""
    return [Job(la, v, a) for la in launches for v in variants for a in archs]


def subset(launches: Iterable[Launch], by_dtypes: bool = False) -> list:
    """One launch per kernel function (``by_dtypes``: per kernel function and
    tensor dtypes), the first recorded."""
    first = {}
    for la in launches:
        key = (la.module, la.kernel) + ((tuple(a for a in la.args if a[0] == "T"),) if by_dtypes else ())
        first.setdefault(key, la)
    return list(first.values())


def covering_set(launches: Iterable[Launch], tiles: Iterable = (), max_configs: Optional[int] = None) -> list:
    """The recorded launches and, per kernel function, ``KernelSpace.covering``
    of their configuration space (with the tile sweep ``tiles``; every
    configuration unless a kernel has more than ``max_configs``), duplicates dropped."""
    launches = list(launches)
    cap = 10**9 if max_configs is None else max_configs
    return list(dict.fromkeys(launches + [la for ks in config_space(launches, tiles)
                                          for la in ks.covering(cap, seed=launches)]))


def full_jobs(launches: Iterable[Launch], archs=ARCHS, space: str = "cover", tiles: Iterable = (),
              max_configs: Optional[int] = None) -> list:
    """The ``div16`` jobs of ``space``: "recorded" (the launches as given),
    "cover" (``covering_set``) or "space" (every launch of the configuration
    space, ``config_space``); and the generic ``plain`` variant of the first
    recorded launch of each kernel function."""
    launches = list(launches)
    if space == "space":
        every = [la for ks in config_space(launches, tiles) for la in ks.launches]
    elif space == "cover":
        every = covering_set(launches, tiles, max_configs)
    elif space == "recorded":
        every = launches
    else:
        raise ValueError(f"space must be 'recorded', 'cover' or 'space', got {space!r}")
    return expand(every, archs, ("div16",)) + expand(subset(launches), archs, ("plain",))


def time_report(rows: list, wall_s: float, workers: int) -> str:
    """Where the compile time went: Triton's frontend and LLVM (source to
    PTX) and ptxas, which runs once per distinct PTX (``_ptxas_once``)."""
    total = sum(r["compile_s"] for r in rows)
    ptxas = sum(r.get("ptxas_s") or 0.0 for r in rows)
    runs = sum(1 for r in rows if r.get("ptxas_s") and not r.get("ptxas_reused"))
    reused = sum(1 for r in rows if r.get("ptxas_reused"))
    return (f"{len(rows)} compiles in {wall_s:.1f} s on {workers} workers ({total:.1f} s of compile time): "
            f"frontend to PTX {total - ptxas:.1f} s, ptxas {ptxas:.1f} s over {runs} distinct PTX "
            f"({reused} compiles reused a ptxas run)")


def compile_all(jobs: list, *, workers: int = 2, cache_dir: Optional[str] = None, timeout: float = 3600) -> list:
    """Compile ``jobs`` in ``workers`` subprocesses (Triton imported with the
    interpreter off, ``TRITON_CACHE_DIR`` = ``cache_dir`` or a fresh temporary
    folder); -> one report row (dict) per job, in order.

    Every worker reads the whole list and claims the next unclaimed job
    (a file created exclusively), so the load balances itself; jobs of one
    kernel are adjacent, so a worker reuses its imports and binders and the
    ptxas runs of identical PTX (``_ptxas_once``)."""
    if not jobs:
        return []
    workers = max(1, min(workers, len(jobs)))
    with contextlib.ExitStack() as stack:
        if cache_dir is None:
            cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="segfast-triton-aot-"))
        env = dict(os.environ)
        env.pop("TRITON_INTERPRET", None)
        env["TRITON_CACHE_DIR"] = cache_dir
        env["SEGFAST_AOT_PTXAS_CACHE"] = os.path.join(cache_dir, "ptxas")
        os.makedirs(env["SEGFAST_AOT_PTXAS_CACHE"], exist_ok=True)
        order = sorted(range(len(jobs)), key=lambda i: (jobs[i].launch.module, jobs[i].launch.kernel, jobs[i].arch,
                                                        repr(jobs[i].launch.constexprs_tuple()), jobs[i].variant))
        work = stack.enter_context(tempfile.TemporaryDirectory(prefix="segfast-triton-aot-jobs-"))
        src = os.path.join(work, "jobs.json")
        with open(src, "w") as f:
            json.dump([[i, jobs[i].to_json()] for i in order], f)
        os.makedirs(os.path.join(work, "claims"))
        procs = []
        for w in range(workers):
            dst, log = (os.path.join(work, f"{w}.{ext}") for ext in ("out.jsonl", "log"))
            with open(log, "w") as errf:
                p = subprocess.Popen([sys.executable, "-m", "segfast.gpucheck.triton_aot", "--worker", src, dst],
                                     stdout=errf, stderr=subprocess.STDOUT, env=env)
            procs.append((p, dst, log))
        rows = [None] * len(jobs)
        errs = []
        for p, dst, log in procs:
            p.wait(timeout=timeout)
            with open(log) as f:
                err = f.read()
            if p.returncode != 0:
                raise RuntimeError(f"triton AOT worker failed (exit {p.returncode}):\n{err[-4000:]}")
            errs.append(err)
            with open(dst) as f:
                for line in f:
                    if line.strip():
                        i, row = json.loads(line)
                        rows[i] = row
        missing = [i for i, r in enumerate(rows) if r is None]
        if missing:
            raise RuntimeError(f"triton AOT workers returned no row for {len(missing)} of {len(jobs)} jobs:\n"
                               + "\n".join(e[-2000:] for e in errs))
    return rows


# --------------------------------------------------------------------------
# the worker side (no interpreter)
# --------------------------------------------------------------------------

_INT_VALUE = {("div16", "i32"): 32, ("plain", "i32"): 33, ("div16", "i64"): 2**33, ("plain", "i64"): 2**33 + 1}


def _materialise(desc, variant: str, tensors: dict):
    import torch
    kind = desc[0]
    if kind == "C":
        return desc[1]
    if kind == "T":
        key = (desc[1], variant)
        if key not in tensors:
            dt = getattr(torch, desc[1])
            base = torch.empty(64, dtype=dt)
            tensors[key] = base if variant != "plain" else base[1:]  # 1 element off: not 16-byte aligned
        return tensors[key]
    if kind == "I":
        if variant == "exact" and len(desc) > 2 and desc[1] not in ("0", "1"):
            variant = "div16" if desc[2] else "plain"  # ("I", cls, divisible by 16): the launch's own hint
        if desc[1] == "0" or (desc[1] == "1" and variant != "plain"):
            return int(desc[1])
        return _INT_VALUE[(variant, "i32" if desc[1] == "1" else desc[1])]
    if kind == "F":
        return 0.5
    if kind == "B":
        return desc[1]
    if kind == "N":
        return None
    raise ValueError(desc)


def tool(name: str) -> Optional[str]:
    """Path of a CUDA binary tool: Triton's bundled copy first, then PATH."""
    try:
        import triton.backends.nvidia as nv
        p = os.path.join(os.path.dirname(nv.__file__), "bin", name)
        if os.access(p, os.X_OK):
            return p
    except ImportError:  # pragma: no cover
        pass
    return shutil.which(name)


_RES = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def cubin_resources(cubin: bytes, arch: int, ptx: Optional[str] = None) -> dict:
    """-> {function name: {registers, stack, static_shared, local}} of a cubin
    (cuobjdump --dump-resource-usage; ptxas -v on ``ptx`` when cuobjdump is missing)."""
    cuobjdump = tool("cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        if cuobjdump:
            out = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True,
                                 check=True).stdout
            return parse_resource_usage(out)
        ptxas = tool("ptxas")
        if ptxas is None or ptx is None:
            raise RuntimeError("neither cuobjdump nor ptxas found: cannot read register usage")
        ppath = os.path.join(d, "k.ptx")
        with open(ppath, "w") as f:
            f.write(ptx)
        sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        r = subprocess.run([ptxas, "-v", f"-arch={sm}", ppath, "-o", os.path.join(d, "o.cubin")],
                           capture_output=True, text=True, check=True)
        return parse_ptxas_v(r.stderr + r.stdout)


def parse_resource_usage(text: str) -> dict:
    """Parse ``cuobjdump --dump-resource-usage`` output."""
    out, name = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function\s+(\S+):", line)
        if m:
            name = m.group(1)
            continue
        m = _RES.search(line)
        if m and name is not None:
            reg, stack, shared, local = map(int, m.groups())
            out[name] = {"registers": reg, "stack": stack, "static_shared": shared, "local": local}
            name = None
    return out


def parse_ptxas_v(text: str) -> dict:
    """Parse ``ptxas -v`` / ``nvcc -Xptxas -v`` output."""
    out, name = {}, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line) or re.search(r"Function properties for (\S+)", line)
        if m:
            name = m.group(1)
            out.setdefault(name, {"registers": 0, "stack": 0, "static_shared": 0, "local": 0, "spill_stores": 0,
                                  "spill_loads": 0})
            continue
        if name is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            out[name]["stack"] = int(m.group(1))
            out[name]["spill_stores"] = int(m.group(2))
            out[name]["spill_loads"] = int(m.group(3))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            out[name]["registers"] = int(m.group(1))
            m2 = re.search(r"(\d+) bytes smem", line)
            if m2:
                out[name]["static_shared"] = int(m2.group(1))
            m3 = re.search(r"(\d+) bytes lmem", line)
            if m3:
                out[name]["local"] = max(out[name]["local"], int(m3.group(1)))
    return out


def loop_barriers(ptx: str) -> int:
    """Barriers (bar.sync / barrier.sync) inside a loop of the PTX: between a
    label and a later branch back to it."""
    return perf_ptx.loop_barriers(ptx)


def vector_counts(ptx: str, sass: str = "") -> dict:
    """Global load/store instruction counts by vector width, and barriers."""
    def count(pat, text):
        return len(re.findall(pat, text))
    c = {}
    for op in ("ld", "st"):
        total = count(rf"\b{op}\.global\b", ptx)
        c[f"{op}_v4"] = count(rf"\b{op}\.global(?:\.\w+)*\.v4\b", ptx)
        c[f"{op}_v2"] = count(rf"\b{op}\.global(?:\.\w+)*\.v2\b", ptx)
        c[f"{op}_v1"] = total - c[f"{op}_v4"] - c[f"{op}_v2"]
    c["bar_sync"] = count(r"\b(?:bar|barrier)\.sync\b", ptx)
    c.update(perf_ptx.loop_facts(ptx))  # bar_loop, cp.async, loads of the streaming inputs by width
    if sass:
        c["ldg128"] = count(r"\bLDG(?:\.\w+)*\.128\b", sass)
        c["stg128"] = count(r"\bSTG(?:\.\w+)*\.128\b", sass)
        c["ldg"] = count(r"\bLDG\b", sass)
        c["stg"] = count(r"\bSTG\b", sass)
        # fences and atomics: a value-returning ATOMG (or a fence around it)
        # where a fire-and-forget REDG would do
        c["membar"] = count(r"\bMEMBAR\b", sass)
        c["atomg"] = count(r"\bATOMG\b", sass)
        c["redg"] = count(r"\bREDG\b", sass)
        c["local_loop"] = perf_ptx.local_in_loops(sass)
    return c


def _sass(cubin: bytes) -> str:
    cuobjdump = tool("cuobjdump")
    if not cuobjdump:
        return ""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        r = subprocess.run([cuobjdump, "-sass", path], capture_output=True, text=True)
        return r.stdout if r.returncode == 0 else ""


_PTXAS = {"cache_dir": None, "seconds": 0.0, "hit": False}


def _ptxas_once(backend=None, stages=None, options=None, language=None, capability=None):
    """Triton's stage hook: run the cubin stage (ptxas) once per distinct PTX.
    Configurations whose PTX is identical (dtype variants that lower to the
    same code, options ptxas ignores) reuse the cubin and ptxas log of the
    first, from ``_PTXAS["cache_dir"]`` (shared by the workers). Called
    without arguments, Triton asks for the hook's part of its cache key."""
    if stages is None:
        return "segfast-ptxas-once", "1"
    make = stages["cubin"]

    def cubin(src, metadata):
        key = hashlib.sha256("\0".join([src, str(options.enable_fp_fusion), str(options.ptx_options),
                                         str(capability)]).encode()).hexdigest()
        d = _PTXAS["cache_dir"]
        path = os.path.join(d, key) if d else None
        if path and os.path.exists(path + ".cubin") and os.path.exists(path + ".log"):
            with open(path + ".log") as f:
                print(f.read())
            _PTXAS["hit"] = True
            with open(path + ".cubin", "rb") as f:
                return f.read()
        t0 = time.perf_counter()
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            out = make(src, metadata)
        _PTXAS["seconds"] += time.perf_counter() - t0
        print(log.getvalue())
        if path:
            for ext, data, mode in ((".log", log.getvalue(), "w"), (".cubin", out, "wb")):
                tmp = f"{path}.{os.getpid()}{ext}"
                with open(tmp, mode) as f:
                    f.write(data)
                os.replace(tmp, path + ext)
        return out
    stages["cubin"] = cubin


def compile_job(job: Job, _cache: dict = {}) -> dict:  # noqa: B006  (per-process memo)
    """Compile one job as ``JITFunction.run`` would; -> report row."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    la = job.launch
    jf = getattr(importlib.import_module(la.module), la.kernel)
    names = [p.name for p in jf.params]
    row = {"kernel": la.kernel, "family": la.module.rsplit(".", 1)[-1], "arch": job.arch, "variant": job.variant,
           "constexprs": la.constexprs(names),
           "types": ",".join(a[1] if a[0] in ("T", "I") else a[0] for a in la.args if a[0] != "C"),
           "error": None}
    t0 = time.perf_counter()
    try:
        key = ("backend", job.arch)
        if key not in _cache:
            target = GPUTarget("cuda", job.arch, 32)
            _cache[key] = (target, make_backend(target))
        target, backend = _cache[key]
        bkey = ("binder", la.module, la.kernel, job.arch)
        if bkey not in _cache:
            _cache[bkey] = create_function_from_signature(jf.signature, jf.params, backend)
        binder = _cache[bkey]
        tensors = _cache.setdefault("tensors", {})
        kwargs = {n: _materialise(a, job.variant, tensors) for n, a in zip(names, la.args)}
        kwargs.update(dict(la.options))
        kwargs["debug"] = kwargs.get("debug", jf.debug) or knobs.runtime.debug
        for k in ("instrumentation_mode", "fpsan_homomorphic_casts"):
            if hasattr(knobs.compilation, k):
                kwargs[k] = getattr(knobs.compilation, k)
        bound, spec, opts = binder(**kwargs)
        options, signature, constexprs, attrs = jf._pack_args(backend, opts, bound, spec, opts)
        # ptxas -v's log (Triton prints it with dump_ptxas_log): spills go to
        # the stack frame, which cuobjdump reports as STACK, not LOCAL
        log = io.StringIO()
        knobs.nvidia.dump_ptxas_log = True
        knobs.runtime.add_stages_inspection_hook = _ptxas_once
        _PTXAS.update(seconds=0.0, hit=False)
        try:
            with contextlib.redirect_stdout(log):
                kernel = triton.compile(ASTSource(jf, signature, constexprs, attrs), target=target,
                                        options=options.__dict__)
        finally:
            knobs.nvidia.dump_ptxas_log = False
            knobs.runtime.add_stages_inspection_hook = None
        row["ptxas_s"] = round(_PTXAS["seconds"], 3)
        row["ptxas_reused"] = _PTXAS["hit"]
        spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log.getvalue())
        md = kernel.metadata
        row["num_warps"] = options.num_warps
        row["num_stages"] = options.num_stages
        row["shared"] = int(md.shared)
        cubin = kernel.asm["cubin"]
        ptx = kernel.asm.get("ptx", "")
        res = cubin_resources(cubin, job.arch, ptx)
        r = res.get(md.name) or (next(iter(res.values())) if len(res) == 1 else None)
        if r is None:
            raise RuntimeError(f"no resource usage for {md.name} in {sorted(res)}")
        row.update(r)
        # None: the kernel came from Triton's cache (no ptxas log); stack is the proxy then
        row["spill_stores"] = sum(int(a) for a, _ in spills) if spills else None
        row["spill_loads"] = sum(int(b) for _, b in spills) if spills else None
        row.update(vector_counts(ptx, _sass(cubin)))
        row["specialised"] = sum(1 for v in attrs.values() if v)  # arguments with a divisibility hint
    except Exception as e:  # reported, not raised: the sweep goes on
        msg = str(e).strip()
        row["error"] = f"{type(e).__name__}: {msg[-1500:]}"
    row["compile_s"] = round(time.perf_counter() - t0, 3)
    return row


def _worker(src: str, dst: str) -> int:
    import warnings
    warnings.filterwarnings("ignore")
    _PTXAS["cache_dir"] = os.environ.get("SEGFAST_AOT_PTXAS_CACHE") or None
    with open(src) as f:
        jobs = json.load(f)
    claims = os.path.join(os.path.dirname(src), "claims")
    with open(dst, "w") as out:
        for i, job in jobs:
            try:
                os.close(os.open(os.path.join(claims, str(i)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue  # another worker has it
            out.write(json.dumps([i, compile_job(Job.from_json(job))], default=str) + "\n")
            out.flush()
    return 0


# --------------------------------------------------------------------------
# verdicts and the table
# --------------------------------------------------------------------------


def failures(rows: list, spills: bool = True) -> list:
    """-> human-readable failures: compile errors, shared memory over the
    target's per-block limit, spills in the streaming loss kernels (unless
    ``spills`` is False) but ptxas's per-program ones (``per_program_spill``)."""
    out = []
    for r in rows:
        what = f"{r['kernel']} sm_{r['arch']} {r['variant']} {r['constexprs']} [{r['types']}]"
        if r.get("error"):
            out.append(f"{what}: compile error: {r['error']}")
            continue
        limit = SMEM_LIMIT.get(r["arch"])
        if limit is not None and r["shared"] > limit:
            out.append(f"{what}: {r['shared']} B shared memory > the {limit} B per-block limit")
        if spills and r["kernel"] in NO_SPILL and spilled(r) and not per_program_spill(r):
            inside = r.get("local_loop")
            where = "" if inside is None else f", {inside} spill accesses inside a loop"
            out.append(f"{what}: spills ({spill_text(r)}{where}, {r['registers']} registers)")
    return out


def spilled(row) -> bool:
    return spill_bytes(row) > 0


def spill_text(row) -> str:
    if row.get("spill_stores") is not None:
        return f"{row['spill_stores']} B spill stores, {row['local']} B local, {row['stack']} B stack"
    return f"{row['local']} B local, {row['stack']} B stack"


COLUMNS = ("kernel", "arch", "variant", "configs", "num_warps", "registers", "spill_stores", "local_loop", "local",
           "stack", "shared", "ld_v4", "ld_v2", "ld_v1", "st_v4", "st_v1", "ldg128", "bar_sync", "compile_s")


def summarise(rows: list) -> list:
    """Per (kernel, arch): worst case over its configurations (max registers,
    local, stack, shared; the vector counts of the config with most registers)."""
    groups = {}
    for r in rows:
        if r.get("error"):
            continue
        groups.setdefault((r["family"], r["kernel"], r["arch"]), []).append(r)
    out = []
    for (fam, kernel, arch), rs in sorted(groups.items()):
        worst = max(rs, key=lambda r: r["registers"])
        s = dict(worst)
        s["configs"] = len(rs)
        for k in ("local", "stack", "shared", "spill_stores", "local_loop"):
            vals = [r.get(k) for r in rs if r.get(k) is not None]
            s[k] = max(vals) if vals else None
        s["compile_s"] = round(sum(r["compile_s"] for r in rs), 1)
        s["variant"] = "worst"
        out.append(s)
    return out


def format_table(rows: list, columns=COLUMNS) -> str:
    cols = [c for c in columns if any(c in r for r in rows)]
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    width = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, width))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, width)) for row in cells]
    return "\n".join(lines)


def report(level: str = "full", *, archs=ARCHS, workers: int = 2, cache_dir: Optional[str] = None):
    """Record the workload of ``level`` and compile it ("quick": one launch
    per kernel function; "full": ``covering_set`` of the full workload;
    "space": every launch of its configuration space); -> (rows, launches, seconds)."""
    from . import triton_workload
    launches = record_launches(lambda: triton_workload.run("quick" if level == "quick" else "full"))
    if level == "quick":
        jobs = expand(subset(launches), archs, ("div16",))
    else:
        jobs = full_jobs(launches, archs, space="space" if level == "space" else "cover", tiles=record_tiles())
    t0 = time.perf_counter()
    rows = compile_all(jobs, workers=workers, cache_dir=cache_dir)
    return rows, launches, time.perf_counter() - t0


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m segfast.gpucheck.triton_aot",
                                 description="Compile the Triton kernels for sm_80 / sm_90 and report resources.")
    ap.add_argument("--worker", nargs=2, metavar=("JOBS", "ROWS"), help=argparse.SUPPRESS)
    ap.add_argument("--level", choices=("quick", "full", "space"), default="quick",
                    help="quick: one launch per kernel; full: the recorded launches and the covering set of "
                         "their configuration space (every configuration, dtypes pairwise); space: every launch "
                         "of that space, every configuration x every dtype tuple (hours on 2 cores)")
    ap.add_argument("--arch", type=int, action="append", help="compute capability, e.g. 80 (repeatable)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--all-rows", action="store_true", help="one row per configuration, not per kernel")
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(*args.worker)
    import torch
    if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
        # without a GPU the workload runs the public ops on CPU tensors in the
        # interpreter, which must be on before triton is imported
        os.environ["TRITON_INTERPRET"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "segfast.gpucheck.triton_aot"] + list(argv or sys.argv[1:]))
    rows, launches, secs = report(args.level, archs=tuple(args.arch or ARCHS), workers=args.workers)
    print(format_table(rows if args.all_rows else summarise(rows)))
    print(f"\n{len(launches)} launch configurations recorded; " + time_report(rows, secs, args.workers))
    bad = failures(rows)
    for f in bad:
        print("FAIL", f)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
