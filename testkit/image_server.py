"""A local HTTP server (127.0.0.1 only) that serves real image files and the faults the web sends back.

Used by tests/test_image_downloads.py, tests/test_fastbook.py and bench/downloads.py. Routes:
  /img/<name>            an image from the site's table (any of the formats below)
  /photo/<k>.jpg         photo k % n, made unique by a JPEG comment holding k (many distinct good URLs)
  /closes-after/<k>.jpg  the same, then the connection is closed without a word (it goes stale)
  /needs-query.jpg?id=1  an image only when the query string arrives, else 404
  /404.jpg, /500-then-ok.jpg, /429-then-ok.jpg (Retry-After: 1), /429-for-an-hour.jpg
  /html-200.jpg          an HTML error page with status 200 and an image content type
  /truncated.jpg, /empty.jpg, /huge.jpg (200 MB), /trickle.jpg (one byte a second)
  /loop-a.jpg <-> /loop-b.jpg, /to-file.jpg (302 to file:///etc/passwd), /bomb.png (a PNG bomb)
Each fault that fails once counts its requests per path, so a retry sees the second answer.
"""

from __future__ import annotations

import io
import struct
import sys
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from PIL import Image

HUGE_BYTES = 200 * 1024 * 1024
TRICKLE_SECONDS = 3600


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    """A small RGB picture that differs with `seed` (distinct bytes, so no two are duplicates)."""
    img = Image.linear_gradient("L").resize((w, h))
    return Image.merge(
        "RGB", (img, img.rotate(90 + seed % 180).resize((w, h)), Image.new("L", (w, h), (seed * 37) % 256))
    )


def png_bomb(side: int = 20000) -> bytes:
    """A small PNG that claims side x side 1-bit pixels: a decompression bomb of a few hundred KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


def format_zoo() -> dict[str, bytes]:
    """Real images in the formats that trip up pipelines: CMYK, 16-bit, palette, EXIF-rotated, WebP, animated GIF."""
    base = gradient(80, 60, seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to view
    frames = [gradient(40, 30, seed=s).convert("P") for s in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return {
        "rgb.jpg": _save(base, "JPEG", quality=90),
        "cmyk.jpg": _save(base.convert("CMYK"), "JPEG"),
        "16bit.png": _save(Image.linear_gradient("L").resize((70, 50)).convert("I;16"), "PNG"),
        "palette.png": _save(base.convert("P", palette=Image.ADAPTIVE, colors=16), "PNG"),
        "exif-rotated.jpg": _save(gradient(90, 40, seed=5), "JPEG", exif=exif),
        "photo.webp": _save(base, "WEBP"),
        "animated.gif": gif.getvalue(),
    }


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a comment segment after its start marker: other bytes, same picture."""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


class Site:
    """What the server answers: the image table, the photos, and the request counts of the faults."""

    def __init__(self, images: dict[str, bytes] | None = None, photos: list[bytes] | None = None):
        self.images = images if images is not None else format_zoo()
        self.photos = photos or [_save(gradient(64, 48, seed=s), "JPEG") for s in range(8)]
        good = self.images.get("rgb.jpg") or next(iter(self.images.values()))
        self.good = good
        self.bomb = png_bomb()
        self.hits: Counter[str] = Counter()
        self.agents: set[str] = set()
        self._lock = threading.Lock()

    def photo(self, k: int) -> bytes:
        return with_comment(self.photos[k % len(self.photos)], f"photo {k}")

    def hit(self, path: str) -> int:
        with self._lock:
            self.hits[path] += 1
            return self.hits[path]


class Handler(BaseHTTPRequestHandler):
    site: Site  # set on the subclass that `serve` makes
    protocol_version = "HTTP/1.1"  # keep-alive, as real image hosts offer
    disable_nagle_algorithm = True  # as real servers do: else each answer on a kept connection waits for an ACK
    requests = connections = 0  # every request and connection any server took, counted on this base class

    def setup(self) -> None:
        Handler.connections += 1
        super().setup()

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(
        self,
        status: int,
        body: bytes = b"",
        ctype: str = "image/jpeg",
        headers: dict | None = None,
        length: int | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should on the endless bodies

    def _route(self) -> None:
        site, parts = self.site, urlsplit(self.path)
        site.agents.add(self.headers.get("User-Agent", ""))
        Handler.requests += 1
        path = parts.path
        ok = site.good
        if path.startswith("/img/") and path[5:] in site.images:
            name = path[5:]
            suffix = name.rsplit(".", 1)[-1]
            ctype = {"png": "image/png", "gif": "image/gif", "webp": "image/webp"}.get(suffix, "image/jpeg")
            return self._send(200, site.images[name], ctype)
        if path.startswith("/photo/"):
            return self._send(200, site.photo(int(path[7:].split(".")[0])))
        if path.startswith("/closes-after/"):  # says nothing of closing, then closes: a kept connection goes stale
            self.close_connection = True
            return self._send(200, site.photo(int(path[14:].split(".")[0])))
        if path == "/needs-query.jpg":
            return self._send(200, site.photo(-1)) if parts.query else self._send(404, b"no query", "text/plain")
        if path == "/500-then-ok.jpg":
            return self._send(500, b"oops", "text/plain") if site.hit(path) == 1 else self._send(200, site.photo(-2))
        if path == "/429-then-ok.jpg":
            if site.hit(path) == 1:
                return self._send(429, b"slow down", "text/plain", {"Retry-After": "1"})
            return self._send(200, site.photo(-3))
        if path == "/429-for-an-hour.jpg":
            return self._send(429, b"slow down", "text/plain", {"Retry-After": "3600"})
        if path == "/html-200.jpg":
            return self._send(200, b"<!DOCTYPE html><html><body>Image not found</body></html>", "image/jpeg")
        if path == "/truncated.jpg":
            return self._send(200, ok[: len(ok) // 2])
        if path == "/empty.jpg":
            return self._send(200, b"")
        if path == "/huge.jpg":
            self._send(200, b"", length=HUGE_BYTES)
            block = bytes(1 << 20)
            for _ in range(HUGE_BYTES // len(block)):
                self.wfile.write(block)
            return None
        if path == "/trickle.jpg":
            self._send(200, b"", length=len(ok))
            for i in range(min(len(ok), TRICKLE_SECONDS)):
                self.wfile.write(ok[i : i + 1])
                self.wfile.flush()
                time.sleep(1)
            return None
        if path in ("/loop-a.jpg", "/loop-b.jpg"):
            other = "/loop-b.jpg" if path == "/loop-a.jpg" else "/loop-a.jpg"
            return self._send(302, b"", "text/plain", {"Location": other})
        if path == "/to-file.jpg":
            return self._send(302, b"", "text/plain", {"Location": "file:///etc/passwd"})
        if path == "/bomb.png":
            return self._send(200, site.bomb, "image/png")
        return self._send(404, b"not found", "text/plain")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a killed client resets its kept connections
            super().handle_error(request, client_address)


def serve(site: Site | None = None, port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start the server on 127.0.0.1 in a daemon thread; returns it and its base URL (no trailing slash).
    Stop it with `server.shutdown()`."""
    handler = type("SiteHandler", (Handler,), {"site": site or Site()})
    server = Server(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


FAULTS = {
    "404": "/404.jpg",
    "500 then 200": "/500-then-ok.jpg",
    "429, Retry-After 1 s": "/429-then-ok.jpg",
    "429, Retry-After 1 hour": "/429-for-an-hour.jpg",
    "HTML page with status 200": "/html-200.jpg",
    "truncated JPEG": "/truncated.jpg",
    "zero-byte body": "/empty.jpg",
    "200 MB body": "/huge.jpg",
    "trickle, 1 byte/s": "/trickle.jpg",
    "redirect loop": "/loop-a.jpg",
    "redirect to file:": "/to-file.jpg",
    "PNG bomb (20000x20000)": "/bomb.png",
    "query string needed": "/needs-query.jpg?id=1",
    "same image, first URL": "/img/rgb.jpg",
    "same image, second URL": "/img/rgb.jpg?copy=2",
    **{
        f"format: {name}": f"/img/{name}"
        for name in ("cmyk.jpg", "16bit.png", "palette.png", "exif-rotated.jpg", "photo.webp", "animated.gif")
    },
    "not http: file:": "file:///etc/passwd",
}


if __name__ == "__main__":  # serve until killed, printing the base URL (for a bench in another process)
    photos = [open(p, "rb").read() for p in sys.argv[1:]]
    _, base = serve(Site(photos=photos or None))
    print(base, flush=True)
    threading.Event().wait()
