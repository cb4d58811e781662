"""Tests for promptmoe/data/download.py against a local http.server (no internet needed)."""
import functools
import hashlib
import http.server
import io
import os
import tarfile
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from promptmoe.data import DATASETS, DatasetError, load_dataset
from promptmoe.data.download import download, extract, fetch_dataset, sha256sum


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1; yields (folder, base_url)."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def png_bytes(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def make_tar(path, members, mode="w:gz", links=()):
    """``members``: name -> bytes; ``links``: (name, target, type) for SYMTYPE / LNKTYPE entries."""
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target, kind in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
    return path


def no_partial_files(folder):
    return not [p for p in folder.rglob("*") if p.name.endswith(".part")]


def test_download_with_checksum(server, tmp_path):
    www, url = server
    payload = b"dataset bytes " * 1000
    (www / "data.bin").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    dest = download(f"{url}/data.bin", tmp_path / "dl" / "data.bin", sha256=digest, progress=False)
    assert dest.read_bytes() == payload and sha256sum(dest) == digest and no_partial_files(tmp_path / "dl")
    (www / "data.bin").write_bytes(b"changed")  # an existing verified file is reused, not fetched again
    assert download(f"{url}/data.bin", dest, sha256=digest, progress=True).read_bytes() == payload


def test_download_checksum_mismatch_leaves_nothing(server, tmp_path):
    www, url = server
    (www / "data.bin").write_bytes(b"tampered")
    dest = tmp_path / "dl" / "data.bin"
    with pytest.raises(DatasetError, match="Checksum mismatch") as e:
        download(f"{url}/data.bin", dest, sha256="0" * 64, progress=False)
    assert "0" * 64 in str(e.value) and hashlib.sha256(b"tampered").hexdigest() in str(e.value)
    assert not dest.exists() and no_partial_files(tmp_path / "dl")
    with pytest.raises(DatasetError, match="missing.bin"):  # HTTP 404
        download(f"{url}/missing.bin", tmp_path / "dl" / "missing.bin", progress=False)
    assert list((tmp_path / "dl").iterdir()) == []


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz", "tar.xz"])
def test_extract_formats(tmp_path, kind):
    members = {"top/a.txt": b"a", "top/sub/b.txt": b"bb"}
    archive = tmp_path / f"x.{kind}"
    if kind == "zip":
        make_zip(archive, members)
    else:
        make_tar(archive, members, {"tar": "w", "tar.gz": "w:gz", "tar.xz": "w:xz"}[kind])
    out = extract(archive, tmp_path / "out")
    assert (out / "top" / "sub" / "b.txt").read_bytes() == b"bb" and (out / "top" / "a.txt").read_bytes() == b"a"


@pytest.mark.parametrize("build,member", [
    (lambda p: make_zip(p / "evil.zip", {"ok.txt": b"1", "../evil.txt": b"x"}), "../evil.txt"),
    (lambda p: make_tar(p / "evil.tar.gz", {"ok.txt": b"1", "a/../../evil.txt": b"x"}), "a/../../evil.txt"),
    (lambda p: make_tar(p / "abs.tar", {"/tmp/evil_abs.txt": b"x"}, "w"), "/tmp/evil_abs.txt"),
    (lambda p: make_tar(p / "sym.tar", {}, "w", [("link", "../../etc", tarfile.SYMTYPE)]), "link"),
    (lambda p: make_tar(p / "sym2.tar", {}, "w", [("d/link", "/etc/passwd", tarfile.SYMTYPE)]), "d/link"),
    (lambda p: make_tar(p / "hard.tar", {}, "w", [("h", "../outside", tarfile.LNKTYPE)]), "h"),
])
def test_extract_refuses_members_escaping_target(tmp_path, build, member):
    archive = build(tmp_path)
    target = tmp_path / "out" / "inner"
    with pytest.raises(DatasetError, match="Refusing") as e:
        extract(archive, target)
    assert repr(member) in str(e.value)
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "out").exists()  # checked before writing; the folders it made are gone


def test_extract_allows_links_inside(tmp_path):
    archive = make_tar(tmp_path / "ok.tar", {"d/real.txt": b"r"}, "w", [("d/alias.txt", "real.txt", tarfile.SYMTYPE)])
    assert (extract(archive, tmp_path / "out") / "d" / "alias.txt").read_bytes() == b"r"


def test_extract_rejects_non_archive(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"nope")
    with pytest.raises(DatasetError, match="x.zip"):
        extract(tmp_path / "x.zip", tmp_path / "out")


def test_fetch_dataset_end_to_end(server, tmp_path, monkeypatch):
    """fetch -> extract -> load_dataset on an MVTec-layout archive served locally."""
    www, url = server
    mask = np.zeros((16, 16), np.uint8)
    mask[2:6, 2:6] = 255
    img = png_bytes(np.full((16, 16, 3), 77, np.uint8))
    members = {"bottle/test/good/000.png": img, "bottle/test/broken/000.png": img,
               "bottle/ground_truth/broken/000_mask.png": png_bytes(mask)}
    archive = make_tar(www / "mvtec_anomaly_detection.tar.xz", members, "w:xz")
    monkeypatch.setattr(DATASETS["mvtec"], "URL", f"{url}/{archive.name}")
    monkeypatch.setattr(DATASETS["mvtec"], "SHA256", sha256sum(archive))
    root = fetch_dataset("mvtec", tmp_path / "mvtec")
    assert root == tmp_path / "mvtec" and (root / "downloads" / archive.name).is_file()
    ds = load_dataset("mvtec", root, 8, verbose=False)
    assert ds.counts() == {"bottle": {"normal": 1, "anomalous": 1, "with_mask": 1}}
    monkeypatch.setattr(DATASETS["mvtec"], "SHA256", "f" * 64)
    (root / "downloads" / archive.name).unlink()
    with pytest.raises(DatasetError, match="Checksum mismatch"):
        fetch_dataset("mvtec", tmp_path / "mvtec")


def test_fetch_dataset_without_url_prints_instructions(tmp_path, capsys):
    assert fetch_dataset("br35h", tmp_path) is None
    assert "kaggle" in capsys.readouterr().out.lower()
    assert fetch_dataset("kvasir", tmp_path) is None and "kvasir-seg" in capsys.readouterr().out.lower()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DatasetError, match="Known"):
        fetch_dataset("nope", tmp_path)


# ------------------------------------------------- issue 9: truncated downloads, checksums, link chains
class ShortHandler(QuietHandler):
    """Announces more bytes (Content-Length) than it sends, then closes: a dropped connection."""

    def do_GET(self):
        body = b"x" * 1000
        self.send_response(200)
        self.send_header("Content-Length", "5000")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True


@pytest.fixture
def short_server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ShortHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_shorter_than_content_length_is_not_kept(short_server, tmp_path):
    dest = tmp_path / "dl" / "data.zip"
    with pytest.raises(DatasetError, match="truncated: got 1000 of 5000 bytes"):
        download(f"{short_server}/data.zip", dest, progress=False)
    assert not dest.exists() and list((tmp_path / "dl").iterdir()) == []


def _archive_bytes(tmp_path, kind):
    members = {f"cat/test/good/{i:03d}.png": bytes(range(256)) * 40 for i in range(6)}
    path = tmp_path / f"src.{kind}"
    if kind == "zip":
        make_zip(path, members)
    else:
        make_tar(path, members, {"tar": "w", "tar.gz": "w:gz", "tar.xz": "w:xz", "tar.bz2": "w:bz2"}[kind])
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz", "tar.xz", "tar.bz2"])
def test_truncated_archive_without_checksum_is_not_kept(server, tmp_path, kind):
    www, url = server
    whole = _archive_bytes(tmp_path, kind)
    (www / f"a.{kind}").write_bytes(whole[: len(whole) * 2 // 3])  # the server itself has a cut file
    dest = tmp_path / "dl" / f"a.{kind}"
    with pytest.raises(DatasetError, match="no checksum to verify.*not a complete archive"):
        download(f"{url}/a.{kind}", dest, progress=False)
    assert not dest.exists() and no_partial_files(tmp_path / "dl")
    (www / f"a.{kind}").write_bytes(whole)
    assert download(f"{url}/a.{kind}", dest, progress=False).read_bytes() == whole


def test_an_earlier_truncated_archive_is_fetched_again(server, tmp_path):
    www, url = server
    whole = _archive_bytes(tmp_path, "tar")
    (www / "a.tar").write_bytes(whole)
    dest = tmp_path / "dl" / "a.tar"
    dest.parent.mkdir()
    dest.write_bytes(whole[:3000])  # left by an old version that kept short downloads
    assert download(f"{url}/a.tar", dest, progress=False).read_bytes() == whole


def test_md5_checksums_are_verified(server, tmp_path):
    www, url = server
    (www / "v.tar").write_bytes(b"visa")
    good = hashlib.md5(b"visa").hexdigest()
    with pytest.raises(DatasetError, match=f"expected md5 {'0' * 32}, got {good}"):
        download(f"{url}/v.tar", tmp_path / "a" / "v.tar", md5="0" * 32, progress=False)
    assert download(f"{url}/v.tar", tmp_path / "b" / "v.tar", md5=good, progress=False).read_bytes() == b"visa"


def test_every_archive_with_a_url_has_a_checksum_with_its_source():
    from promptmoe.data.download import ARCHIVE_CHECKSUMS
    with_url = {name: fmt for name, fmt in DATASETS.items() if getattr(fmt, "URL", None)}
    assert {"mvtec", "visa", "btad"} <= set(with_url)
    for name, fmt in with_url.items():
        entry = ARCHIVE_CHECKSUMS.get(fmt.URL)
        assert getattr(fmt, "SHA256", None) or entry, name
        if entry:
            algorithm, digest, source = entry
            assert len(digest) == {"md5": 32, "sha256": 64}[algorithm] and int(digest, 16) >= 0
            assert "anomalib" in source


def test_downloaded_files_get_normal_permissions(server, tmp_path):
    www, url = server
    (www / "p.bin").write_bytes(b"p")
    old = os.umask(0o022)
    try:
        dest = download(f"{url}/p.bin", tmp_path / "p.bin", progress=False)
    finally:
        os.umask(old)
    assert dest.stat().st_mode & 0o777 == 0o644


LINK_CHAINS = [
    # each link alone looks inside; followed in turn they leave the target
    ({"d/up/up2/evil.txt": b"x"}, [("d/up", "..", tarfile.SYMTYPE), ("d/up/up2", "..", tarfile.SYMTYPE)],
     "d/up/up2"),
    ({}, [("d/up", "..", tarfile.SYMTYPE), ("d/up/esc", "../..", tarfile.SYMTYPE)], "d/up/esc"),
    ({"a/x.txt": b"x"}, [("a", "b", tarfile.SYMTYPE), ("b", "a", tarfile.SYMTYPE)], "a"),  # a loop
    ({"lnk/f.txt": b"x"}, [("lnk", "sub", tarfile.SYMTYPE)], "lnk/f.txt"),  # written through a link
    ({}, [("h", "d/up/../../x", tarfile.LNKTYPE), ("d/up", "..", tarfile.SYMTYPE)], "h"),
]


@pytest.mark.parametrize("old_python", [False, True])
@pytest.mark.parametrize("members, links, named", LINK_CHAINS)
def test_symlink_chains_out_of_the_target_are_refused(tmp_path, monkeypatch, members, links, named, old_python):
    if old_python:  # as on Python < 3.11.4, which has no tarfile.data_filter: our check alone
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    archive = tmp_path / "chain.tar"
    with tarfile.open(archive, "w") as tf:  # links first, so the files go through them
        for name, target, kind in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("reader's file")
    for target in (tmp_path / "new" / "inner", kept):
        with pytest.raises(DatasetError, match="Refusing archive member") as e:
            extract(archive, target)
        assert repr(named) in str(e.value)
    assert not (tmp_path / "new").exists()  # the folders it made are gone
    assert sorted(p.name for p in kept.iterdir()) == ["mine.txt"]
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "x").exists()
