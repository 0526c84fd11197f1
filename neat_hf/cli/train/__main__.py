"""`python -m neat_hf.cli.train`: the `neat-train` command."""

import sys

from neat_hf.cli.train.main import cli

sys.exit(cli())
