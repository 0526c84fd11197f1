"""The one build step pyproject.toml cannot declare: a `.pth` file at the top of site-packages.

Everything else about the package is in pyproject.toml. `neat_hf_lm_eval.pth` lets the stock `lm_eval` command find
`--model neat` (see `_neat_hf_lm_eval.py`); setuptools has no setting that installs a file outside a package, so the
`build_startup_files` step below copies it next to the packages, for wheels and for editable installs alike.
"""

from __future__ import annotations

import os

from setuptools import Command, setup
from setuptools.command.build import build

#: Files installed at the top of site-packages. Empty it once lm-eval loads `lm_eval.models` entry points.
STARTUP_FILES = ["neat_hf_lm_eval.pth"]


class build_startup_files(Command):  # noqa: N801 - setuptools command names are lower case
    """Copy `STARTUP_FILES` to where the wheel's top level is assembled."""

    description = "copy interpreter start-up (.pth) files to the top of site-packages"
    user_options: list = []

    def initialize_options(self) -> None:
        self.build_lib: str | None = None
        self.editable_mode = False  # setuptools sets it for `pip install -e` (editable_wheel)

    def finalize_options(self) -> None:
        self.set_undefined_options("build", ("build_lib", "build_lib"))

    def _target_dir(self) -> str:
        if self.editable_mode:
            # An editable wheel holds a path finder, not the build folder; setuptools points `install_lib` at the
            # unpacked wheel there, which is where the top-level files of an editable install go.
            return self.get_finalized_command("install").install_lib
        return self.build_lib

    def run(self) -> None:
        for name in STARTUP_FILES:
            self.copy_file(name, os.path.join(self._target_dir(), name))

    def get_source_files(self) -> list[str]:
        return list(STARTUP_FILES)  # also puts them in the sdist

    def get_outputs(self) -> list[str]:
        return [os.path.join(self._target_dir(), name) for name in STARTUP_FILES]


class Build(build):
    sub_commands = [*build.sub_commands, ("build_startup_files", None)]


setup(cmdclass={"build": Build, "build_startup_files": build_startup_files})
