"""Model keys and variant names: the one rule they follow, and the one way a file name made from
them becomes a path.

Keys name report, baseline, cache and lock files. A key holding '/' or '..' would write outside
its directory, and two keys that differ only in case are one file on a case-insensitive file
system (macOS, Windows), so one model's report would overwrite the other's. The config and
``--model`` check keys with :func:`key_problem` and :func:`case_clash` when they are read;
:func:`file_in` guards every path built from them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
KEY_MAX = 100  # with a variant, a prefix and a suffix the file name stays under the usual 255 bytes
KEY_RULE = f"letters, digits, '_', '.' and '-', starting with a letter or digit, at most {KEY_MAX} characters"


class UnsafeFileName(ValueError):
    """A file name made from a key would not be a plain file inside its directory."""


def key_problem(kind: str, key: str) -> str | None:
    """Why ``key`` cannot be a ``kind`` key ("model", "variant"), in one line, or None."""
    if KEY.fullmatch(key) and len(key) <= KEY_MAX:
        return None
    return f"{kind} key {key!r} breaks the key rule: {KEY_RULE} (it names report, baseline and cache files)"


def hub_id_parts(key: str) -> tuple[str, str] | None:
    """(org, name) when ``key`` reads as a Hub id ``org/name``: a key copied from the Hub."""
    org, slash, name = key.partition("/")
    return (org, name) if slash and KEY.fullmatch(org) and KEY.fullmatch(name) else None


def derive_key(name: str) -> str:
    """The model key of a Hub repository name or directory name: lower case, every run of other
    characters than letters, digits, '.', '_' and '-' made one '-' (``Qwen2.5-0.5B`` -> ``qwen2.5-0.5b``)."""
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")


def case_clash(keys: Iterable[str]) -> tuple[str, str] | None:
    """The first two of ``keys`` that differ only in case, or None."""
    seen: dict[str, str] = {}
    for key in keys:
        earlier = seen.setdefault(key.lower(), key)
        if earlier != key:
            return earlier, key
    return None


def file_in(directory: Path, name: str) -> Path:
    """``directory / name`` for a file name made from a model key or variant name, refused unless
    ``name`` is one plain file name, so the file stays inside ``directory`` (compared lexically:
    a symbolic link the user made inside it is the user's choice)."""
    path = Path(directory) / name
    separator = "/" in name or "\\" in name
    if separator or name in ("", ".", "..") or path.parent != Path(directory):  # the last: a drive ("C:x")
        raise UnsafeFileName(
            f"{name!r}: not a plain file name inside {directory} (a model key or variant name with "
            f"'/', '\\' or '..'?); keys are {KEY_RULE}"
        )
    return path


def toml_key(key: str) -> str:
    """``key`` as written in a TOML table header: bare when it can be, else quoted (a '.' must be)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)
