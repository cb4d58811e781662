"""Download and unpack the datasets that have a public direct link; print manual steps for the rest.

Taught in chapter 1 (the data section) and chapter 6 (evaluation on all 15 datasets). Three safety rules: a download is written to a
temporary file and renamed only once complete (and, with a checksum, verified), so an interrupted
or corrupted download never looks finished; archive members that would land outside the target
folder (absolute paths, ``..``, links pointing out, also through a chain of links in the archive)
are refused by our own check before anything is written, on every Python (the ``data`` filter of
Python >= 3.12 is only a second line of defence); a download shorter than its ``Content-Length``,
or an archive without a checksum that does not open, is deleted, never kept as complete.

Every archive with a public URL has a checksum (:data:`ARCHIVE_CHECKSUMS`); none of them could be
verified here (no internet): each value's source is written beside it.
"""
from __future__ import annotations

import bz2
import gzip
import hashlib
import http.client
import lzma
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
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
MAX_LINK_DEPTH = 40  # as the kernel's ELOOP limit: a longer chain of links is refused

# url -> (algorithm, hex digest, where the value comes from). Used when a format module gives no
# SHA256 of its own. NOT verified offline: a mismatch is reported, the file deleted, never kept.
ARCHIVE_CHECKSUMS = {
    "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar": (
        "md5", "ef908989b6dc701fc218f643c127a4de",
        "anomalib 0.x, anomalib/data/visa.py DOWNLOAD_INFO (the publishers give none)"),
    "https://avires.dimi.uniud.it/papers/btad/btad.zip": (
        "sha256", "461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
        "anomalib >= 1.0, anomalib/data/datasets/image/btech.py DOWNLOAD_INFO (MD5 "
        "c1fa4d56ac50dd50908ce04e81037a8e in anomalib 0.x); the authors give none"),
}


def sha256sum(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file (``sha256`` or ``md5``), read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def archive_problem(path: PathLike) -> Optional[str]:
    """None when ``path`` is a zip/tar archive that opens and holds all its members' bytes, else why not.

    A truncated zip has lost its central directory; a truncated plain tar ends inside a member; a
    truncated compressed tar fails to decompress to its end.
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                zf.infolist()
            return None
        with open(path, "rb") as f:
            magic = f.read(6)
        opener = (gzip.open if magic[:2] == b"\x1f\x8b" else bz2.open if magic[:3] == b"BZh"
                  else lzma.open if magic == b"\xfd7zXZ\x00" else None)
        with tarfile.open(path) as tar:
            end = max((m.offset_data + (m.size if m.isreg() else 0) for m in tar), default=0)
        if opener is not None:  # compressed: the stream must decompress to its end-of-stream marker
            with opener(path, "rb") as f:
                while f.read(CHUNK):
                    pass
        elif end > path.stat().st_size:
            return f"it ends at byte {path.stat().st_size}, inside a member that needs {end}"
        return None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError, lzma.LZMAError) as e:
        return f"it does not open as an archive ({type(e).__name__}: {e})"


def download(url: str, dest: PathLike, sha256: Optional[str] = None, progress: bool = True,
             md5: Optional[str] = None) -> Path:
    """Fetch ``url`` to ``dest`` atomically, verifying ``sha256`` (or ``md5``) when given.

    The bytes go to a ``.part`` file renamed onto ``dest`` only when complete: as many bytes as the
    server's ``Content-Length``, the right checksum, and, for an archive without a checksum, one
    that opens (:func:`archive_problem`). An existing ``dest`` is reused when it passes the same
    checks.

    Returns:
        ``dest`` as a Path.

    Raises:
        DatasetError: network failure, a short download, checksum mismatch or a broken archive;
            no partial file is left behind.
    """
    dest = Path(dest)
    algorithm, expected = ("sha256", sha256) if sha256 else ("md5", md5) if md5 else (None, None)
    expected = expected.lower() if expected else None
    if dest.is_file():
        if expected is not None and file_digest(dest, algorithm) == expected:
            return dest
        if expected is None and not (is_archive_name(dest.name) and archive_problem(dest)):
            return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    h = hashlib.new(algorithm or "sha256")
    got = 0
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
                got += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
        if total is not None and got != total:
            raise DatasetError(
                f"Download of {url} is truncated: got {got} of {total} bytes (Content-Length). "
                f"The partial file was deleted; retry.")
        if expected is not None and h.hexdigest() != expected:
            raise DatasetError(
                f"Checksum mismatch for {url}: expected {algorithm} {expected}, got {h.hexdigest()}. "
                f"The download was deleted; retry, or check that the URL still serves the same file."
            )
        if expected is None and is_archive_name(dest.name):
            problem = archive_problem(tmp)
            if problem:
                raise DatasetError(f"Download of {url} ({got} bytes, no checksum to verify) is not a "
                                   f"complete archive: {problem}. It was deleted; retry.")
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, dest)  # atomic on one file system: dest is either absent or complete
    except DatasetError:
        raise
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError
        raise DatasetError(f"Download of {url} failed: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)  # a no-op after the rename; removes the part file otherwise (Ctrl-C too)
    return dest


def _umask_mode(mode: int = 0o666) -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def _inside(target: Path, member: str) -> bool:
    # Resolve without touching the disk beyond target: ".." and absolute paths must stay inside.
    if not member or PurePosixPath(member).is_absolute() or Path(member).is_absolute() or ":" in member.split("/")[0]:
        return False
    resolved = os.path.normpath(os.path.join(str(target), member))
    return resolved == str(target) or resolved.startswith(str(target) + os.sep)


def _resolve_in_archive(parts: list, links: dict, depth: int = 0) -> Optional[list]:
    """Follow the archive's own symlinks through the path ``parts`` (relative to the target).

    Returns the real path as a component list, or None when it steps above the target, follows
    an absolute link or a chain longer than :data:`MAX_LINK_DEPTH`. Pure string work: nothing
    on disk is read, so it behaves the same on every Python.
    """
    if depth > MAX_LINK_DEPTH:
        return None
    done: list = []
    for i, part in enumerate(parts):
        if part in ("", "."):
            continue
        if part == "..":
            if not done:
                return None
            done.pop()
            continue
        here = "/".join(done + [part])
        if here in links:
            link = links[here]
            if link.startswith("/") or os.path.isabs(link) or ":" in link.split("/")[0]:
                return None
            real = _resolve_in_archive(done + link.split("/"), links, depth + 1)
            if real is None:
                return None
            done = real
        else:
            done.append(part)
    return done


def _check_tar(tar: tarfile.TarFile, target: Path) -> None:
    members = tar.getmembers()
    links = {"/".join(p for p in m.name.split("/") if p not in ("", ".")): m.linkname
             for m in members if m.issym()}
    for m in members:
        if not _inside(target, m.name):
            raise DatasetError(f"Refusing archive member {m.name!r}: it would be written outside {target}")
        parts = [p for p in m.name.split("/") if p not in ("", ".")]
        parent = _resolve_in_archive(parts[:-1], links)
        if parent is None or "/".join(parent) != "/".join(parts[:-1]):
            raise DatasetError(f"Refusing archive member {m.name!r}: its folder goes through a symlink "
                               f"of the archive (a chain that can lead outside {target})")
        if (m.issym() or m.islnk()) and (m.linkname.startswith("/") or os.path.isabs(m.linkname)):
            raise DatasetError(f"Refusing archive member {m.name!r}: link to the absolute path "
                               f"{m.linkname!r} points outside {target}")
        if m.issym():
            if _resolve_in_archive(parts[:-1] + m.linkname.split("/"), links) is None:
                raise DatasetError(f"Refusing archive member {m.name!r}: symlink to {m.linkname!r} "
                                   f"points outside {target} (following the archive's links)")
        elif m.islnk() and _resolve_in_archive(m.linkname.split("/"), links) is None:
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
    created = [p for p in [target, *target.parents] if not p.exists()]
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
        _remove_empty(created)
        raise DatasetError(f"Cannot extract {archive}: {e}") from e
    except DatasetError:
        _remove_empty(created)  # refused before writing: folders we made are empty, remove them
        raise
    return target


def _remove_empty(folders) -> None:
    for folder in folders:  # deepest first
        try:
            folder.rmdir()
        except OSError:
            pass


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
    sha256, md5 = getattr(fmt, "SHA256", None), None
    if not sha256 and url in ARCHIVE_CHECKSUMS:
        algorithm, digest, _source = ARCHIVE_CHECKSUMS[url]
        sha256, md5 = (digest, None) if algorithm == "sha256" else (None, digest)
    download(url, archive, sha256, md5=md5)
    extract(archive, root)
    print(f"{name}: extracted into {root}; the archive stays at {archive} (delete it to save space).")
    return root


def remove_partial_downloads(folder: PathLike) -> int:
    """Delete ``*.part`` leftovers of killed downloads in ``folder``; returns how many were removed."""
    parts = list(Path(folder).glob(".*.part"))
    for p in parts:
        p.unlink()
    return len(parts)


__all__ = ["ARCHIVE_CHECKSUMS", "archive_problem", "download", "extract", "fetch_dataset", "file_digest",
           "sha256sum", "remove_partial_downloads"]
