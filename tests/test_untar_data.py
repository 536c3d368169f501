"""`untar_data` against real archives of real image files, served from a loopback HTTP server."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nbtrain.downloads import (
    DATASET_NAMES,
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    URLs,
    extract_archive,
    untar_data,
)
from nbtrain.samples import make_mnist_sample


@dataclass
class Served:
    """A loopback HTTP server: `routes` maps a path to (body, Content-Length to claim or None); `hits` logs GETs."""

    url: str
    routes: dict[str, tuple[bytes, int | None]] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)

    def add(self, path: str, body: bytes, claimed_length: int | None = None) -> str:
        self.routes[path] = (body, claimed_length)
        return self.url + path


@pytest.fixture
def server():
    served = Served(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            served.hits.append(self.path)
            if self.path not in served.routes:
                self.send_error(404)
                return
            body, claimed = served.routes[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            # A claimed length above len(body) makes a truncated download: the connection closes early.
            self.send_header("Content-Length", str(claimed if claimed is not None else len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):  # keep pytest's output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A folder `tiny/` of 20 real MNIST PNGs in train/valid class folders."""
    sample = make_mnist_sample(tmp_path_factory.mktemp("src") / "tiny", n=20, noise=0.0, seed=0)
    (sample.path / ".nbtrain-sample.json").unlink()
    return sample.path


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _tgz(root: Path, extra: Sequence[tarfile.TarInfo] = (), top: str | None = None) -> bytes:
    """`root`'s files as a .tar.gz, under the folder `top` (default: root's name), plus the `extra` members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(root, arcname=root.name if top is None else top)
        for info in extra:
            data = b"evil" if info.isfile() else None
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _zip(root: Path, extra_names: Sequence[str] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(root.rglob("*")):
            if p.is_file():
                zf.write(p, f"{root.name}/{p.relative_to(root).as_posix()}")
        for name in extra_names:
            zf.writestr(zipfile.ZipInfo(name), b"evil")
    return buf.getvalue()


def _nothing_finished_looking(home: Path, dest_name: str) -> None:
    """No archive, no .part file, no extracted folder and no temporary folder is left in the cache."""
    left = sorted(p.relative_to(home).as_posix() for p in home.rglob("*") if p.is_file() or p.name.startswith("."))
    assert left == [], left
    assert not (home / "data" / dest_name).exists()


def _evil(info_name: str, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(info_name)
    for k, v in attrs.items():
        setattr(info, k, v)
    return info


def test_good_tgz_extracts_and_the_second_call_uses_the_cache(server, images, tmp_path):
    url = server.add("/data/tiny.tgz", _tgz(images))
    home = tmp_path / "home"
    path = untar_data(url, base=home, progress=False)
    assert path == home / "data" / "tiny"
    assert _files(path) == _files(images)
    assert (home / "archive" / "tiny.tgz").is_file()
    assert server.hits == ["/data/tiny.tgz"]
    assert untar_data(url, base=home, progress=False) == path
    assert server.hits == ["/data/tiny.tgz"], "the second call touched the network"
    hidden = [p for p in home.rglob(".*")]
    assert hidden == [], f"temporary files left behind: {hidden}"


def test_zip_archive_extracts_to_dest(server, images, tmp_path):
    url = server.add("/tiny.zip", _zip(images))
    path = untar_data(url, dest=tmp_path / "mine", base=tmp_path / "home", progress=False)
    assert path == tmp_path / "mine"
    assert _files(path) == _files(images)


def test_archive_without_one_top_folder_extracts_into_dest(server, images, tmp_path):
    url = server.add("/flat.tar.gz", _tgz(images, top="."))
    path = untar_data(url, base=tmp_path / "home", progress=False)
    assert path == tmp_path / "home" / "data" / "flat"
    assert _files(path) == _files(images)


def test_a_pinned_sha256_is_checked(server, images, tmp_path):
    body = _tgz(images)
    url = server.add("/tiny.tgz", body)
    path = untar_data(url, base=tmp_path / "home", sha256=hashlib.sha256(body).hexdigest().upper(), progress=False)
    assert _files(path) == _files(images)


def test_a_truncated_download_is_an_error_and_leaves_nothing_finished(server, images, tmp_path):
    body = _tgz(images)
    url = server.add("/tiny.tgz", body[: len(body) // 2], claimed_length=len(body))
    home = tmp_path / "home"
    with pytest.raises(DownloadError, match="cut off") as err:
        untar_data(url, base=home, progress=False)
    assert url in str(err.value) and f"{len(body):,}" in str(err.value)
    _nothing_finished_looking(home, "tiny")


def test_a_checksum_mismatch_is_an_error_and_leaves_nothing_finished(server, images, tmp_path):
    url = server.add("/tiny.tgz", _tgz(images))
    home = tmp_path / "home"
    with pytest.raises(ChecksumError, match="sha256") as err:
        untar_data(url, base=home, sha256="0" * 64, progress=False)
    assert url in str(err.value)
    _nothing_finished_looking(home, "tiny")


def test_a_dotdot_member_is_refused_and_nothing_is_written_outside(server, images, tmp_path):
    url = server.add("/evil.tgz", _tgz(images, extra=[_evil("../evil.txt"), _evil("tiny/../../evil2.txt")]))
    home = tmp_path / "home"
    with pytest.raises(UnsafeArchiveError, match=r"'\.\./evil\.txt'.*'\.\.'"):
        untar_data(url, base=home, progress=False)
    assert [p for p in tmp_path.rglob("evil*.txt")] == []
    assert not (home / "data" / "evil").exists()
    assert [p.name for p in (home / "data").iterdir()] == [], "no temporary folder is left"


@pytest.mark.parametrize(
    "member",
    [
        _evil("../evil.txt"),
        _evil("/tmp/nbtrain-absolute-evil.txt"),
        _evil("tiny/link", type=tarfile.SYMTYPE, linkname="../../outside"),
        _evil("tiny/abs_link", type=tarfile.SYMTYPE, linkname="/etc"),
        _evil("tiny/hard", type=tarfile.LNKTYPE, linkname="../../etc/passwd"),
        _evil("tiny/dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3),
        _evil("tiny/fifo", type=tarfile.FIFOTYPE),
    ],
    ids=["dotdot", "absolute", "symlink-out", "symlink-absolute", "hardlink-out", "device", "fifo"],
)
def test_unsafe_tar_members_are_refused(member, images, tmp_path):
    archive = tmp_path / "evil.tgz"
    archive.write_bytes(_tgz(images, extra=[member]))
    with pytest.raises(UnsafeArchiveError, match="Refusing to extract"):
        extract_archive(archive, tmp_path / "out" / "evil")
    assert list((tmp_path / "out").iterdir()) == []
    assert not Path("/tmp/nbtrain-absolute-evil.txt").exists()


def test_chained_symlinks_cannot_climb_out(images, tmp_path):
    # Each link looks harmless by name, but writing through the first makes the second point outside.
    archive = tmp_path / "chain.tgz"
    archive.write_bytes(
        _tgz(
            images,
            extra=[
                _evil("tiny/d/l1", type=tarfile.SYMTYPE, linkname=".."),
                _evil("tiny/d/l1/l2", type=tarfile.SYMTYPE, linkname="../.."),
            ],
        )
    )
    with pytest.raises(UnsafeArchiveError, match="inside a symlink"):
        extract_archive(archive, tmp_path / "out" / "chain")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_symlink_inside_the_archive_is_allowed(images, tmp_path):
    first = sorted(p.relative_to(images.parent).as_posix() for p in images.rglob("*.png"))[0]
    archive = tmp_path / "ok.tgz"
    archive.write_bytes(
        _tgz(images, extra=[_evil("tiny/first.png", type=tarfile.SYMTYPE, linkname=first.split("/", 1)[1])])
    )
    out = extract_archive(archive, tmp_path / "ok")
    assert (out / "first.png").is_symlink() and (out / "first.png").read_bytes() == (images.parent / first).read_bytes()


def test_zip_with_a_dotdot_member_is_refused(server, images, tmp_path):
    url = server.add("/evil.zip", _zip(images, extra_names=["../evil.txt"]))
    home = tmp_path / "home"
    with pytest.raises(UnsafeArchiveError, match="'..'"):
        untar_data(url, base=home, progress=False)
    assert [p for p in tmp_path.rglob("evil.txt")] == []
    assert [p.name for p in (home / "data").iterdir()] == []


def test_force_downloads_and_extracts_again(server, images, tmp_path):
    url = server.add("/tiny.tgz", _tgz(images))
    home = tmp_path / "home"
    path = untar_data(url, base=home, progress=False)
    (path / "stale.txt").write_text("from before")
    assert untar_data(url, base=home, force=True, progress=False) == path
    assert server.hits == ["/tiny.tgz", "/tiny.tgz"]
    assert _files(path) == _files(images)
    assert sorted(p.name for p in (home / "data").iterdir()) == ["tiny"]


def test_no_server_error_names_the_url_and_where_to_put_the_archive_by_hand(images, tmp_path):
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/tiny.tgz"
    home = tmp_path / "home"
    with pytest.raises(DownloadError) as err:
        untar_data(url, base=home, progress=False)
    by_hand = home / "archive" / "tiny.tgz"
    assert url in str(err.value) and str(by_hand) in str(err.value) and "no internet" in str(err.value)
    # Following the advice works offline.
    by_hand.write_bytes(_tgz(images))
    assert _files(untar_data(url, base=home, progress=False)) == _files(images)


def test_a_http_error_names_the_status_and_url(server, tmp_path):
    url = server.url + "/missing.tgz"
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        untar_data(url, base=tmp_path / "home", progress=False)
    assert url in str(err.value)
    _nothing_finished_looking(tmp_path / "home", "missing")


def test_a_local_archive_path_is_extracted_without_a_download(images, tmp_path):
    archive = tmp_path / "tiny.tar.gz"
    archive.write_bytes(_tgz(images))
    path = untar_data(archive, base=tmp_path / "home", progress=False)
    assert path == tmp_path / "home" / "data" / "tiny"
    assert _files(path) == _files(images)


def test_names_map_to_the_teaching_datasets(tmp_path):
    assert DATASET_NAMES["pets"] == URLs.PETS == "https://s3.amazonaws.com/fast-ai-imageclas/oxford-iiit-pet.tgz"
    assert DATASET_NAMES["imagenette"] == URLs.IMAGENETTE_160
    assert DATASET_NAMES["mnist"] == URLs.MNIST
    with pytest.raises(FileNotFoundError, match="pets"):
        untar_data("no-such-dataset", base=tmp_path)
