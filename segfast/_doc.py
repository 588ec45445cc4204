"""Docstring parts written once and filled into many docstrings.

A docstring line that holds only ``{name}`` is replaced by the part of that
name, indented as the line was (torch fills its common arguments into its
docstrings the same way). ``{fn}`` inside a part stands for the function a
Module wraps.
"""

from __future__ import annotations


def expand(doc: str | None, parts: dict, **names: str) -> str | None:
    """``doc`` with every ``{name}`` line replaced by ``parts[name]``."""
    if not doc:  # python -OO strips docstrings
        return doc
    lines = []
    for line in doc.split("\n"):
        key = line.strip()
        if key.startswith("{") and key.endswith("}") and key[1:-1] in parts:
            text = parts[key[1:-1]]
            for k, v in names.items():
                text = text.replace("{" + k + "}", v)
            pad = line[:len(line) - len(line.lstrip())]
            lines += [pad + part if part else "" for part in text.split("\n")]
        else:
            lines.append(line)
    return "\n".join(lines)


def fill(parts: dict, **names: str):
    """Decorator: expand the docstring of a function or class with ``parts``."""
    def deco(obj):
        obj.__doc__ = expand(obj.__doc__, parts, **names)
        return obj
    return deco
