"""The JSON Schema (draft 2020-12) of every document the command line prints, shipped as package data:
``p2pdma.matrix/1`` is ``matrix-1.schema.json`` and so on. load() reads one by document name."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

DOCUMENTS = (
    "p2pdma.matrix/1", "p2pdma.matrix/2", "p2pdma.explain/1", "p2pdma.fix/1", "p2pdma.topo/1",
    "p2pdma.examples/1", "p2pdma.check-list/1", "p2pdma.simulate-list/1", "p2pdma.check/1", "p2pdma.simulate/1",
)


def file_name(document: str) -> str:
    """``p2pdma.matrix/2`` -> ``matrix-2.schema.json``."""
    kind, _, version = document.removeprefix("p2pdma.").partition("/")
    return f"{kind}-{version}.schema.json"


def load(document: str) -> dict[str, Any]:
    """The JSON Schema of ``document`` (one of DOCUMENTS); KeyError for another name."""
    if document not in DOCUMENTS:
        raise KeyError(document)
    text = resources.files(__name__).joinpath(file_name(document)).read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


__all__ = ["DOCUMENTS", "file_name", "load"]
