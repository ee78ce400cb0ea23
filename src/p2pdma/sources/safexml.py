"""XML parsing for untrusted machine descriptions (hwloc, NCCL): expat with no entity expansion,
no internal DTD subset, and a nesting limit, building an ElementTree."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any
from xml.parsers import expat

ExpatError = expat.ExpatError


class XmlRefused(Exception):
    """The XML uses a construct we refuse (a DOCTYPE, entity declarations, deep nesting)."""


def parse(data: bytes, *, max_nesting: int, allow_plain_doctype: bool, what: str) -> ET.Element:
    """Parse ``data``; a DOCTYPE without internal subset is accepted only when ``allow_plain_doctype``.
    Raises XmlRefused or ExpatError."""
    builder = ET.TreeBuilder()
    depth = 0
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def doctype(name: str, sysid: str | None, pubid: str | None, has_internal_subset: int) -> None:
        if has_internal_subset:
            raise XmlRefused("a DOCTYPE with an internal subset is not allowed")
        if not allow_plain_doctype:
            raise XmlRefused(f"a DOCTYPE is not allowed in {what}")

    def entity(*_: Any) -> None:
        raise XmlRefused("XML entity declarations are not allowed")

    def external(*_: Any) -> int:
        raise XmlRefused("external XML entities are not allowed")

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal depth
        depth += 1
        if depth > max_nesting:
            raise XmlRefused(f"elements nested deeper than {max_nesting}")
        builder.start(tag, attrs)

    def end(tag: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(tag)

    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = entity
    parser.UnparsedEntityDeclHandler = entity
    parser.ExternalEntityRefHandler = external
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data  # element text (hwloc's distance matrices)
    try:
        parser.Parse(data, True)
    except (LookupError, ValueError) as exc:  # an encoding= expat cannot use (unknown, multi-byte)
        raise XmlRefused(f"the XML declares an encoding Python cannot decode ({str(exc)[:80]})") from None
    root: ET.Element = builder.close()
    return root

