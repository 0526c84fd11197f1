"""Alias of `python -m neat_hf.cli.train` (the `neat-train` script lived here until 0.1): launch commands written
for it (`torchrun ... -m neat_hf.trainers.train`) keep working. Run as a module only; nothing here imports the script."""

import runpy

if __name__ == "__main__":
    runpy.run_module("neat_hf.cli.train", run_name="__main__", alter_sys=True)
