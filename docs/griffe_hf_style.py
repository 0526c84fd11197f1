"""Griffe extension: read neat-hf's HF doc-builder docstrings (docs/STYLE: `Example:` with `>>>`) as Google style.

Griffe's Google parser knows the section `Examples:` and treats a singular `Example:` as an admonition, so its `>>>`
lines would render as prose. Used by the API reference only (mkdocs.yml); the sources stay in the house style.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.M)


class HFDocstringStyle(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
