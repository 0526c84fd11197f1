"""`neat-train`: the script that trains a NEAT adapter from the command line (`main.py`: `cli`, `main`, `parse_args`).

Parsing (`parser`, `script_args`, `recipe_registry`), checks made before anything heavy loads (`launch_checks`), the
data (`data`, `default_job`, `metrics`), the job itself (`job`) and what a finished run writes (`run_output`). It
uses the library (`neat_hf`, `neat_hf.trainers`) and is never imported by it, as TRL keeps `trl/scripts/` apart
from `trl/trainer/`. `python -m neat_hf.cli.train` runs it (torchrun, accelerate and deepspeed launch it that way).
"""
