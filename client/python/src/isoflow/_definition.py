"""Reading a definition file and the code files that go with it.

The same rules as the Rust client's ``read_definition`` (client/src/lib.rs):
the definition is not parsed here; with it go all ``*.js`` files under its
folder, recursively, keyed by their path relative to that folder with ``/``
separators (``transform.js``, ``lib/util.js``). Hidden entries (``.git``),
``node_modules`` and symbolic links to folders are skipped; a link to a
file counts as the file. Together they must fit in one message.
"""

from __future__ import annotations

import os
from pathlib import Path

from isoflow.errors import IsoflowError

# The largest message either side accepts (proto/src/lib.rs MAX_MESSAGE_BYTES).
MAX_MESSAGE_BYTES = 4 << 20


def read_definition(path: str | os.PathLike[str]) -> tuple[str, dict[str, str]]:
    """The definition at ``path`` and the ``*.js`` files under its folder.

    Raises ``OSError`` (or ``UnicodeDecodeError``) for a file that cannot be
    read as UTF-8, and :class:`IsoflowError` when the files add up to more
    than one deploy call carries.
    """
    path = Path(path)
    source = path.read_text(encoding="utf-8")
    folder = path.parent  # Path("x.yaml").parent is Path(".")
    budget = MAX_MESSAGE_BYTES - len(source.encode("utf-8"))
    return source, code_files(folder, budget)


def code_files(folder: Path, budget: int) -> dict[str, str]:
    """Every ``*.js`` file under ``folder`` by its ``/``-separated relative
    path; an :class:`IsoflowError` once they exceed ``budget`` bytes."""
    files: dict[str, str] = {}
    total = 0
    # Folders still to read, by their key prefix ("" for the folder itself).
    pending = [""]
    while pending:
        prefix = pending.pop()
        with os.scandir(folder / prefix) as entries:
            for entry in entries:
                name = entry.name
                # A definition is UTF-8, so it cannot name a file whose name
                # is not (os.scandir keeps such bytes as surrogates).
                try:
                    name.encode("utf-8")
                except UnicodeEncodeError:
                    continue
                if name.startswith(".") or name == "node_modules":
                    continue
                key = f"{prefix}/{name}" if prefix else name
                if entry.is_dir(follow_symlinks=False):
                    pending.append(key)
                    continue
                # is_file() follows a link to a file; links to folders were
                # not taken above (they can loop) and are not files.
                if not key.endswith(".js") or not entry.is_file():
                    continue
                text = Path(entry.path).read_text(encoding="utf-8")
                total += len(key.encode("utf-8")) + len(text.encode("utf-8"))
                if total > budget:
                    raise IsoflowError(
                        f"the .js files under {folder} exceed what one deploy carries "
                        f"({MAX_MESSAGE_BYTES >> 20} MiB): deploy from a folder that holds "
                        "only the integration's files"
                    )
                files[key] = text
    return files
