"""The documents that ``-f`` names: files, directories and ``-`` (stdin), as one YAML stream.

``apply``, ``plan`` and ``up`` (which applies examples/ once) read them alike.
"""

from __future__ import annotations

import sys
from pathlib import Path

from common.client import ClientError

YAML_SUFFIXES = {".yaml", ".yml", ".json"}


def read_files(paths: list[str]) -> str:
    """Concatenate the documents of files and directories (sorted, non-recursive)."""
    chunks = []
    for raw in paths:
        path = Path(raw)
        if raw == "-":
            chunks.append(sys.stdin.read())
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in YAML_SUFFIXES)
            if not files:
                raise ClientError(f"{path} has no .yaml, .yml or .json files")
            chunks += [f.read_text() for f in files]
        elif path.exists():
            chunks.append(path.read_text())
        else:
            raise ClientError(f"{path} does not exist")
    return "\n---\n".join(chunk.strip().removeprefix("---") for chunk in chunks)
