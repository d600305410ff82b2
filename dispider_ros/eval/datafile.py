"""Reading the JSON/YAML files users hand to the eval CLI, with one-line errors.

A syntax error is reported as ``<file>:<line>:<column>: not valid JSON|YAML: <problem>``
(line and column 1-based, as editors and compilers count), never as a parser traceback:
`ValueError` is what the CLI turns into a message and exit status 2.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import yaml

YAML_SUFFIXES = (".yaml", ".yml")


def is_yaml(path: Union[str, Path]) -> bool:
    return Path(path).suffix.lower() in YAML_SUFFIXES


def read_text(path: Union[str, Path]) -> str:
    """The file's text; ValueError naming the file when it is not UTF-8 text."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text file (byte {err.start}: "
                         f"{err.reason})") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, not a file") from None


def json_error(path: Union[str, Path], err: json.JSONDecodeError, line_offset: int = 0) -> str:
    """`file:line:col: not valid JSON: msg` (line_offset: for one JSON document per line)."""
    return f"{path}:{err.lineno + line_offset}:{err.colno}: not valid JSON: {err.msg}"


def yaml_error(path: Union[str, Path], err: yaml.YAMLError) -> str:
    """`file:line:col: not valid YAML: problem (context)` on one line."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    return f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def load(path: Union[str, Path], yaml_ok: Optional[bool] = None) -> Any:
    """Parse a JSON file, or a YAML one when its name ends in .yaml/.yml.

    Args:
        yaml_ok: force the format (True: YAML, False: JSON); default from the suffix.
    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not UTF-8, or a syntax error (message: file, line, column, problem).
    """
    path = Path(path)
    text = read_text(path)
    if is_yaml(path) if yaml_ok is None else yaml_ok:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(yaml_error(path, err)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(json_error(path, err)) from None
