"""The distribution installs one import namespace, `neat_hf`, with its data files, in regular (wheel) installs.

(The editable install is what the test run itself uses: every other test imports `neat_hf.*` through it.)
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )
    (path,) = out.glob("neat_hf-*.whl")
    return path


@pytest.mark.slow
def test_wheel_has_one_namespace_and_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/", 1)[0] for n in names if not n.startswith("neat_hf-")}
    # No top-level `hub`, `trainers`, `eval_harness`; beside `neat_hf` only the stock `lm_eval --model neat` hook: the
    # start-up line (setup.py) and the module it imports in lm-eval processes only, which must not import `neat_hf`.
    assert top_level == {"neat_hf", "neat_hf_lm_eval.pth", "_neat_hf_lm_eval.py"}, top_level
    assert zipfile.ZipFile(wheel).read("neat_hf_lm_eval.pth") == (ROOT / "neat_hf_lm_eval.pth").read_bytes()
    for expected in (
        "neat_hf/__init__.py",
        "neat_hf/layer.py",
        "neat_hf/cards/templates/adapter_card.md",  # the card templates (package data of neat_hf.cards)
        "neat_hf/cards/templates/lora_export_card.md",
        "neat_hf/hub/__init__.py",
        "neat_hf/hub/commit.py",
        "neat_hf/export/merged.py",
        "neat_hf/parallel/zero3.py",
        "neat_hf/cli/train/__main__.py",
        "neat_hf/cli/train/recipes/tiny_llama_config.json",
        "neat_hf/trainers/train.py",  # the `python -m neat_hf.trainers.train` alias
        "neat_hf/trainers/__init__.py",
        "neat_hf/eval_harness/__init__.py",
        "neat_hf/deepspeed_configs/zero3.json",
        "neat_hf/trainers/accelerate_configs/fsdp2.yaml",
        "neat_hf/integrations/axolotl/plugin.py",
    ):
        assert expected in names, expected
    assert any(n.startswith("neat_hf/cli/train/recipes/") and n.endswith(".yaml") for n in names)
    assert any(n.startswith("neat_hf/eval_harness/tasks/") and n.endswith(".yaml") for n in names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in ("neat-train", "neat-hub", "neat-lm-eval", "[lm_eval.models]"):
        assert script in text


@pytest.mark.slow
def test_regular_install_imports_from_site_packages(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import neat_hf, neat_hf.hub, neat_hf.trainers, neat_hf.eval_harness, neat_hf.cards, neat_hf.export, neat_hf.cli.train.main;"
        "assert neat_hf.__file__.startswith(sys.argv[1]), neat_hf.__file__;"
        "print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_import_paths_that_moved_still_resolve():
    """The names the docs showed under `neat_hf.hub` before the core was split into rooms stay importable there, as
    the same objects as in their homes (`neat_hf.cards`, `neat_hf.export`, ...)."""
    import neat_hf.cards.adapter_card as cards
    import neat_hf.eval_harness.results as results
    import neat_hf.export.merged as merged
    import neat_hf.export.saved_adapter as saved
    import neat_hf.hub as hub
    import neat_hf.training_info as training_info

    assert hub.write_model_card is cards.write_model_card and hub.build_model_card is cards.build_model_card
    assert hub.merge_eval_results is cards.merge_eval_results
    assert hub.export_merged is merged.export_merged and hub.export_lora is saved.export_lora
    assert hub.load_training_info is training_info.load_training_info
    assert hub.eval_results_from_lm_eval is results.eval_results_from_lm_eval
    from neat_hf.cards import CardFacts, write_model_card  # noqa: F401
    from neat_hf.export import export_lora, export_merged  # noqa: F401
    from neat_hf.trainers import NeatArguments, NeatTrainer, NeatTrainingArguments  # noqa: F401


@pytest.mark.slow
def test_the_old_module_path_of_neat_train_still_launches():
    """`python -m neat_hf.trainers.train` (the path launch commands were written with) runs `neat-train`."""
    for module in ("neat_hf.cli.train", "neat_hf.trainers.train"):
        done = subprocess.run([sys.executable, "-m", module, "--list"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "commonsense/llama3-8b" in done.stdout


@pytest.mark.slow
def test_the_version_is_written_once(wheel):
    """`neat_hf/constants.py` holds the one version literal: pyproject.toml reads it (`dynamic`), setuptools reads it
    without importing neat_hf (so without torch), and the wheel and `neat_hf.__version__` carry it."""
    import tomllib

    import neat_hf
    from neat_hf.constants import LIBRARY_VERSION

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert wheel.name.startswith(f"neat_hf-{LIBRARY_VERSION}-"), wheel.name
    metadata = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
    assert f"\nVersion: {LIBRARY_VERSION}\n" in zipfile.ZipFile(wheel).read(metadata).decode()
    assert neat_hf.__version__ == LIBRARY_VERSION
    code = (
        "import sys; from setuptools.config.expand import read_attr;"
        "version = read_attr('neat_hf.constants.LIBRARY_VERSION', {'neat_hf': 'neat_hf'}, sys.argv[1]);"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('neat_hf', 'torch')], 'imported to read it';"
        "print(version)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == LIBRARY_VERSION, result.stderr
    sources = [ROOT / "pyproject.toml", ROOT / "setup.py",
               *(path for folder in ("neat_hf", "hub", "trainers", "eval_harness") for path in (ROOT / folder).rglob("*.py"))]
    written = [path.relative_to(ROOT).as_posix() for path in sources
               if f'"{LIBRARY_VERSION}"' in path.read_text(encoding="utf-8")]
    assert written == ["neat_hf/constants.py"], written
