"""Integrations of NEAT into training frameworks that take adapter methods from plugins (`neat_hf.integrations.axolotl`).

Each subpackage imports its framework, so import the one you use; `neat_hf` itself never imports them.
"""
