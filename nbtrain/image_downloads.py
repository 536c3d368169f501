"""`download_images`: fetch a list of image URLs into a folder, keeping only what decodes as an image.

What a web server sends back is not trusted: error pages served with status 200, endless or
trickling bodies, redirects to `file:`, decompression bombs, rate limits. Each URL gets a deadline
for its whole transfer (not only per socket read), bounded retries that honour Retry-After, and caps
on bytes and pixels. A file is written under a temporary name and linked into place without ever
replacing an existing file, so a killed run leaves no partial image; a manifest under the folder
(`.nbtrain-downloads.jsonl`) records each URL's outcome, which lets a rerun resume and lets
`image_sources` say where any downloaded file came from.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import heapq
import http.client
import io
import itertools
import json
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace

import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from .locations import is_loopback
from .paths import Path

__all__ = ["MANIFEST_NAME", "download_images", "image_sources", "read_manifest"]

MANIFEST_NAME = ".nbtrain-downloads.jsonl"
# Many image hosts refuse Python's default User-Agent; a browser's is what they expect.
USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
)
HEADERS = {
    "User-Agent": USER_AGENT,
    "Accept": "image/avif,image/webp,image/apng,image/*,*/*;q=0.8",
    "Accept-Encoding": "identity",
}
MAX_REDIRECTS = 5
RETRY_STATUSES = {429, 500, 502, 503, 504}
MAX_RETRY_WAIT = 10.0  # seconds: a longer Retry-After is reported instead of waited for
FORMAT_SUFFIX = {
    "JPEG": ".jpg",
    "MPO": ".jpg",
    "PNG": ".png",
    "GIF": ".gif",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "PPM": ".ppm",
    "ICO": ".ico",
}
COLUMNS = ["url", "file", "status", "reason", "bytes", "width", "height", "sha256", "duplicate_of"]
_PART_PREFIX = ".nbtrain-part-"


@dataclass
class Row:
    """One URL's outcome, as in the report and the manifest (`file` relative to the folder there)."""

    url: str
    file: str | None = None
    status: str = "failed"  # saved, duplicate or failed
    reason: str = ""
    bytes: int | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    duplicate_of: str | None = None


@dataclass
class Limits:
    timeout: float = 4.0
    deadline: float = 30.0
    retries: int = 2
    max_bytes: int = 20_000_000
    max_pixels: int = 89_478_485  # PIL's own decompression-bomb threshold
    full_decode: bool = False


class FetchError(Exception):
    """Why one URL gave no body; `wait` is set when a retry may help (seconds to wait first)."""

    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.wait = wait


# ----------------------------------------------------------------------------------------------
# One URL to bytes
# ----------------------------------------------------------------------------------------------


def _check_url(url: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = url if len(url) < 80 else url[:77] + "..."
        raise FetchError(f"not an http(s) URL ({shown!r}); only http and https are fetched")
    return parts


class _Deadline:
    """Cuts the current connection when the URL's time is up, whatever phase it is in (a server that
    trickles one byte a second never trips a per-read timeout)."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.expired = self.cancelled = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        _WATCHDOG.add(self)

    def watch(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if self.expired:
                raise TimeoutError("deadline")

    def fire(self) -> None:
        with self._lock:
            if self.cancelled:
                return
            self.expired = True
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def release(self) -> bool:
        """Stop watching the connection (to keep it for the next URL); False if the deadline cut it."""
        with self._lock:
            self._sock = None
            return not self.expired

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            self._sock = None


class _Watchdog:
    """One thread for every deadline (a thread per URL would cost more to start than a small download)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._count = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, deadline: _Deadline) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline.end, next(self._count), deadline))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="nbtrain-download-deadlines", daemon=True)
                self._thread.start()
            if self._heap[0][2] is deadline:
                self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    heapq.heappop(self._heap)[2].fire()
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


_WATCHDOG = _Watchdog()


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()  # loading the CA certificates once, not per URL


def _connection(parts: urllib.parse.SplitResult, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
    """A new connection for `parts`, through the environment's proxy except to this machine, and whether
    it goes through a plain-http proxy (which takes absolute URLs)."""
    https = parts.scheme == "https"
    proxy = (
        None
        if is_loopback(parts.hostname or "") or urllib.request.proxy_bypass(parts.hostname or "")
        else urllib.request.getproxies().get(parts.scheme)
    )
    cls = http.client.HTTPSConnection if https else http.client.HTTPConnection
    kwargs = {"context": _tls_context()} if https else {}
    if not proxy:
        return cls(parts.hostname, parts.port, timeout=timeout, **kwargs), False
    p = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
    if not https:
        return http.client.HTTPConnection(p.hostname, p.port, timeout=timeout), True
    conn = cls(p.hostname, p.port, timeout=timeout, **kwargs)
    conn.set_tunnel(parts.hostname, parts.port)
    return conn, False


_IDLE = threading.local()  # each worker thread's open connections, by (scheme, host, port)


def _idle() -> dict:
    if not hasattr(_IDLE, "conns"):
        _IDLE.conns = {}
    return _IDLE.conns


def _send(
    parts: urllib.parse.SplitResult, limits: Limits, deadline: _Deadline
) -> tuple[http.client.HTTPConnection, bool, http.client.HTTPResponse]:
    """GET `parts` on this thread's kept-alive connection to its server, or a new one when there is
    none or the server closed it while idle. Returns the connection, its proxy flag and the response."""
    key = (parts.scheme, parts.hostname, parts.port)
    kept = _idle().pop(key, None)
    for conn, absolute in [kept] if kept else []:
        try:
            deadline.watch(conn.sock)
            conn.request("GET", _target(parts, absolute), headers=HEADERS)
            return conn, absolute, conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionError):
            conn.close()
    conn, absolute = _connection(parts, limits.timeout)
    conn.connect()
    deadline.watch(conn.sock)
    conn.request("GET", _target(parts, absolute), headers=HEADERS)
    return conn, absolute, conn.getresponse()


def _target(parts: urllib.parse.SplitResult, absolute: bool) -> str:
    if absolute:
        return urllib.parse.urlunsplit(parts._replace(fragment=""))
    return urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))


def _retry_after(value: str | None, attempt: int) -> float:
    """Seconds to wait before the next try: the server's Retry-After when it gives one, else a backoff."""
    backoff = 0.5 * 2**attempt
    if not value:
        return backoff
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return backoff


def _read_body(resp: http.client.HTTPResponse, limits: Limits) -> bytes:
    length = resp.getheader("Content-Length")
    if length and length.isdigit() and int(length) > limits.max_bytes:
        raise FetchError(f"too large: {int(length):,} bytes announced, the cap is {limits.max_bytes:,}")
    buf = io.BytesIO()
    while True:
        try:
            chunk = resp.read(1 << 16)  # the deadline's watchdog ends a read that trickles
        except http.client.IncompleteRead as e:
            raise FetchError(f"cut off after {buf.tell() + len(e.partial):,} bytes", wait=0.0) from None
        if not chunk:
            break
        buf.write(chunk)
        if buf.tell() > limits.max_bytes:
            raise FetchError(f"too large: more than the cap of {limits.max_bytes:,} bytes")
    if length and length.isdigit() and buf.tell() < int(length):
        raise FetchError(f"cut off: {buf.tell():,} of {int(length):,} bytes arrived", wait=0.0)
    return buf.getvalue()


def _get_once(url: str, limits: Limits, attempt: int, deadline: _Deadline) -> tuple[bytes, str]:
    """The body and content type of `url`, following at most MAX_REDIRECTS redirects to http(s)."""
    seen = [url]
    for _ in range(MAX_REDIRECTS + 1):
        parts = _check_url(url)
        conn, absolute, keep = None, False, False
        try:
            conn, absolute, resp = _send(parts, limits, deadline)
            status = resp.status
            if status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                if not location:
                    raise FetchError(f"HTTP {status} redirect without a Location")
                url = urllib.parse.urljoin(url, location.strip())
                if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                    raise FetchError(f"redirect to a non-http(s) URL refused ({url[:80]!r})")
                if url in seen:
                    raise FetchError(f"redirect loop ({' -> '.join(u[:60] for u in seen + [url])})")
                seen.append(url)
                continue
            if status in RETRY_STATUSES:
                wait = _retry_after(resp.getheader("Retry-After"), attempt)
                why = f"HTTP {status} {resp.reason}".strip()
                if wait > MAX_RETRY_WAIT:
                    raise FetchError(
                        f"{why}; Retry-After of {wait:.0f} s is longer than the {MAX_RETRY_WAIT:.0f} s "
                        "this waits: try these URLs again later"
                    )
                raise FetchError(why, wait=wait)
            if status != 200:
                raise FetchError(f"HTTP {status} {resp.reason}".strip())
            body = _read_body(resp, limits), resp.getheader("Content-Type") or ""
            keep = not resp.will_close
            return body
        finally:
            if keep and deadline.release():  # the next URL to this server reuses the connection
                _idle()[(parts.scheme, parts.hostname, parts.port)] = (conn, absolute)
            elif conn is not None:
                conn.close()
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")


def fetch(url: str, limits: Limits) -> tuple[bytes, str]:
    """The body and content type of `url`, with bounded retries; raises FetchError with the reason."""
    for attempt in range(limits.retries + 1):
        deadline = _Deadline(limits.deadline)
        error: FetchError | None = None
        try:
            body = _get_once(url, limits, attempt, deadline)
        except FetchError as e:
            error = e
        except TimeoutError as e:
            error = FetchError(f"no answer within {limits.timeout:g} s ({e})", wait=0.5 * 2**attempt)
        except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine) as e:
            error = FetchError(f"connection failed ({type(e).__name__}: {e})", wait=0.5 * 2**attempt)
        except (OSError, http.client.HTTPException, ValueError) as e:  # DNS, TLS, malformed answers
            error = FetchError(f"{type(e).__name__}: {e}")
        finally:
            deadline.cancel()
        if deadline.expired:  # a cut connection can look like a short but complete body
            raise FetchError(f"deadline of {limits.deadline:g} s for the whole transfer passed")
        if error is None:
            return body
        if error.wait is None or attempt == limits.retries:
            raise error
        time.sleep(error.wait)
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------------------------
# Bytes to a checked image
# ----------------------------------------------------------------------------------------------


def _arrived_whole(fmt: str, data: bytes) -> bool:
    """Whether bytes whose header parsed end as a complete file of their format: a JPEG's end-of-image
    marker (after the first scan header, FF D9 means nothing else), a PNG's chunk checksums up to IEND.
    A file that passes needs no decoding to tell it was not cut short."""
    if fmt in ("JPEG", "MPO"):
        return data.rstrip(b"\0\r\n\t ").endswith(b"\xff\xd9")
    if fmt == "PNG":
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.verify()
            return True
        except Exception:  # let the decoder below say what is wrong
            return False
    return False


def inspect_image(data: bytes, content_type: str, max_pixels: int, full_decode: bool = False) -> tuple[str, int, int]:
    """The format, width and height of an image's bytes; raises FetchError with why they are not a usable
    image (an HTML error page, a truncated file, a decompression bomb). Pixels are decoded unless the
    file's end shows it arrived whole (see `_arrived_whole`), or always with `full_decode`."""
    if not data:
        raise FetchError("empty body (0 bytes)")
    head = data[:512].lstrip().lower()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt, (w, h) = img.format or "", img.size
                if w < 1 or h < 1:
                    raise FetchError("an image with no pixels")
                if w * h > max_pixels:
                    raise FetchError(f"decompression bomb refused: {w}x{h} is more than {max_pixels:,} pixels")
                if full_decode or not _arrived_whole(fmt, data):
                    img.draft(img.mode, (64, 64))  # JPEGs decode every block, at a reduced scale
                    img.load()
    except FetchError:
        raise
    except Image.DecompressionBombError as e:
        raise FetchError(f"decompression bomb refused ({e})") from None
    except Exception as e:  # PIL raises many types for what is not an image
        if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")) or "html" in content_type:
            raise FetchError(f"an HTML page, not an image (content type {content_type or 'none'!r})") from None
        raise FetchError(
            f"not a complete image ({type(e).__name__}: {e}; content type {content_type or 'none'!r})"
        ) from None
    return fmt, w, h


# ----------------------------------------------------------------------------------------------
# The folder: names, manifest, atomic placement
# ----------------------------------------------------------------------------------------------


def read_manifest(dest: Path | str) -> dict[str, Row]:
    """The last recorded outcome of each URL downloaded into `dest` (empty when none was)."""
    rows: dict[str, Row] = {}
    path = Path(dest) / MANIFEST_NAME
    if not path.is_file():
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                d = json.loads(line)
                rows[d["url"]] = Row(**{k: d.get(k) for k in COLUMNS})
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a killed run
    return rows


def image_sources(paths: Iterable[Path | str]) -> dict[Path, str]:
    """The source URL of each of `paths` that `download_images` saved, from the manifest in its folder.

    Files that no manifest names are left out; e.g. `image_sources(get_image_files(path))`.
    """
    by_folder: dict[Path, dict[str, str]] = {}
    out: dict[Path, str] = {}
    for p in paths:
        p = Path(p)
        folder = p.parent
        if folder not in by_folder:
            by_folder[folder] = {
                r.file: r.url for r in read_manifest(folder).values() if r.status == "saved" and r.file
            }
        url = by_folder[folder].get(p.name)
        if url is not None:
            out[p] = url
    return out


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_hash(path: Path) -> str | None:
    try:
        return _hash(path.read_bytes())
    except OSError:
        return None


def _url_stem(url: str) -> str:
    name = urllib.parse.unquote(Path(urllib.parse.urlsplit(url).path).stem)
    return re.sub(r"[^\w.-]+", "_", name).strip("._")[:100] or "image"


class _Folder:
    """The destination folder: claims names, places files without replacing any, appends the manifest."""

    def __init__(self, dest: Path, done: dict[str, Row]):
        self.dest = dest
        self._lock = threading.Lock()
        self._claimed: set[str] = set()
        self._by_hash = {
            r.sha256: r.file
            for r in done.values()
            if r.status == "saved" and r.sha256 and r.file and (dest / r.file).is_file()
        }
        path = dest / MANIFEST_NAME
        torn = False
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"  # a line cut by a kill: end it before appending
        self._manifest = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if torn:
            os.write(self._manifest, b"\n")
        for stale in dest.glob(_PART_PREFIX + "*"):  # what a killed run was writing
            stale.unlink(missing_ok=True)

    def close(self) -> None:
        os.close(self._manifest)

    def record(self, row: Row) -> None:
        line = (json.dumps(asdict(row)) + "\n").encode()
        with self._lock:
            os.write(self._manifest, line)  # one append per line: a kill cuts at most the last one

    def claim_hash(self, digest: str, name: str) -> str | None:
        """The file already holding these bytes, or None after reserving them for `name`."""
        with self._lock:
            if digest in self._by_hash:
                return self._by_hash[digest]
            self._by_hash[digest] = name
            return None

    def release_hash(self, digest: str) -> None:
        with self._lock:
            self._by_hash.pop(digest, None)

    def place(self, data: bytes, digest: str, stem: str, suffix: str) -> str:
        """Write `data` as `stem + suffix` (or `stem` plus a number when that name holds other bytes)."""
        part = self.dest / f"{_PART_PREFIX}{uuid.uuid4().hex}"
        with open(part, "wb") as f:
            f.write(data)
        try:
            for k in range(10_000):
                name = f"{stem}-{k}{suffix}" if k else f"{stem}{suffix}"
                with self._lock:
                    if name in self._claimed:
                        continue
                    self._claimed.add(name)
                target = self.dest / name
                if target.exists() and _file_hash(target) == digest:
                    return name  # an earlier run placed it and was killed before its manifest line
                try:
                    os.link(part, target)  # fails if the name exists: nothing is ever replaced
                    return name
                except FileExistsError:
                    continue
                except OSError:  # a file system without hard links
                    if not target.exists():
                        os.replace(part, target)
                        return name
            raise FetchError(f"no free file name for {stem}{suffix}")
        finally:
            part.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# download_images
# ----------------------------------------------------------------------------------------------


def _download_one(folder: _Folder, i: int, url: str, limits: Limits, preserve_filename: bool) -> Row:
    row = Row(url=url)
    try:
        data, content_type = fetch(url, limits)
        fmt, row.width, row.height = inspect_image(data, content_type, limits.max_pixels, limits.full_decode)
        row.bytes, row.sha256 = len(data), _hash(data)
        stem = _url_stem(url) if preserve_filename else f"{i:08d}"
        suffix = FORMAT_SUFFIX.get(fmt, "." + fmt.lower() if fmt else ".jpg")
        first = folder.claim_hash(row.sha256, f"{stem}{suffix}")
        if first is not None:
            row.status, row.duplicate_of, row.reason = "duplicate", first, f"the same bytes as {first}"
        else:
            try:
                row.file = folder.place(data, row.sha256, stem, suffix)
            except BaseException:
                folder.release_hash(row.sha256)
                raise
            row.status = "saved"
    except FetchError as e:
        row.reason = str(e)
    except OSError as e:
        row.reason = f"could not write the file ({type(e).__name__}: {e})"
    folder.record(row)
    return row


def _read_urls(url_file: Path | str | None, urls: Sequence[str] | None, max_pics: int) -> list[str]:
    if urls is None and url_file is None:
        raise ValueError(
            "Pass the URLs: download_images(dest, urls=[...]) or download_images(dest, url_file=path) "
            "with one URL per line."
        )
    if urls is None:
        urls = Path(url_file).read_text(encoding="utf-8").splitlines()
    if isinstance(urls, str):
        raise TypeError("urls= is one string; pass a list of URLs (urls=[url]), or a file of them as url_file=.")
    found = [u.strip() if isinstance(u, str) else u for u in urls]
    bad = [u for u in found if not isinstance(u, str)]
    if bad:
        raise TypeError(
            f"urls= must hold strings; got {type(bad[0]).__name__} ({bad[0]!r:.80}). A search result "
            "gives its URLs with e.g. [r['image'] for r in results]."
        )
    return [u for u in found if u][:max_pics]


def _report(dest: Path, rows: list[Row]) -> pd.DataFrame:
    records = [
        {**asdict(r), "file": r.file and dest / r.file, "duplicate_of": r.duplicate_of and dest / r.duplicate_of}
        for r in rows
    ]
    return pd.DataFrame(records, columns=COLUMNS).astype({"bytes": "Int64", "width": "Int64", "height": "Int64"})


def download_images(
    dest: Path | str,
    url_file: Path | str | None = None,
    urls: Sequence[str] | None = None,
    max_pics: int = 1000,
    n_workers: int = 8,
    timeout: float = 4,
    preserve_filename: bool = False,
    *,
    deadline: float = 30.0,
    retries: int = 2,
    max_bytes: int = 20_000_000,
    max_pixels: int = 89_478_485,
    full_decode: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Download the images at `urls` (or listed one per line in `url_file`), at most `max_pics`, into `dest`.

    Files are named as fastai's: `00000000.jpg`, `00000001.png`, ... by position in the list (the
    suffix from the decoded format), or the URL's own file name with `preserve_filename=True`.
    Only a complete image is kept: its pixels are decoded unless its end marker shows it arrived whole
    (JPEG, PNG); `full_decode=True` decodes every one. `timeout` bounds each network read, `deadline`
    each URL's whole transfer; 429 and 5xx answers are retried `retries` times. Rerunning with the
    same list resumes: URLs already saved are not fetched again, and no existing file is replaced.
    Returns the report, one row per URL: url, file, status (saved, duplicate or failed), reason,
    bytes, width, height, sha256, duplicate_of. It is also kept in `dest/.nbtrain-downloads.jsonl`.
    """
    urls = _read_urls(url_file, urls, max_pics)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    limits = Limits(
        timeout=timeout,
        deadline=deadline,
        retries=retries,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
        full_decode=full_decode,
    )
    done = read_manifest(dest)
    rows, todo, first_index = _plan(urls, done, dest)
    folder = _Folder(dest, done)
    try:
        _run(folder, todo, rows, limits, preserve_filename, n_workers, progress)
    finally:
        folder.close()
    for row in rows:  # a URL listed twice points at what its first line gave
        if row.reason == _SAME_URL:
            first = rows[first_index[row.url]]
            row.duplicate_of = first.file or first.duplicate_of
    return _report(dest, rows)


_SAME_URL = "the same URL as an earlier line"


def _plan(urls: list[str], done: dict[str, Row], dest: Path) -> tuple[list[Row], list[tuple[int, str]], dict[str, int]]:
    """The rows known without fetching (saved by an earlier run, a URL listed twice), the URLs to fetch
    with their positions, and the first position of each URL."""
    rows: list[Row] = [Row(url=u) for u in urls]
    todo: list[tuple[int, str]] = []
    first_index: dict[str, int] = {}
    for i, url in enumerate(urls):
        old = done.get(url)
        if old is not None and (old.status == "duplicate" or (old.status == "saved" and (dest / old.file).is_file())):
            rows[i] = replace(old, reason=old.reason or "saved by an earlier run")
        elif url in first_index:
            rows[i] = Row(url=url, status="duplicate", reason=_SAME_URL)
        else:
            first_index[url] = i
            todo.append((i, url))
    return rows, todo, first_index


def _run(
    folder: _Folder,
    todo: list[tuple[int, str]],
    rows: list[Row],
    limits: Limits,
    preserve_filename: bool,
    n_workers: int,
    progress: bool,
) -> None:
    """Fetch `todo` on `n_workers` threads into `rows`. On an interrupt, URLs not started are dropped and
    those under way end within their deadline."""
    counts = {"saved": 0, "failed": 0, "duplicate": 0}
    pool = ThreadPoolExecutor(max(1, n_workers))
    try:
        with tqdm(total=len(todo), desc="download_images", disable=not progress or not todo, unit="url") as bar:
            futures = {pool.submit(_download_one, folder, i, url, limits, preserve_filename): i for i, url in todo}
            for fut in as_completed(futures):
                row = rows[futures[fut]] = fut.result()
                counts[row.status] += 1
                bar.set_postfix(counts, refresh=False)
                bar.update()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
