"""Route stores: where route tables are read from. One way in each: a routes file here; Azure Table
Storage beside it. Each yields a validated `RouteTable` through `current()`.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import orjson

from routing.errors import Problem, RouteTableError
from routing.routes.table import RouteTable, parse_routes


def load_routes_file(path: Path) -> RouteTable:
    """A routes file, validated whole; raises `RouteTableError` naming the file and every problem."""
    source = f"routes file {path}"
    try:
        # A BOM, as Windows editors write one, is not part of the JSON (orjson refuses it).
        raw = orjson.loads(path.read_bytes().removeprefix(codecs.BOM_UTF8))
    except FileNotFoundError:
        raise RouteTableError([Problem(source, "does not exist")], source) from None
    except IsADirectoryError:
        raise RouteTableError([Problem(source, "is a directory, not a file")], source) from None
    except orjson.JSONDecodeError as exc:
        raise RouteTableError([Problem(source, f"is not valid JSON: {exc}")], source) from None
    return parse_routes(raw, source)


class FileRoutes:
    """A routes file, read once: the local runner's and the simplest deployment's route store."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.table = load_routes_file(path)

    def current(self) -> RouteTable:
        return self.table
