"""Where the report's logs come from: ``--source`` values turned into local ledger directories.

A fleet is many logs (one origin per runner boot). A source is a local directory that is one
ledger or holds many (found at any depth: every directory with an ``entries.log``). Each
becomes a :class:`LogDir`: the directory to read and a ``name`` that depends only on the
source's layout (its path relative to the source), never on where the copy lives, so that two
people building the report from their own copies get the same bytes.

A bucket source (``s3://BUCKET/PREFIX``) is a ``remote`` function given to :func:`resolve`:
it pulls the logs under the URL into a local cache and returns their directories (named by
the bucket's log names); the CLI supplies it (appliance.cli.report).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.ledger.errors import LedgerError
from appliance.ledger.store import ENTRIES


@dataclass(frozen=True)
class LogDir:
    """One ledger to report on: ``path`` to read, ``name`` to show (stable across copies)."""

    path: Path
    name: str


def local_logs(root: Path) -> Iterator[LogDir]:
    """Every ledger directory under ``root`` (``root`` itself if it is one), in name order.

    Raises LedgerError if ``root`` is not a directory.
    """
    if not root.is_dir():
        raise LedgerError(f"source {root} is not a directory")
    if (root / ENTRIES).is_file():
        yield LogDir(root, root.name or ".")
        return
    for here, dirs, files in os.walk(root):
        dirs.sort()
        if ENTRIES in files:
            dirs.clear()  # a ledger's own subdirectories (blobs/, recovered/) hold no logs
            path = Path(here)
            yield LogDir(path, path.relative_to(root).as_posix())


Remote = Callable[[str], Sequence[LogDir]]


def resolve(sources: Sequence[str], *, remote: Remote | None = None) -> list[LogDir]:
    """The logs of every source (``remote(url)`` for a ``scheme://`` one), de-duplicated by
    directory; names made unique by the source's position when two sources hold the same
    relative layout.

    Raises LedgerError if a source cannot be read or no log is found.
    """
    found: list[LogDir] = []
    seen: set[Path] = set()
    names: set[str] = set()
    for i, source in enumerate(sources):
        if "://" in source and remote is None:
            scheme = source.split("://", 1)[0]
            raise LedgerError(
                f"source {source}: {scheme}:// sources are not supported yet (copy the logs "
                "to a local directory and give that)"
            )
        here = (
            remote(source) if "://" in source and remote is not None else local_logs(Path(source))
        )
        for log in here:
            real = log.path.resolve()
            if real in seen:
                continue
            seen.add(real)
            name = log.name if log.name not in names else f"{i}:{log.name}"
            names.add(name)
            found.append(LogDir(log.path, name))
    if not found:
        raise LedgerError(f"no ledger ({ENTRIES}) found in {', '.join(sources)}")
    return found
