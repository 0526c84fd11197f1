"""Model card and `training_info.json` of a NEAT adapter exported as a LoRA (`NeatModel.save_as_lora`).

The card's YAML says `library_name: peft`, `base_model: <id>` and tags `lora`, `neat`, `base_model:adapter:<id>`, so
the Hub lists the export as a LoRA adapter of its base. The body says which NEAT adapter it was exported from and which
base (id, revision, dtype) it is exact for, with PEFT, vLLM and SGLang snippets. `training_info.json` records the same
facts for machines.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from neat_hf.cards.adapter_card import framework_versions
from neat_hf.constants import MODEL_CARD_NAME
from neat_hf.io import atomic_write_text
from neat_hf.hub.download import is_hub_id
from neat_hf.export.serving import ServingIssue, vllm_max_lora_rank
from neat_hf.task_types import model_class_for, pipeline_tag_for
from neat_hf.training_info import save_training_info

TEMPLATE_PATH = Path(__file__).parent / "templates" / "lora_export_card.md"
LORA_EXPORT_TAGS = ("lora", "neat", "peft")


def build_lora_card(
    lora_config: Mapping[str, Any],
    export_info: Mapping[str, Any],
    *,
    issues: Sequence[ServingIssue] = (),
    repo_id: str | None = None,
) -> ModelCard:
    """Render the card of an exported LoRA from its `adapter_config.json` dict and the export facts.

    Args:
        lora_config (`Mapping`): the exported adapter_config.json.
        export_info (`Mapping`): `exported_from`, `export_exact_for_base`, `export_base_is_local`, `export_base_revision`,
            `export_base_dtype`, `neat_r`, `neat_depth`, `neat_act_fn`, `neat_scaling` (see `neat_hf.export.lora`).
        issues (`Sequence[ServingIssue]`, *optional*): server limits found at export, listed in the card.
        repo_id (`str`, *optional*): the Hub repo the export is pushed to, for the snippets.
    """
    base = export_info.get("export_exact_for_base")
    base_id = base if is_hub_id(base) and not export_info.get("export_base_is_local") else None
    tags = list(LORA_EXPORT_TAGS) + ([f"base_model:adapter:{base_id}"] if base_id else [])
    card_data = ModelCardData(
        library_name="peft",
        base_model=base_id,
        tags=tags,
        pipeline_tag=pipeline_tag_for(lora_config),
        model_name=repo_id,
    )
    targets = lora_config.get("target_modules")
    return ModelCard.from_template(
        card_data,
        template_path=os.fspath(TEMPLATE_PATH),
        title=repo_id or "LoRA export of a NEAT adapter",
        exported_from=export_info.get("exported_from") or "a NEAT adapter",
        base_model_text=f"[{base_id}](https://huggingface.co/{base_id})" if base_id else f"`{base}` (local folder)" if base else "unknown",
        revision_text=f"`{export_info['export_base_revision']}`" if export_info.get("export_base_revision") else "not recorded",
        base_dtype=export_info.get("export_base_dtype") or "unknown",
        r=lora_config["r"],
        target_modules=", ".join(f"`{t}`" for t in targets) if isinstance(targets, list) else f"`{targets}`",
        modules_to_save=", ".join(f"`{m}`" for m in lora_config.get("modules_to_save") or []) or "none",
        neat_r=export_info.get("neat_r"),
        neat_depth=export_info.get("neat_depth"),
        neat_act_fn=export_info.get("neat_act_fn"),
        neat_scaling=export_info.get("neat_scaling"),
        model_class=model_class_for(lora_config),
        base_model_ref=base_id or "path/to/base",
        repo_ref=repo_id or "path/to/this/adapter",
        vllm_rank=vllm_max_lora_rank(lora_config["r"]) or lora_config["r"],
        issues=[str(i) for i in issues if i.level == "error"],
        versions=list(framework_versions().items()),
    )


def write_lora_card(
    directory: str | os.PathLike,
    lora_config: Mapping[str, Any],
    export_info: Mapping[str, Any],
    *,
    issues: Sequence[ServingIssue] = (),
    repo_id: str | None = None,
) -> Path:
    """Write `README.md` and `training_info.json` of an exported LoRA into `directory` (atomically)."""
    save_training_info(directory, export_info)
    path = Path(directory) / MODEL_CARD_NAME
    atomic_write_text(path, str(build_lora_card(lora_config, export_info, issues=issues, repo_id=repo_id)))
    return path
