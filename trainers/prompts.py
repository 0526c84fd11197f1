"""Prompt templates of instruction data: LLM-Adapters' (Alpaca) prompt, which the paper's commonsense and math
recipes train and evaluate with, and its short variant for the embedded default job."""

from __future__ import annotations

from neat_hf.errors import TrainingArgumentError

#: LLM-Adapters' prompt (the Alpaca template, without the stray indentation of LLM-Adapters' source), with an input.
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
#: LLM-Adapters' prompt for rows whose `input` is empty (all of Commonsense170K and MetaMathQA).
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
#: Prompt templates by name (`--prompt_template`): `(with input, without input)`. `llm-adapters-short` keeps the
#: sections but drops the preamble sentence, which only costs tokens for a model that was never instruction-tuned
#: (the embedded default's tiny random LLaMA learns its task several times faster with it).
PROMPT_TEMPLATES: dict[str, tuple[str, str]] = {
    "llm-adapters": (PROMPT_WITH_INPUT, PROMPT_NO_INPUT),
    "llm-adapters-short": (
        PROMPT_WITH_INPUT.split("\n\n", 1)[1],
        PROMPT_NO_INPUT.split("\n\n", 1)[1],
    ),
}

def format_instruction_prompt(instruction: str, input: str | None = None, *, template: str = "llm-adapters") -> str:
    """Renders the LLM-Adapters prompt, ending with `"### Response:\\n"`; the response follows it directly.

    Args:
        instruction (`str`): The task.
        input (`str`, *optional*): Extra context; the template without an input section is used when empty.
        template (`str`, *optional*, defaults to `"llm-adapters"`): A key of `PROMPT_TEMPLATES`.

    Example:
        >>> format_instruction_prompt("What is 2 + 2?").endswith("### Response:\\n")
        True
    """
    if template not in PROMPT_TEMPLATES:
        raise TrainingArgumentError(f"Unknown prompt_template {template!r}. Use one of {sorted(PROMPT_TEMPLATES)}.")
    with_input, without_input = PROMPT_TEMPLATES[template]
    if input:
        return with_input.format(instruction=instruction, input=input)
    return without_input.format(instruction=instruction)
