"""What an adapter's `task_type` (or PEFT's `auto_mapping`) implies: the Hub pipeline tag and the transformers class.

The model card shows both (metadata `pipeline_tag`, the loading snippet), and `neat-hub merge` loads the base model with
the class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: PEFT task_type -> Hub pipeline_tag.
TASK_TYPE_TO_PIPELINE_TAG = {
    "CAUSAL_LM": "text-generation",
    "SEQ_2_SEQ_LM": "text2text-generation",
    "SEQ_CLS": "text-classification",
    "TOKEN_CLS": "token-classification",
    "QUESTION_ANS": "question-answering",
    "FEATURE_EXTRACTION": "feature-extraction",
}
#: transformers class-name suffix -> Hub pipeline_tag (for adapters saved without task_type, e.g. ViT classifiers).
_CLASS_SUFFIX_TO_PIPELINE_TAG = (
    ("ForCausalLM", "text-generation"),
    ("ForConditionalGeneration", "text2text-generation"),
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForImageClassification", "image-classification"),
    ("ForMaskedLM", "fill-mask"),
)
#: PEFT task_type -> transformers auto class used in the card's snippet and by `neat-hub merge`.
TASK_TYPE_TO_AUTO_CLASS = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}


def pipeline_tag_for(adapter_config: Mapping[str, Any]) -> str | None:
    """The Hub pipeline tag implied by an adapter's `task_type`, or its base class (`auto_mapping`)."""
    task_type = adapter_config.get("task_type")
    if task_type in TASK_TYPE_TO_PIPELINE_TAG:
        return TASK_TYPE_TO_PIPELINE_TAG[task_type]
    cls = (adapter_config.get("auto_mapping") or {}).get("base_model_class") or ""
    for suffix, tag in _CLASS_SUFFIX_TO_PIPELINE_TAG:
        if cls.endswith(suffix):
            return tag
    return None


def model_class_for(adapter_config: Mapping[str, Any]) -> str:
    """transformers class to load the base with: from `task_type`, else PEFT's `auto_mapping`, else `AutoModel`."""
    task_type = adapter_config.get("task_type")
    if task_type in TASK_TYPE_TO_AUTO_CLASS:
        return TASK_TYPE_TO_AUTO_CLASS[task_type]
    mapping = adapter_config.get("auto_mapping") or {}
    cls, library = mapping.get("base_model_class"), str(mapping.get("parent_library") or "")
    if isinstance(cls, str) and cls.isidentifier() and library.startswith("transformers"):
        return cls
    return "AutoModel"
