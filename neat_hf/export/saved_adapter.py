"""`neat-hub export-lora`: load a base model and a NEAT adapter, and write the adapter as an exact PEFT LoRA.

The base is loaded as it will be served (its stored dtype, or `dtype=`), with the transformers class the adapter's
config implies (as `neat-hub merge` does); the adapter is checked against it (`AdapterMismatchError` for other shapes
or module names) before anything is written. See `neat_hf.export.lora` for the math and the file layout.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from neat_hf.errors import NeatError
from neat_hf.hub.download import is_hub_id
from neat_hf.hub.error_translation import loading_errors
from neat_hf.export.lora import DTYPES
from neat_hf.model import NeatModel

from neat_hf.export.merged import adapter_load_plan

logger = logging.getLogger(__name__)


def export_lora(
    base: str | os.PathLike,
    adapter: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dtype: str = "auto",
    revision: str | None = None,
    adapter_revision: str | None = None,
    token: str | bool | None = None,
    auto_class: str | None = None,
    server: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """Export the NEAT `adapter` for `base` as a LoRA adapter folder `out_dir`.

    Args:
        base (`str` or `os.PathLike`): base model folder or Hub id, the one the LoRA will be served on.
        adapter (`str` or `os.PathLike`): NEAT adapter folder or Hub repo id.
        out_dir (`str` or `os.PathLike`): the LoRA folder to write (replaced as a whole if it holds an earlier export).
        dtype (`str`, *optional*, defaults to `"auto"`): dtype the base is served in (`auto` = its stored dtype,
            `float32`, `bfloat16`, `float16`); H is computed from the base weights in that dtype.
        revision (`str`, *optional*): Hub revision of the base (recorded in the card).
        adapter_revision (`str`, *optional*): Hub revision of the adapter.
        token (`str` or `bool`, *optional*): Hub token (defaults to HF_TOKEN / login cache).
        auto_class (`str`, *optional*): transformers class to load the base with (default: from the adapter).
        server (`str`, *optional*): `"vllm"` or `"sglang"`: refuse (instead of warn) if that server would not load it.
        repo_id (`str`, *optional*): Hub repo the export will be pushed to, for the card's snippets.

    Raises:
        NeatError: bad `dtype`, a folder with other files at `out_dir`, a base that cannot be loaded.
        AdapterLoadError / AdapterMismatchError: the adapter cannot be read or does not fit the base.
        HubError: the Hub failed while loading the base.
        ServingLimitError: `server` would refuse the exported adapter.
    """
    if dtype != "auto" and dtype not in DTYPES:
        raise NeatError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}.")
    plan = adapter_load_plan(
        base, adapter, auto_class=auto_class, adapter_revision=adapter_revision, base_revision=revision, token=token
    )
    cls, load_kwargs = plan.model_class, plan.load_kwargs
    logger.info("Loading base %s with %s in %s", os.fspath(base), cls.__name__, dtype)
    with loading_errors("base model", base, revision=revision):
        base_model = cls.from_pretrained(
            os.fspath(base), revision=revision, token=token, dtype=dtype, use_safetensors=True, trust_remote_code=False,
            **load_kwargs,
        )
    model = NeatModel.from_pretrained(base_model, adapter, revision=adapter_revision, token=token)
    base_name = os.fspath(base)
    source = os.fspath(adapter) if is_hub_id(os.fspath(adapter)) else f"local folder {Path(adapter).name!r}"
    return model.save_as_lora(
        out_dir,
        server=server,
        base_model=base_name,
        revision=revision,
        exported_from=source + (f" at revision {adapter_revision}" if adapter_revision else ""),
        repo_id=repo_id,
    )
