"""The paper's evaluation protocol without a model: prompt, answer extraction, Hub-row mapping, task YAMLs.

Expected prompts and instructions are copied from LLM-Adapters evaluation logs (the strings its
`commonsense_evaluate.py` printed for the test files NEAT evaluates on; the HellaSwag context is shortened), so a change of a single space here is a
change of protocol.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from neat_hf.eval_harness import TASKS_DIR
from neat_hf.eval_harness.protocol import (
    alpaca_prompt,
    extract_boxed_answer,
    extract_commonsense_answer,
    extract_last_number,
    is_equiv_math,
    normalize_math_answer,
    numbers_match,
)

COMMONSENSE = TASKS_DIR / "commonsense"
MATH = TASKS_DIR / "math"


def _load_utils(folder: Path):
    spec = importlib.util.spec_from_file_location(f"_test_utils_{folder.name}", folder / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cs = _load_utils(COMMONSENSE)
mt = _load_utils(MATH)


# ------------------------------------------------------------------------------------------------------ prompt


def test_prompt_is_llm_adapters_byte_for_byte():
    instruction = "Please answer the following question with true or false, question: is i cant believe its not " \
                  "butter margarine?\n\nAnswer format: true/false"
    logged = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request. "
        "\n\n                ### Instruction:\n                Please answer the following question with true or "
        "false, question: is i cant believe its not butter margarine?\n\nAnswer format: true/false\n\n"
        "                ### Response:\n                "
    )
    assert alpaca_prompt(instruction) == logged


# ------------------------------------------------------------------------------------------ Hub row -> instruction

LOGGED_INSTRUCTIONS = [
    (
        cs.arc_doc,
        {"question": "When an animal population moves a long distance to another area in order to survive it is called",
         "choices": {"text": ["breeding.", "hibernation.", "migration.", "navigation."], "label": list("ABCD")},
         "answerKey": "C"},
        "Please choose the correct answer to the question: When an animal population moves a long distance to another "
        "area in order to survive it is called\n\nAnswer1: breeding. Answer2: hibernation. Answer3: migration. "
        "Answer4: navigation.\n\nAnswer format: answer1/answer2/answer3/answer4",
        "answer3",
    ),
    (
        cs.arc_doc,
        {"question": "Which two things interact most in the water cycle?",
         "choices": {"text": ["oceans and the Moon", "oceans and the Sun", "lakes and the Moon", "lakes and the Sun"],
                     "label": ["1", "2", "3", "4"]},
         "answerKey": "2"},
        "Please choose the correct answer to the question: Which two things interact most in the water cycle?\n\n"
        "Answer1: oceans and the Moon Answer2: oceans and the Sun Answer3: lakes and the Moon Answer4: lakes and the "
        "Sun\n\nAnswer format: answer1/answer2/answer3/answer4",
        "answer2",
    ),
    (
        cs.boolq_doc,
        {"question": "is i cant believe its not butter margarine", "passage": "...", "idx": 3, "label": 0},
        "Please answer the following question with true or false, question: is i cant believe its not butter "
        "margarine?\n\nAnswer format: true/false",
        "false",
    ),
    (
        cs.hellaswag_doc,
        {"activity_label": "Travel",
         "ctx": "[header] How to become an au pair in spain [title] Consult online databases.",
         "endings": ["[step] Not ensuring fluent skills can be difficult.", "[step] Correspond with all employers.",
                     "[step] Speak english.", "[step] You can find a formal language program."],
         "label": "1"},
        "Please choose the correct ending to complete the given sentence: Travel: [header] How to become an au pair in "
        "spain [title] Consult online databases.\n\nEnding1: [step] Not ensuring fluent skills can be difficult. "
        "Ending2: [step] Correspond with all employers. Ending3: [step] Speak english. Ending4: [step] You can find a "
        "formal language program.\n\nAnswer format: ending1/ending2/ending3/ending4",
        "ending2",
    ),
    (
        cs.openbookqa_doc,
        {"question_stem": "A hemisphere experiences summer when",
         "choices": {"text": ["it's tilted towards Jupiter", "it's angled towards the moon",
                              "it's angled towards the largest star in the solar system",
                              "it spins counter clockwise on Earth's axis"], "label": list("ABCD")},
         "answerKey": "C"},
        "Please choose the correct answer to the question: A hemisphere experiences summer when\n\nAnswer1: it's "
        "tilted towards Jupiter Answer2: it's angled towards the moon Answer3: it's angled towards the largest star in "
        "the solar system Answer4: it spins counter clockwise on Earth's axis\n\nAnswer format: "
        "answer1/answer2/answer3/answer4",
        "answer3",
    ),
    (
        cs.piqa_doc,
        {"goal": "Retain study notes in brain.", "sol1": "Go over notes one last time one week before test.",
         "sol2": "Go over notes one last time one day before test.", "label": 1},
        "Please choose the correct solution to the question: Retain study notes in brain.\n\nSolution1: Go over notes "
        "one last time one week before test.\n\nSolution2: Go over notes one last time one day before test.\n\n"
        "Answer format: solution1/solution2",
        "solution2",
    ),
    (
        cs.social_iqa_doc,
        {"context": "Robin wanted to share the food with a friend, so they cut the sandwich in half.",
         "question": "What does Robin need to do before this?", "answerA": "get a knife",
         "answerB": "eat half of her own sandwich", "answerC": "give half the sandwich to her friend", "label": "1"},
        "Please choose the correct answer to the question: Robin wanted to share the food with a friend, so they cut "
        "the sandwich in half. What does Robin need to do before this?\n\nAnswer1: get a knife Answer2: eat half of "
        "her own sandwich Answer3: give half the sandwich to her friend\n\nAnswer format: answer1/answer2/answer3",
        "answer1",
    ),
    (
        cs.winogrande_doc,
        {"sentence": "The jeans fit worse than the shirt because I had tried the _ on at the store.",
         "option1": "jeans", "option2": "shirt", "answer": "2"},
        "Please choose the correct answer to fill in the blank to complete the given sentence: The jeans fit worse "
        "than the shirt because I had tried the _ on at the store.\n\nOption1: jeans Option2: shirt Answer format: "
        "option1/option2",
        "option2",
    ),
]


@pytest.mark.parametrize(
    "to_doc, row, instruction, answer", LOGGED_INSTRUCTIONS, ids=[case[0].__name__ for case in LOGGED_INSTRUCTIONS]
)
def test_hub_rows_map_to_llm_adapters_instructions(to_doc, row, instruction, answer):
    doc = to_doc(row)
    assert doc == {"instruction": instruction, "answer": answer}
    assert cs.doc_to_text(doc) == alpaca_prompt(instruction)


def test_math_rows_map_to_instruction_and_target():
    gsm = mt.gsm8k_doc({"question": "How many pens are in 2 boxes?", "answer": "2 * 1200 = 2400\n#### 2,400"})
    assert gsm == {"instruction": "How many pens are in 2 boxes?", "target": "2400"}
    math_doc = mt.hendrycks_math_doc(
        {"problem": "Simplify $\\frac{2}{4}$.", "level": "Level 1", "type": "Algebra",
         "solution": "Dividing gives $\\boxed{\\dfrac{1}{2}}$."}
    )
    assert math_doc == {"instruction": "Simplify $\\frac{2}{4}$.", "target": "\\dfrac{1}{2}"}


# ---------------------------------------------------------------------------------------------- extraction

@pytest.mark.parametrize(
    "response, kind, expected",
    [
        ("the correct answer is answer3", "answer", "answer3"),
        (" the correct answer is answer2. answer1 is wrong because", "answer", "answer2"),  # the first one counts
        ("The correct answer is Answer3", "answer", ""),  # case-sensitive, as LLM-Adapters
        ("the correct answer is true", "true_false", "true"),
        ("the correct answer is false, the statement is true only in", "true_false", "false"),
        ("Yes, it is.", "true_false", ""),
        ("the statement is untrue", "true_false", "true"),  # substring match, as LLM-Adapters
        ("the correct answer is solution2", "solution", "solution2"),
        ("the correct answer is ending4\n\n### Instruction:", "ending", "ending4"),
        ("the correct answer is option1", "option", "option1"),
        ("", "option", ""),
    ],
)
def test_commonsense_extraction(response, kind, expected):
    assert extract_commonsense_answer(response, kind) == expected


def test_commonsense_extraction_rejects_unknown_kind():
    with pytest.raises(ValueError, match="expected one of"):
        extract_commonsense_answer("answer1", "letters")


def test_commonsense_filters_keep_lm_eval_shapes():
    resps = [["the correct answer is answer2", "answer1"], ["no idea"]]
    assert cs.filter_answer(resps, [{}, {}]) == [["answer2", "answer1"], [""]]
    assert cs.filter_true_false([["true"]], [{}]) == [["true"]]
    assert cs.filter_solution([["solution1"]], [{}]) == [["solution1"]]
    assert cs.filter_ending([["ending3"]], [{}]) == [["ending3"]]
    assert cs.filter_option([["option2"]], [{}]) == [["option2"]]


GSM8K_RESPONSE = (
    "Janet's ducks lay 16 eggs per day. She eats 3 for breakfast every morning and bakes muffins with 4. So she has "
    "16 - 3 - 4 = 9 eggs left. She sells them for $2 each, so she makes 9 * $2 = $18 every day.\nThe answer is: 18"
)


@pytest.mark.parametrize(
    "response, label, correct",
    [
        (GSM8K_RESPONSE, "18", True),
        ("He earns 5 * $250 = $1,250 per week. The answer is 1,250.", "1250", True),
        ("The temperature drops to -3.5 degrees.", "-3.5", True),
        ("It is 18.0004 metres.", "18", True),  # within 1e-3
        ("It is 18.01 metres.", "18", False),
        ("The answer is: 17\n\nQuestion: what is 18?", "18", True),  # the last number wins, whatever follows
        ("I cannot solve this.", "18", False),
    ],
)
def test_gsm8k_last_number_with_tolerance(response, label, correct):
    assert numbers_match(extract_last_number(response), label) is correct
    assert mt.process_results_gsm8k({"target": label}, [extract_last_number(response)]) == {"exact_match": int(correct)}


@pytest.mark.parametrize(
    "response, label, correct",
    [
        ("We get $\\frac{2}{4} = \\boxed{\\frac{1}{2}}$.\nThe answer is: \\frac{1}{2}", "\\dfrac12", True),
        ("So $x = \\boxed{0.5}$.", "\\frac{1}{2}", True),
        ("The point is $\\boxed{(3, 4)}$.", "\\left( 3, 4 \\right)", True),
        ("Thus $\\boxed{x = 5}$.", "5", True),
        ("The side is $\\boxed{5 \\text{ cm}}$.", "5", True),
        ("The angle is $\\boxed{90^\\circ}$.", "90", True),
        ("So $\\boxed{\\sqrt2}$.", "\\sqrt{2}", True),
        ("It grows by $\\boxed{10\\%}$.", "10", True),
        ("First $\\boxed{1}$, then correcting, $\\boxed{2}$.", "2", True),  # the last box counts
        ("So the answer is \\boxed 7$.", "7", True),
        ("The answer is $\\boxed{3}$.", "4", False),
        ("The answer is: 5", "5", False),  # no box, no credit
        ("The answer is $\\boxed{3", "3", False),  # unbalanced
    ],
)
def test_math_boxed_answer_after_normalisation(response, label, correct):
    extracted = mt.filter_boxed([[response]], [{}])[0][0]
    assert mt.process_results_hendrycks_math({"target": label}, [extracted]) == {"exact_match": int(correct)}


def test_math_helpers():
    assert extract_boxed_answer("a \\boxed{\\frac{1}{\\sqrt{2}}} b") == "\\frac{1}{\\sqrt{2}}"
    assert extract_boxed_answer("\\fbox{4}") == "4"
    assert extract_boxed_answer("no box") is None
    assert normalize_math_answer("\\tfrac{3}{4}") == "\\frac{3}{4}" == normalize_math_answer("3/4")
    assert normalize_math_answer(".5") == "\\frac{1}{2}"
    assert is_equiv_math(None, "1") is False
    # where the MATH normalisation gives up (two unit markers), the raw strings are compared, as in the original
    assert is_equiv_math("1 \\text{ m} 2 \\text{ s}", "1 \\text{ m} 2 \\text{ s}") is True


# --------------------------------------------------------------------------------------------------- task YAMLs


def _yaml(path: Path) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(path, resolve_func=True)


GEN_TASKS = {
    "neat_boolq_gen": (COMMONSENSE, 32), "neat_piqa_gen": (COMMONSENSE, 32), "neat_social_iqa_gen": (COMMONSENSE, 32),
    "neat_hellaswag_gen": (COMMONSENSE, 32), "neat_winogrande_gen": (COMMONSENSE, 32),
    "neat_arc_easy_gen": (COMMONSENSE, 32), "neat_arc_challenge_gen": (COMMONSENSE, 32),
    "neat_openbookqa_gen": (COMMONSENSE, 32), "neat_gsm8k_gen": (MATH, 256),
    **{f"neat_hendrycks_math_gen_{s}": (MATH, 512) for s in ("algebra", "counting_and_prob", "geometry",
                                                               "intermediate_algebra", "num_theory", "prealgebra",
                                                               "precalc")},
}


@pytest.mark.parametrize("name", sorted(GEN_TASKS))
def test_generation_tasks_follow_the_paper_protocol(name):
    folder, max_new_tokens = GEN_TASKS[name]
    config = _yaml(folder / f"{name}.yaml")
    assert config["task"] == name
    assert config["output_type"] == "generate_until"
    assert config["num_fewshot"] == 0
    assert config["generation_kwargs"] == {"until": [], "do_sample": False, "max_gen_toks": max_new_tokens}
    assert config["doc_to_text"]({"instruction": "Q?"}) == alpaca_prompt("Q?")
    assert callable(config["process_docs"])
    (pipeline,) = config["filter_list"]
    assert pipeline["name"] == "extract"
    assert callable(pipeline["filter"][0]["filter_fn"])
    assert config["metric_list"][0]["metric"] == "exact_match"
    assert config["metadata"]["version"] >= 1.0
    assert config["dataset_path"] in {
        "aps/super_glue", "baber/piqa", "lighteval/siqa", "Rowan/hellaswag", "allenai/winogrande", "allenai/ai2_arc",
        "allenai/openbookqa", "openai/gsm8k", "EleutherAI/hendrycks_math",
    }


def test_groups_list_their_tasks():
    def group(folder, name):
        return _yaml(folder / f"{name}.yaml")

    assert group(COMMONSENSE, "neat_commonsense")["task"] == [
        "boolq", "piqa", "social_iqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]
    gen = group(COMMONSENSE, "neat_commonsense_gen")
    assert gen["task"] == [n for n in GEN_TASKS if GEN_TASKS[n][0] == COMMONSENSE]
    assert gen["aggregate_metric_list"][0]["weight_by_size"] is False  # the paper averages datasets
    assert group(MATH, "neat_math")["task"] == ["gsm8k", "minerva_math"]
    assert group(MATH, "neat_math_gen")["task"] == ["neat_gsm8k_gen", "neat_hendrycks_math_gen"]
    assert sorted(group(MATH, "neat_hendrycks_math_gen")["task"]) == sorted(
        n for n in GEN_TASKS if n.startswith("neat_hendrycks_math_gen_"))


def test_stock_names_used_by_our_groups_exist_in_lm_eval():
    import lm_eval

    stock = Path(lm_eval.__file__).parent / "tasks"
    names = set()
    for path in stock.rglob("*.yaml"):
        names.update(re.findall(r"^(?:task|group):\s*(\S+)\s*$", path.read_text(errors="ignore"), flags=re.MULTILINE))
    used = _yaml(COMMONSENSE / "neat_commonsense.yaml")["task"] + _yaml(MATH / "neat_math.yaml")["task"]
    assert set(used) <= names, sorted(set(used) - names)


def test_task_index_finds_every_bundled_task():
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    expected = set(GEN_TASKS) | {"neat_commonsense", "neat_commonsense_gen", "neat_math", "neat_math_gen",
                                 "neat_hendrycks_math_gen", "neat_number_words"}  # the main job's offline task
    assert {n for n in manager.all_tasks if n.startswith("neat")} == expected
    assert not any(n.startswith("_") for n in manager.all_tasks)  # templates are not tasks
