"""Every ```python block of README.md and of the documentation pages runs (issues 14 and 23), so they stay true.

The blocks run in order (README, then docs/ in the site's nav order), in a scratch folder; each starts from the names
the Quick start (README's first block) defined, which later sections continue from, with `model` the Quick start's
adapter loaded afresh (the Quick start ends by merging it away), plus the reader's context (`train`, `dev`, a
tokenized `batch` of three prompts, a Hub adapter `my-user/neat-chat`); with Hub model ids redirected to tiny local
stand-ins (`STAND_INS`) and the Hub itself served by the loopback server. A block that cannot run here says so in a
marker comment with its reason, e.g. `# not-run: needs a GPU`; a marker without a reason fails the test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset
from hub_fixtures import hub_server  # noqa: F401 (fixture)
from train_cli_helpers import save_tiny_llama
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from neat_hf.cli.train.main import cli

ROOT = Path(__file__).resolve().parent.parent
NOT_RUN = re.compile(r"#\s*not-run:(.*)")
#: Hub ids used in README and docs snippets -> which tiny local model stands in for them.
STAND_INS = {
    "meta-llama/Llama-2-7b-hf": "llama",
    "meta-llama/Meta-Llama-3-8B": "llama",
    "FacebookAI/roberta-base": "roberta",
}


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of each ```python block."""
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


def nav_pages(nav: list) -> list[str]:
    """The page paths of an mkdocs.yml `nav`, in order."""
    pages: list[str] = []
    for entry in nav:
        for value in (entry.values() if isinstance(entry, dict) else [entry]):
            pages.extend(nav_pages(value) if isinstance(value, list) else [value])
    return pages


def snippet_sources() -> list[tuple[str, str]]:
    """(name, text) of README.md, then of every documentation page in the site's nav order."""
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    pages = [f"docs/{page}" for page in nav_pages(nav)]
    return [(name, (ROOT / name).read_text(encoding="utf-8")) for name in ["README.md", *pages]]


def test_every_docs_page_is_in_the_nav():
    """A page outside the nav would have its Python blocks skipped here (mkdocs --strict also refuses it)."""
    listed = {name for name, _ in snippet_sources()}
    on_disk = {path.relative_to(ROOT).as_posix() for path in (ROOT / "docs").rglob("*.md")}
    assert on_disk <= listed, sorted(on_disk - listed)


def not_run_reason(code: str) -> str | None:
    match = NOT_RUN.search(code)
    return None if match is None else match.group(1).strip()


def test_not_run_markers_are_found_and_need_a_reason():
    blocks = python_blocks("x\n```python\n# not-run: needs a GPU\nimport x\n```\n```python\nprint(1)\n```\n")
    assert [not_run_reason(code) for _, code in blocks] == ["needs a GPU", None]


def _save_tiny_roberta(folder: Path) -> str:
    from train_cli_helpers import byte_level_bpe_tokenizer

    tokenizer = byte_level_bpe_tokenizer()
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id or 0)
    RobertaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _after_quick_start(namespace: dict, llama: str) -> dict:
    """What later sections assume after the Quick start: its adapter loaded on a fresh base (`model`), a batch of
    prompts, and a second adapter on the Hub (`my-user/neat-chat`, for the mixed-batch example)."""
    from neat_hf import NeatConfig, NeatModel, get_neat_model

    tokenizer = AutoTokenizer.from_pretrained(llama)
    tokenizer.pad_token = tokenizer.eos_token
    chat = get_neat_model(AutoModelForCausalLM.from_pretrained(llama), NeatConfig(r=4, init_weights=False))
    chat.push_to_hub("my-user/neat-chat")
    model = NeatModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama), "llama2-neat")
    batch = tokenizer(["a b c", "hello", "x y"], return_tensors="pt", padding=True)
    return {**namespace, "model": model, "batch": batch}


@pytest.mark.slow
def test_readme_python_snippets_run(tmp_path, monkeypatch, hub_server):  # noqa: F811 (fixture)
    folders = {"llama": save_tiny_llama(tmp_path / "stand-in-llama"), "roberta": _save_tiny_roberta(tmp_path / "stand-in-roberta")}
    for auto in (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer):
        original = auto.from_pretrained.__func__

        def redirected(cls, name, *args, _original=original, **kwargs):
            return _original(cls, folders[STAND_INS[name]] if name in STAND_INS else name, *args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", classmethod(redirected))
    work = tmp_path / "reader"
    work.mkdir()
    monkeypatch.chdir(work)
    # What the snippets take from the reader's context: the main job's output and small datasets.
    assert cli(["--max_steps", "10", "--max_train_samples", "64", "--max_eval_samples", "16"]) == 0
    ids = torch.randint(3, 100, (8, 12), generator=torch.Generator().manual_seed(0)).tolist()
    rows = {"input_ids": ids, "attention_mask": [[1] * 12] * 8, "labels": [i % 2 for i in range(8)]}
    context: dict = {"train": Dataset.from_dict(rows), "dev": Dataset.from_dict(rows)}
    quick_start: dict | None = None

    ran, skipped = [], []
    for source, text in snippet_sources():
        for line, code in python_blocks(text):
            where = f"{source}:{line}"
            reason = not_run_reason(code)
            if reason is not None:
                assert reason, f"{where}: a `# not-run:` marker needs a reason"
                skipped.append(where)
                continue
            namespace = dict(context if quick_start is None else quick_start)
            try:
                exec(compile(code, where, "exec"), namespace)
            except Exception as err:  # the message names the file and line
                raise AssertionError(f"{where}: the snippet fails: {type(err).__name__}: {err}") from err
            ran.append(where)
            if quick_start is None:
                quick_start = _after_quick_start(namespace, folders["llama"])
    assert len(ran) >= 7, (ran, skipped)
    assert any(where.startswith("docs/") for where in ran), ran
