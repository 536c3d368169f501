"""`untar_data`: download and safely extract the usual teaching datasets, the way fastai's does.

Archives are checked (size and digest when known), members that would land outside the destination
are refused, and everything is written under a temporary name and renamed into place only when
complete, so an interrupted download or extraction never looks finished.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath

from tqdm.auto import tqdm

from .locations import archive_dir, data_dir, is_loopback
from .paths import Path

__all__ = [
    "CHECKSUMS",
    "ChecksumError",
    "DownloadError",
    "URLs",
    "UnsafeArchiveError",
    "download_url",
    "extract_archive",
    "untar_data",
]

# ----------------------------------------------------------------------------------------------
# untar_data
# ----------------------------------------------------------------------------------------------


class URLs:
    """Addresses of the usual teaching datasets (fastai's names)."""

    S3 = "https://s3.amazonaws.com/fast-ai-"
    S3_IMAGE = f"{S3}imageclas/"
    S3_SAMPLE = f"{S3}sample/"
    PETS = f"{S3_IMAGE}oxford-iiit-pet.tgz"
    IMAGENETTE = f"{S3_IMAGE}imagenette2.tgz"
    IMAGENETTE_160 = f"{S3_IMAGE}imagenette2-160.tgz"
    IMAGENETTE_320 = f"{S3_IMAGE}imagenette2-320.tgz"
    IMAGEWOOF_160 = f"{S3_IMAGE}imagewoof2-160.tgz"
    MNIST = f"{S3_IMAGE}mnist_png.tgz"
    MNIST_SAMPLE = f"{S3_SAMPLE}mnist_sample.tgz"
    MNIST_TINY = f"{S3_SAMPLE}mnist_tiny.tgz"


# Short names accepted by `untar_data` (case, "-" and "_" do not matter).
DATASET_NAMES = {
    "pets": URLs.PETS,
    "oxford_iiit_pet": URLs.PETS,
    "imagenette": URLs.IMAGENETTE_160,
    "imagenette_160": URLs.IMAGENETTE_160,
    "imagenette_320": URLs.IMAGENETTE_320,
    "imagenette_full": URLs.IMAGENETTE,
    "imagewoof": URLs.IMAGEWOOF_160,
    "imagewoof_160": URLs.IMAGEWOOF_160,
    "mnist": URLs.MNIST,
    "mnist_sample": URLs.MNIST_SAMPLE,
    "mnist_tiny": URLs.MNIST_TINY,
}

# What a complete download of each URL is, checked when known. Keys per URL (all optional):
# "sha256", "md5" (hex digests) and "size" (bytes). The sizes and md5s below are the ones fastai
# publishes for these files; no sha256 is known yet: add them here as they are measured.
# A caller's `untar_data(..., sha256=...)` takes precedence over this table.
CHECKSUMS: dict[str, dict[str, str | int]] = {
    URLs.PETS: {"size": 811706944, "md5": "e4db5c768afd933bb91f5f594d7417a4"},
    URLs.IMAGENETTE: {"size": 1557161267, "md5": "2c774ecb40005b35d7937d50f5d42336"},
    URLs.IMAGENETTE_160: {"size": 99003388, "md5": "c475f8f7617a200ba35b9facc48443c3"},
    URLs.IMAGENETTE_320: {"size": 341663724, "md5": "1f1f74f133caff120e575856659b87a2"},
    URLs.IMAGEWOOF_160: {"size": 92612825, "md5": "3559b194123981a540b87132dbda412f"},
    URLs.MNIST: {"size": 15683414, "md5": "03639f83c4e3d19e0a3a53a8a997c487"},
    URLs.MNIST_SAMPLE: {"size": 3214948, "md5": "2dbc7ec6f9259b583af0072c55816a88"},
    URLs.MNIST_TINY: {"size": 342207, "md5": "56143e8f24db90d925d82a5a74141875"},
}


class DownloadError(OSError):
    """A download that failed or did not arrive whole; the message says how to fix it."""


class ChecksumError(DownloadError):
    """A file whose size or checksum is not the expected one."""


class UnsafeArchiveError(ValueError):
    """An archive with a member that would land outside the destination, or a device file."""


_ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".tbz", ".txz", ".tar", ".zip")


def _strip_archive_suffix(name: str) -> str:
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _offline_hint(url: str, archive: Path) -> str:
    return (
        f"If this machine has no internet (Kaggle with internet off, a firewall), download\n  {url}\n"
        f"elsewhere and put the file at\n  {archive}\nthen call this again: it will be used without a download. "
        "Or give untar_data the path of the archive file itself."
    )


def _expected(url: str, sha256: str | None) -> dict:
    # A caller's pin replaces the table entirely, so a stale table entry can always be overridden.
    return {"sha256": sha256.lower()} if sha256 else dict(CHECKSUMS.get(url, {}))


def _hasher(algo: str) -> hashlib._Hash:
    # md5 only checks integrity here; saying so keeps it usable on FIPS-restricted Pythons.
    try:
        return hashlib.new(algo, usedforsecurity=False)
    except TypeError:  # an OpenSSL-less build whose constructor lacks the argument
        return hashlib.new(algo)


def _hash_file(path: Path, algos: Sequence[str]) -> dict[str, str]:
    hashes = {a: _hasher(a) for a in algos}
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            for h in hashes.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashes.items()}


def _check(path: Path, expected: dict, what: str, size: int | None = None, digests: dict | None = None) -> None:
    """Raise ChecksumError unless the file at `path` has the expected size and digests."""
    size = path.stat().st_size if size is None else size
    if "size" in expected and size != int(expected["size"]):
        raise ChecksumError(f"{what} is {size:,} bytes, not the {int(expected['size']):,} expected.")
    algos = [a for a in ("sha256", "md5") if a in expected]
    if not algos:
        return
    digests = digests if digests is not None and all(a in digests for a in algos) else _hash_file(path, algos)
    for a in algos:
        if digests[a] != str(expected[a]).lower():
            raise ChecksumError(f"{what} has {a} {digests[a]}, not the {expected[a]} expected.")


def download_url(
    url: str, dest: Path | str, *, sha256: str | None = None, progress: bool = True, timeout: float = 60
) -> Path:
    """Download `url` to the file `dest`, checking its length and (when known) its checksum.

    The bytes go to `dest.part`, renamed to `dest` only once complete and checked, so a cut-off
    download never looks finished. A failed or truncated download deletes the `.part` file (there is
    no resuming: the next call starts again). Returns `dest`.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    expected = _expected(url, sha256)
    algos = [a for a in ("sha256", "md5") if a in expected]
    # A proxy from the environment cannot reach this machine's own servers: loopback addresses go direct.
    handlers = [urllib.request.ProxyHandler({})] if is_loopback(urllib.parse.urlsplit(url).hostname or "") else []
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers={"User-Agent": "nbtrain"})
    hashes = {a: _hasher(a) for a in algos}
    got = 0
    length = None
    try:
        with opener.open(request, timeout=timeout) as resp, open(part, "wb") as f:
            header = resp.headers.get("Content-Length")
            length = int(header) if header and header.isdigit() else None
            with tqdm(
                total=length,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                disable=not progress,
                leave=False,
            ) as bar:
                cut = False
                while not cut:
                    try:
                        chunk = resp.read(1 << 20)
                    except http.client.IncompleteRead as e:
                        # The server closed early; keep the count honest so the length check below reports it.
                        chunk, cut = e.partial, True
                    if not chunk:
                        break
                    f.write(chunk)
                    got += len(chunk)
                    for h in hashes.values():
                        h.update(chunk)
                    bar.update(len(chunk))
        if length is not None and got != length:
            raise DownloadError(
                f"The download of {url} was cut off: {got:,} of {length:,} bytes arrived. Nothing "
                f"was kept; try again.\n{_offline_hint(url, dest)}"
            )
        try:
            _check(
                part,
                expected,
                f"The download of {url}",
                size=got,
                digests={a: h.hexdigest() for a, h in hashes.items()},
            )
        except ChecksumError as e:
            raise ChecksumError(
                f"{e} The file was deleted. If the file at that address was changed on purpose, "
                "pass the new sha256= to pin it; otherwise try again (the download may have been "
                "corrupted)."
            ) from None
        os.replace(part, dest)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        part.unlink(missing_ok=True)
        if isinstance(e, DownloadError):
            raise
        if isinstance(e, urllib.error.HTTPError):
            raise DownloadError(
                f"Downloading {url} failed: HTTP {e.code} {e.reason}.\n{_offline_hint(url, dest)}"
            ) from None
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"Could not download {url} ({type(e).__name__}: {reason}).\n{_offline_hint(url, dest)}"
        ) from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return dest


def _member_problem(name: str) -> str | None:
    """Why an archive member's name is unsafe to extract, or None."""
    if not name:
        return "has an empty name"
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "climbs out with '..'"
    return None


def _stays_inside(rel: PurePosixPath) -> bool:
    """Whether the relative path `rel`, with '..' resolved by name alone, stays within its root."""
    parts: list[str] = []
    for p in rel.parts:
        if p == "..":
            if not parts:
                return False
            parts.pop()
        elif p not in ("", "."):
            parts.append(p)
    return True


def _check_tar(tf: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Every member of `tf`, or UnsafeArchiveError naming the first that could write outside the destination."""
    members = tf.getmembers()
    links: set[str] = set()
    for m in members:
        name = m.name.rstrip("/")
        problem = _member_problem(name)
        parent = PurePosixPath(name).parent
        if problem is None and (m.ischr() or m.isblk() or m.isfifo() or m.isdev()):
            problem = "is a special file (a device or a FIFO)"
        if problem is None and any(str(p) in links for p in PurePosixPath(name).parents):
            # Writing through a symlink from the same archive is how chained links escape a name-only check.
            problem = "is inside a symlink from the same archive"
        if problem is None and m.issym():
            if m.linkname.startswith("/") or not _stays_inside(parent / m.linkname):
                problem = f"is a symlink to {m.linkname!r}, outside the destination"
            links.add(name)
        if problem is None and m.islnk():
            if m.linkname.startswith("/") or not _stays_inside(PurePosixPath(m.linkname)):
                problem = f"is a hard link to {m.linkname!r}, outside the destination"
        if problem is not None:
            raise UnsafeArchiveError(f"Refusing to extract: the member {m.name!r} {problem}.")
    return members


def _extract_tar(archive: Path, into: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = _check_tar(tf)
        if hasattr(tarfile, "data_filter"):
            # Python 3.12+ and 3.11.4+: the standard library's own checks, on top of ours.
            try:
                tf.extractall(into, members=members, filter="data")
            except tarfile.FilterError as e:
                raise UnsafeArchiveError(f"Refusing to extract {archive}: {e}") from None
        else:
            for m in members:  # our checks passed; also drop setuid/setgid bits as the data filter does
                m.mode = (m.mode or 0o644) & ~(stat.S_ISUID | stat.S_ISGID)
            tf.extractall(into, members=members)


def _extract_zip(archive: Path, into: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            problem = _member_problem(info.filename)
            if problem is not None:
                raise UnsafeArchiveError(f"Refusing to extract: the member {info.filename!r} of {archive} {problem}.")
        zf.extractall(into)  # zip symlinks come out as small regular files, never as links


def extract_archive(archive: Path | str, dest: Path | str) -> Path:
    """Safely extract a tar (plain, gz, bz2, xz) or zip archive to the folder `dest`, which must not exist.

    Members that would land outside `dest` (absolute paths, '..', links pointing out) and device files
    are refused with UnsafeArchiveError before anything is written. Extraction happens in a hidden
    temporary folder beside `dest`, renamed to `dest` when complete. An archive holding one top folder
    (e.g. `oxford-iiit-pet/`) becomes `dest` itself. Returns `dest`.
    """
    archive, dest = Path(archive), Path(dest)
    if zipfile.is_zipfile(archive):
        extract: Callable[[Path, Path], None] = _extract_zip
    elif tarfile.is_tarfile(archive):
        extract = _extract_tar
    else:
        raise ValueError(
            f"{archive} is not a tar or zip archive. Delete it and try again, or give the path of a "
            ".tgz/.tar.gz/.tar.bz2/.tar.xz/.zip file."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        extract(archive, tmp)
        entries = [p for p in tmp.iterdir() if p.name not in ("__MACOSX", ".DS_Store")]
        only = entries[0] if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink() else None
        os.rename(only if only is not None else tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _replace_dir(new: Path, dest: Path) -> None:
    """Put the folder `new` at `dest`, moving an existing `dest` aside first and deleting it after."""
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    try:
        os.rename(dest, old / dest.name)
        try:
            os.rename(new, dest)
        except OSError:
            os.rename(old / dest.name, dest)  # keep the earlier folder rather than leave nothing
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(new, ignore_errors=True)


def untar_data(
    url_or_name: str | os.PathLike,
    dest: Path | str | None = None,
    *,
    sha256: str | None = None,
    force: bool = False,
    base: Path | str | None = None,
    progress: bool = True,
) -> Path:
    """Download (once) and extract a dataset archive; return the folder it was extracted to.

    Args:
        url_or_name: a URL (e.g. `URLs.PETS`), a short name ("pets", "imagenette", "mnist",
            "mnist_sample", ...), or the path of an archive file already on this machine.
        dest: the folder to extract to; default `<data dir>/<archive name without extension>`.
        sha256: the archive's expected SHA-256; when given it is checked instead of the `CHECKSUMS` entry.
        force: download and extract again even if the cache has them.
        base: the cache root (default `$NBTRAIN_HOME` or `~/.nbtrain`): archives go in `base/archive`,
            datasets in `base/data` (without `base`, `$NBTRAIN_DATA` is honoured for datasets).
        progress: show a progress bar while downloading.

    The folder is nbtrain's `Path`, with fastai's `ls()`. A second call finds the extracted folder
    and touches no network. Archives are checked against
    their size and checksum when known, and extracted safely (see `extract_archive`). With no
    internet, put the archive by hand where the error message says, and call again.
    """
    text = os.fspath(url_or_name)
    key = text.strip().lower().replace("-", "_")
    if key not in DATASET_NAMES and "://" not in text:
        archive, url = Path(text).expanduser().absolute(), None
        if not archive.is_file():
            raise FileNotFoundError(
                f"{text!r} is not a URL, nor a dataset name ({', '.join(sorted(DATASET_NAMES))}), "
                f"nor an archive file: nothing is at {archive}."
            )
    else:
        url = DATASET_NAMES.get(key, text)
        fname = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "download"
        archive = archive_dir(base) / fname
    dest = Path(dest).expanduser() if dest is not None else data_dir(base) / _strip_archive_suffix(archive.name)
    if dest.exists() and not force:
        return Path(dest)
    if url is not None and (force or not archive.is_file()):
        download_url(url, archive, sha256=sha256, progress=progress)
    else:
        what = f"The archive {archive}" + (f" (from {url})" if url else "")
        try:
            _check(archive, _expected(url, sha256) if url else ({"sha256": sha256.lower()} if sha256 else {}), what)
        except ChecksumError as e:
            fix = "Delete it, or call again with force=True to download it anew." if url else "Check the file."
            raise ChecksumError(f"{e} {fix}") from None
    if dest.exists():  # force=True: build the new folder beside the old one, then swap
        fresh = extract_archive(archive, dest.parent / f".{dest.name}.new-{os.urandom(4).hex()}")
        _replace_dir(fresh, dest)
        return Path(dest)
    return Path(extract_archive(archive, dest))
