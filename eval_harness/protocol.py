"""The NEAT paper's generation protocol: prompt, answer extraction and answer comparison.

NEAT's Tables 1-2 (arXiv 2410.01870) follow the LLM-Adapters evaluation (arXiv 2304.01933), which MiLoRA and DoRA
reuse: zero-shot, one Alpaca-style instruction prompt, greedy generation, then a regular expression pulls the answer
out of the response. This module holds those pieces once, as plain functions, so that the bundled lm-eval tasks
(`tasks/commonsense`, `tasks/math`) and anything that formats training data can share them.

Provenance: the prompt string and the commonsense/GSM8K extraction reproduce `generate_prompt`, `extract_answer` and
`extract_answer_number` of LLM-Adapters' `commonsense_evaluate.py` / `evaluate.py` (also shipped, unchanged, in the
authors' PEANuT repository `yibozhong/peanut`, `commonsense&math/`). The MATH normalisation follows the MATH
benchmark's `is_equiv` (Hendrycks et al. 2021, MIT licence), as in lm-eval's `hendrycks_math` task.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from neat_hf.errors import NeatError

__all__ = [
    "ALPACA_PROMPT",
    "COMMONSENSE_ANSWER_PATTERNS",
    "GSM8K_TOLERANCE",
    "alpaca_prompt",
    "apply_to_responses",
    "extract_boxed_answer",
    "extract_commonsense_answer",
    "extract_last_number",
    "is_equiv_math",
    "last_boxed_only_string",
    "normalize_math_answer",
    "numbers_match",
    "parse_number",
    "remove_boxed",
]

#: The evaluation prompt of LLM-Adapters and of the NEAT/PEANuT authors' scripts, byte for byte. The odd indentation
#: (16 spaces before the section headers and after "### Response:") and the space after "request." are part of it:
#: they come from an indented triple-quoted f-string, and models fine-tuned with the same scripts saw the same
#: layout during training, so it is kept rather than tidied.
ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request. \n"
    "\n"
    "                ### Instruction:\n"
    "                {instruction}\n"
    "\n"
    "                ### Response:\n"
    "                "
)

#: What LLM-Adapters' `extract_answer` looks for, per dataset: the *first* match in the response is the prediction
#: and must equal the label exactly (case-sensitive).
COMMONSENSE_ANSWER_PATTERNS: dict[str, str] = {
    "true_false": r"true|false",  # BoolQ
    "solution": r"solution1|solution2",  # PIQA
    "answer": r"answer1|answer2|answer3|answer4|answer5",  # SIQA, ARC-e, ARC-c, OpenBookQA
    "ending": r"ending1|ending2|ending3|ending4",  # HellaSwag
    "option": r"option1|option2",  # WinoGrande
}

#: LLM-Adapters counts a GSM8K prediction correct when it is within this distance of the label.
GSM8K_TOLERANCE = 1e-3

_NUMBER_RE = re.compile(r"-?\d+\.?\d*")


def alpaca_prompt(instruction: str) -> str:
    """Wrap an instruction in the paper's Alpaca-style evaluation prompt ([`ALPACA_PROMPT`]).

    Example:
        >>> alpaca_prompt("Add 2 and 3.").endswith("### Response:\\n                ")
        True
    """
    return ALPACA_PROMPT.format(instruction=instruction)


def extract_commonsense_answer(response: str, kind: str) -> str:
    """Return the first answer label of the given kind in a model response, or `""` if there is none.

    Args:
        response (`str`): the generated text (the part after `### Response:`).
        kind (`str`): one of the keys of [`COMMONSENSE_ANSWER_PATTERNS`] (`"true_false"`, `"solution"`, `"answer"`,
            `"ending"`, `"option"`).

    Example:
        >>> extract_commonsense_answer("the correct answer is answer3", "answer")
        'answer3'
    """
    try:
        pattern = COMMONSENSE_ANSWER_PATTERNS[kind]
    except KeyError:
        raise NeatError(
            f"Unknown answer kind {kind!r}; expected one of {sorted(COMMONSENSE_ANSWER_PATTERNS)}."
        ) from None
    matches = re.findall(pattern, response.strip())
    return matches[0] if matches else ""


def extract_last_number(response: str) -> str:
    """Return the last number in a response as text (thousands separators removed), or `""` if there is none.

    This is LLM-Adapters' GSM8K extraction: commas are dropped, then the last match of `-?\\d+\\.?\\d*` wins.

    Example:
        >>> extract_last_number("She pays 3 * $1,250 = $3,750. The answer is 3750.")
        '3750.'
    """
    matches = _NUMBER_RE.findall(response.replace(",", ""))
    return matches[-1] if matches else ""


def parse_number(text: str) -> float:
    """Parse a number as [`extract_last_number`] returns it; anything unparsable (including `""`) becomes `inf`."""
    try:
        return float(text.replace(",", "").strip())
    except ValueError:
        return math.inf


def numbers_match(prediction: str, label: str, tolerance: float = GSM8K_TOLERANCE) -> bool:
    """Whether two numbers given as text are within `tolerance` of each other (an unparsable one never matches)."""
    pred, gold = parse_number(prediction), parse_number(label)
    return math.isfinite(pred) and math.isfinite(gold) and abs(pred - gold) <= tolerance


# ----------------------------------------------------------------------------------------------------------------
# MATH: boxed answer + normalisation
# ----------------------------------------------------------------------------------------------------------------


def last_boxed_only_string(text: str) -> str | None:
    """Return the last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed x`) in `text`, braces included, or `None`."""
    if "\\boxed " in text:
        # "\boxed 5$" style: the answer runs to the next "$" (or the end).
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    idx = text.rfind("\\boxed")
    if idx < 0:
        idx = text.rfind("\\fbox")
        if idx < 0:
            return None
    depth = 0
    for i in range(idx, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[idx : i + 1]
    return None


def remove_boxed(boxed: str | None) -> str | None:
    """Strip the `\\boxed{` ... `}` (or `\\fbox{`, `\\boxed `) wrapper; `None` if `boxed` is not such a string."""
    if boxed is None:
        return None
    if boxed.startswith("\\boxed "):
        return boxed[len("\\boxed ") :]
    for left in ("\\boxed{", "\\fbox{"):
        if boxed.startswith(left) and boxed.endswith("}"):
            return boxed[len(left) : -1]
    return None


def extract_boxed_answer(text: str) -> str | None:
    """The content of the last boxed expression in `text`, or `None` if it has none.

    Example:
        >>> extract_boxed_answer("so $x = \\\\boxed{\\\\frac{1}{2}}$.")
        '\\\\frac{1}{2}'
    """
    return remove_boxed(last_boxed_only_string(text))


# The helpers below port the MATH benchmark's `strip_string` step by step. Where the original fails (an `assert` or an
# index error), they raise `_Unnormalizable`, and `is_equiv_math` then compares the raw strings, as the original does.


class _Unnormalizable(ValueError):
    pass


def _fix_fracs(string: str) -> str:
    # "\frac12" -> "\frac{1}{2}", "\frac1{72}" -> "\frac{1}{72}"
    parts = string.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if not part:
            raise _Unnormalizable(string)
        if part[0] == "{":
            out += part
            continue
        if len(part) < 2:
            return string
        a, b, rest = part[0], part[1], part[2:]
        out += "{" + a + "}" + b + rest if b == "{" else "{" + a + "}{" + b + "}" + rest
    return out


def _fix_a_slash_b(string: str) -> str:
    # "3/4" (two canonical integers only) -> "\frac{3}{4}"
    parts = string.split("/")
    if len(parts) != 2:
        return string
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        raise _Unnormalizable(string) from None
    if string != f"{a}/{b}":
        return string
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


def _remove_right_units(string: str) -> str:
    # "5 \text{ cm}" -> "5"
    if "\\text{ " not in string:
        return string
    parts = string.split("\\text{ ")
    if len(parts) != 2:
        raise _Unnormalizable(string)
    return parts[0]


def _fix_sqrt(string: str) -> str:
    # "\sqrt3" -> "\sqrt{3}"
    parts = string.split("\\sqrt")
    out = parts[0]
    for part in parts[1:]:
        if not part:
            raise _Unnormalizable(string)
        out += "\\sqrt" + part if part[0] == "{" else "\\sqrt{" + part[0] + "}" + part[1:]
    return out


def normalize_math_answer(answer: str) -> str:
    """Canonicalise a MATH answer string as the MATH benchmark's `strip_string` does.

    Removes line breaks, `\\!`, `\\left`/`\\right`, degrees, `\\$`, `\\%`, units and spaces; writes `tfrac`/`dfrac`
    as `frac`, `0.5` for `.5`, `\\frac{a}{b}` for `a/b` and for `\\fracab`; drops a short left-hand side (`x = 5`);
    and maps `0.5` to `\\frac{1}{2}`. Raises `ValueError` where the original would fail.

    Example:
        >>> normalize_math_answer("\\\\dfrac{1}{2}") == normalize_math_answer("0.5")
        True
    """
    string = answer.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    string = string.replace("tfrac", "frac").replace("dfrac", "frac")
    string = string.replace("\\left", "").replace("\\right", "")
    string = string.replace("^{\\circ}", "").replace("^\\circ", "")
    string = string.replace("\\$", "")
    string = _remove_right_units(string)
    string = string.replace("\\%", "")
    string = string.replace(" .", " 0.").replace("{.", "{0.")
    if not string:
        return string
    if string[0] == ".":
        string = "0" + string
    sides = string.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        string = sides[1]
    string = _fix_sqrt(string)
    string = string.replace(" ", "")
    string = _fix_fracs(string)
    if string == "0.5":
        string = "\\frac{1}{2}"
    return _fix_a_slash_b(string)


def is_equiv_math(prediction: str | None, label: str | None) -> bool:
    """Whether two MATH answers are equal after [`normalize_math_answer`] (the raw strings where that fails).

    A missing prediction (`None`, no boxed answer) never matches.
    """
    if prediction is None or label is None:
        return False
    try:
        return normalize_math_answer(prediction) == normalize_math_answer(label)
    except ValueError:
        return prediction == label


def apply_to_responses(responses: Sequence[Sequence[str]], extract: Callable[[str], str]) -> list[list[str]]:
    """Apply `extract` to every response of every document (the shape lm-eval's filters work on)."""
    return [[extract(response) for response in doc_responses] for doc_responses in responses]
