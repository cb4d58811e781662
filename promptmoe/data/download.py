"""Download and unpack the datasets that have a public direct link; print manual steps for the rest.

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets). Three safety rules: a download is written to a
temporary file and renamed only once complete (and, with a checksum, verified), so an interrupted
or corrupted download never looks finished; archive members that would land outside the target
folder (absolute paths, ``..``, links pointing out) are refused before anything is written.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Optional, Union

from .base import DatasetError

PathLike = Union[str, Path]
CHUNK = 1 << 20


def sha256sum(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: PathLike, sha256: Optional[str] = None, progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` atomically, verifying ``sha256`` when given.

    An existing ``dest`` is reused when it matches the checksum (or when no checksum is given).

    Returns:
        ``dest`` as a Path.

    Raises:
        DatasetError: network failure or checksum mismatch; no partial file is left behind.
    """
    dest = Path(dest)
    if dest.is_file() and (sha256 is None or sha256sum(dest) == sha256.lower()):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name)
            for chunk in iter(lambda: resp.read(CHUNK), b""):
                out.write(chunk)
                h.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
        if sha256 is not None and h.hexdigest() != sha256.lower():
            raise DatasetError(
                f"Checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {h.hexdigest()}. "
                f"The download was deleted; retry, or check that the URL still serves the same file."
            )
        os.replace(tmp, dest)  # atomic on one file system: dest is either absent or complete
    except DatasetError:
        raise
    except (OSError, ValueError) as e:  # URLError is an OSError
        raise DatasetError(f"Download of {url} failed: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)  # a no-op after the rename; removes the part file otherwise (Ctrl-C too)
    return dest


def _inside(target: Path, member: str) -> bool:
    # Resolve without touching the disk beyond target: ".." and absolute paths must stay inside.
    if not member or PurePosixPath(member).is_absolute() or Path(member).is_absolute() or ":" in member.split("/")[0]:
        return False
    resolved = os.path.normpath(os.path.join(str(target), member))
    return resolved == str(target) or resolved.startswith(str(target) + os.sep)


def _check_tar(tar: tarfile.TarFile, target: Path) -> None:
    for m in tar.getmembers():
        if not _inside(target, m.name):
            raise DatasetError(f"Refusing archive member {m.name!r}: it would be written outside {target}")
        if m.issym():
            link_target = os.path.join(os.path.dirname(m.name), m.linkname)
            if os.path.isabs(m.linkname) or not _inside(target, link_target):
                raise DatasetError(f"Refusing archive member {m.name!r}: symlink to {m.linkname!r} points outside {target}")
        elif m.islnk() and not _inside(target, m.linkname):
            raise DatasetError(f"Refusing archive member {m.name!r}: hard link to {m.linkname!r} points outside {target}")
        elif m.isdev():
            raise DatasetError(f"Refusing archive member {m.name!r}: device files are not dataset content")


def _check_zip(zf: zipfile.ZipFile, target: Path) -> None:
    # zipfile writes a symlink entry as a small regular file holding the link text: only paths matter.
    for info in zf.infolist():
        if not _inside(target, info.filename):
            raise DatasetError(f"Refusing archive member {info.filename!r}: it would be written outside {target}")


def extract(archive: PathLike, target: PathLike) -> Path:
    """Unpack a .zip / .tar / .tar.gz / .tgz / .tar.xz / .tar.bz2 into ``target`` after checking every member.

    Raises:
        DatasetError: unknown archive type, unreadable archive, or a member escaping ``target``
            (named in the message); nothing is extracted in that case.
    """
    archive, target = Path(archive), Path(target).resolve()
    target.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                _check_zip(zf, target)
                zf.extractall(target)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                _check_tar(tar, target)
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: a second line of defence
                    tar.extractall(target, filter="data")
                else:
                    tar.extractall(target)
        else:
            raise DatasetError(f"{archive} is neither a zip nor a tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise DatasetError(f"Cannot extract {archive}: {e}") from e
    return target


def fetch_dataset(name: str, root: PathLike) -> Optional[Path]:
    """Download and extract dataset ``name`` into ``root`` when it has a public direct URL.

    Otherwise print its manual instructions (Kaggle, request forms ...) and return None.

    Returns:
        ``root`` once extracted, or None when the dataset has to be fetched by hand.
    """
    from . import get_format  # late import: the registry imports every format module

    fmt = get_format(name)
    url = getattr(fmt, "URL", None)
    if not url:
        print(getattr(fmt, "INSTRUCTIONS", None) or f"No download instructions for {name}; see its LAYOUT:\n{fmt.LAYOUT}")
        return None
    root = Path(root).expanduser()
    archive = root / "downloads" / url.rstrip("/").split("/")[-1]
    download(url, archive, getattr(fmt, "SHA256", None))
    extract(archive, root)
    print(f"{name}: extracted into {root}; the archive stays at {archive} (delete it to save space).")
    return root


def remove_partial_downloads(folder: PathLike) -> int:
    """Delete ``*.part`` leftovers of killed downloads in ``folder``; returns how many were removed."""
    parts = list(Path(folder).glob(".*.part"))
    for p in parts:
        p.unlink()
    return len(parts)


__all__ = ["download", "extract", "fetch_dataset", "sha256sum", "remove_partial_downloads"]
