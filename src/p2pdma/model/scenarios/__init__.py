"""Bundled scenarios for ``p2pdma simulate`` (YAML, format in p2pdma.model.scenario)."""
