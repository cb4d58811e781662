"""Tests for promptmoe/data/download.py against a local http.server (no internet needed)."""
import functools
import hashlib
import http.server
import io
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
