"""Adapter names: what a name may be, checked once before anything uses it.

An adapter name becomes a key of every NEAT layer's `nn.ModuleDict` (so no `.`), the name of the folder that
`save_pretrained` writes a non-default adapter into (so no path separator, no `..`, no NUL or other control
character, at most `MAX_ADAPTER_NAME_BYTES`: `os.path.join(d, "/tmp/x")` is `/tmp/x`, outside `d`), and an entry of
`adapter_names=` in mixed-adapter batches, where `BASE_ADAPTER` (`"__base__"`, PEFT's) means "no adapter" (so it is
reserved). [`check_adapter_name`] is the one place these rules live: `add_adapter` (and so `get_neat_model`,
`from_pretrained` and `load_adapter`) calls it before the model is touched.
"""

from __future__ import annotations

import unicodedata

from neat_hf.errors import NeatError

#: Name standing for "no adapter" in `adapter_names` (PEFT's); reserved, so no adapter can be called that.
BASE_ADAPTER = "__base__"
#: Longest adapter name, in UTF-8 bytes: a folder name on common file systems.
MAX_ADAPTER_NAME_BYTES = 255
_SEPARATORS = ("/", "\\")


def check_adapter_name(name: object) -> str:
    """Return `name` if it can name an adapter, else raise one line saying what is wrong and what would be right.

    Args:
        name (`object`): the proposed adapter name.

    Raises:
        NeatError: not a non-empty `str`, longer than `MAX_ADAPTER_NAME_BYTES`, holding `.`, a path separator or a
            control character (NUL included), or the reserved `"__base__"`.
    """
    rule = "use letters, digits, '-' and '_' (e.g. 'default', 'math-r16')"
    if not isinstance(name, str) or not name:
        raise NeatError(f"An adapter name must be a non-empty string, got {name!r}; {rule}.")
    if name == BASE_ADAPTER:
        raise NeatError(
            f"{BASE_ADAPTER!r} is reserved: in adapter_names= it means 'no adapter' for a row; {rule}."
        )
    problem = None
    if any(sep in name for sep in _SEPARATORS):
        problem = "a path separator (it names the folder save_pretrained writes the adapter into)"
    elif "." in name:
        problem = "'.' (it is a module key in every NEAT layer, and '..' would leave the save folder)"
    elif any(unicodedata.category(char) == "Cc" for char in name):
        problem = "a control character (NUL, newline, ...)"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_ADAPTER_NAME_BYTES:
        problem = f"too many characters: over {MAX_ADAPTER_NAME_BYTES} bytes in UTF-8 (it becomes a folder name)"
    if problem:
        shown = repr(name) if len(name) <= 80 else repr(name[:80]) + "..."
        raise NeatError(f"Adapter name {shown} is not allowed: it contains {problem}; {rule}.")
    return name
