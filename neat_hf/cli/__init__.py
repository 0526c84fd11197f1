"""The command lines: `neat-train` ([`neat_hf.cli.train`]) and `neat-hub` ([`neat_hf.cli.hub`]), with what they share
(option hints, telling a local base model from a Hub id). The top floor: the library never imports it."""
