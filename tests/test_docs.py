"""The documentation site (mkdocs.yml, docs/) builds in strict mode: a broken link, anchor or API reference fails.

The build reads the docstrings from the sources (no import of neat-hf, see docs/hooks.py) and takes a few seconds.
The Python blocks of the pages run in tests/test_readme.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        cwd=config.parent, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_docs_site_builds_strictly(tmp_path):
    result = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    site = tmp_path / "site"
    api = (site / "reference" / "model" / "index.html").read_text(encoding="utf-8")
    assert "get_neat_model" in api and "NeatConfig" in api, "the API reference is generated from the docstrings"
    assert (site / "results" / "charts" / "train_cpu_cpu_fp32.png").is_file()


def test_a_broken_link_fails_the_strict_build(tmp_path):
    """The check can fail: a copy of the site with one link to a missing page does not build."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    for name in ("mkdocs.yml", "pyproject.toml", "benchmarks", "neat_hf", "trainers", "hub", "eval_harness",
                 "deepspeed_configs"):
        (copy / name).symlink_to(ROOT / name)
    page = copy / "docs" / "reliability.md"
    page.write_text(page.read_text(encoding="utf-8") + "\nSee [the missing page](no-such-page.md).\n", encoding="utf-8")
    result = _build(copy / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stdout + result.stderr


def test_readme_is_short_and_links_into_the_docs():
    """Issue 23: README was 1,140 lines; it keeps what/why, install, the quick start, the main job and links (the
    rest lives in docs/), and every docs link it holds points to a page that exists."""
    import re

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", text)
    assert len(links) >= 10
    assert all((ROOT / link).is_file() for link in links), [link for link in links if not (ROOT / link).is_file()]
