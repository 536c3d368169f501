"""download_images against a local server of real images and planted faults, side by side with fastai's.

Three parts, each tool in its own process (the server runs in another, testkit/image_server.py):

1. Throughput: images per second on `--good` distinct good URLs (real photos, each made unique by a
   JPEG comment), same server, same n_workers.
2. Faults: every fault of testkit/image_server.FAULTS; for each, what each tool reported and left on disk.
   fastai's runs get a wall-clock limit, since some of them never end.
3. Kill trial: a `--kill-urls` download SIGKILLed at a random moment, `--kill-trials` times; after each,
   the files on disk are checked (partial = an image file whose bytes are not the server's) and the
   run is resumed; the final set is compared with a clean run's.

    python bench/downloads.py                       # all three, with fastai when it is installed
    python bench/downloads.py --good 500 --kill-trials 5

Exits 1 if a fault ends other than EXPECTED says, a partial file is found, or a resumed set differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # nbtrain and testkit from this checkout

from testkit import image_server  # noqa: E402

FASTAI_LIMIT = 60  # seconds fastai's fault run may take before it is reported as hung and killed
IMAGE_SUFFIXES = {".jpg", ".png", ".gif", ".webp", ".bmp", ".tif"}

# How each fault must end with nbtrain: status, and a piece of the reason.
EXPECTED = {
    "404": ("failed", "HTTP 404"),
    "500 then 200": ("saved", ""),
    "429, Retry-After 1 s": ("saved", ""),
    "429, Retry-After 1 hour": ("failed", "Retry-After of 3600 s"),
    "HTML page with status 200": ("failed", "HTML page"),
    "truncated JPEG": ("failed", "not a complete image"),
    "zero-byte body": ("failed", "empty body"),
    "200 MB body": ("failed", "too large"),
    "trickle, 1 byte/s": ("failed", "deadline"),
    "redirect loop": ("failed", "redirect loop"),
    "redirect to file:": ("failed", "non-http(s)"),
    "PNG bomb (20000x20000)": ("failed", "decompression bomb"),
    "query string needed": ("saved", ""),
    "same image, first URL": ("saved|duplicate", ""),
    "same image, second URL": ("saved|duplicate", ""),
    "not http: file:": ("failed", "only http and https"),
    **{
        f"format: {n}": ("saved", "")
        for n in ("cmyk.jpg", "16bit.png", "palette.png", "exif-rotated.jpg", "photo.webp", "animated.gif")
    },
}


# -- the processes: server, and one tool's run --------------------------------------------------------------


def photo_files() -> list[Path]:
    """Real photos: the ImageNet JPEGs that ship in foolbox's wheel, when installed."""
    try:
        from nbtrain.samples import make_photos_sample

        return sorted(make_photos_sample(Path(tempfile.gettempdir()) / "nbtrain-bench-photos").rglob("*.jpg"))
    except (FileNotFoundError, ImportError):
        return []


def start_server(photos: list[Path]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(HERE.parent / "testkit" / "image_server.py"), *map(str, photos)],
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, proc.stdout.readline().strip()


def run_tool(
    tool: str, urls: list[str], dest: Path, n_workers: int, limit: float | None = None, per_url_dirs: bool = False
) -> dict:
    """Run one tool in a child process on `urls`; its JSON answer, or {'hung': True} past `limit`."""
    url_file = dest.parent / f"{dest.name}-urls.json"
    url_file.write_text(json.dumps(urls))
    out = dest.parent / f"{dest.name}-result.json"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        tool,
        "--urls",
        str(url_file),
        "--dest",
        str(dest),
        "--n-workers",
        str(n_workers),
        "--result",
        str(out),
    ] + (["--per-url-dirs"] if per_url_dirs else [])
    try:
        subprocess.run(cmd, timeout=limit, check=True, stdout=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"hung": True, **(json.loads(out.read_text()) if out.exists() else {})}
    return json.loads(out.read_text())


def child(tool: str, urls: list[str], dest: Path, n_workers: int, result: Path, per_url_dirs: bool) -> None:
    if tool == "fastai":
        from fastai.vision.utils import download_images as fastai_download

        def download(d, u):
            fastai_download(d, urls=u, n_workers=n_workers)
            return None
    else:
        from nbtrain import download_images

        def download(d, u):
            return download_images(d, urls=u, max_pics=len(u), n_workers=n_workers, progress=False)

    print("start", flush=True)
    if per_url_dirs:  # one folder per URL, each in its own thread, so a hung URL does not hide the others
        import threading

        outcome: dict[str, str] = {}

        def one(i: int, url: str) -> None:
            try:
                download(dest / f"{i:03d}", [url])
                outcome[str(i)] = "returned"
            except Exception as e:
                outcome[str(i)] = f"raised {type(e).__name__}: {str(e)[:80]}"
            result.write_text(json.dumps({"outcome": outcome}))

        for i, url in enumerate(urls):
            (dest / f"{i:03d}").mkdir(parents=True, exist_ok=True)
            threading.Thread(target=one, args=(i, url), daemon=True).start()
        while len(outcome) < len(urls):
            time.sleep(0.2)
        return
    start = time.perf_counter()
    report = download(dest, urls)
    seconds = time.perf_counter() - start
    rows = [] if report is None else json.loads(report.astype(str).to_json(orient="records"))
    result.write_text(json.dumps({"seconds": seconds, "rows": rows}))


# -- what is on disk -----------------------------------------------------------------------------------------


def decodes(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.width * img.height > 89_478_485:
                return False
            img.load()
        return True
    except Exception:
        return False


def left_on_disk(folder: Path) -> str:
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    if not files:
        return "nothing"
    parts = []
    for p in files:
        size = p.stat().st_size
        shown = f"{size / 1e6:.0f} MB" if size > 1e6 else f"{size:,} B"
        parts.append(f"{p.suffix or 'no suffix'} {shown}{'' if decodes(p) else ' (not an image)'}")
    return f"{len(files)} file{'s' if len(files) > 1 else ''}: " + ", ".join(parts)


# -- the three parts -----------------------------------------------------------------------------------------


def throughput(photos: list[Path], tools: list[str], n: int, n_workers: int, work: Path) -> dict[str, float]:
    proc, base = start_server(photos)
    rates: dict[str, list[float]] = {t: [] for t in tools}
    try:
        for rnd in range(2):
            for tool in tools:
                offset = (rnd * len(tools) + tools.index(tool)) * n
                urls = [f"{base}/photo/{offset + k}.jpg" for k in range(n)]
                dest = work / f"speed-{tool}-{rnd}"
                res = run_tool(tool, urls, dest, n_workers)
                saved = sum(1 for p in dest.iterdir() if p.suffix in IMAGE_SUFFIXES)
                assert saved == n, f"{tool} saved {saved} of {n}"
                rates[tool].append(n / res["seconds"])
    finally:
        proc.kill()
    return {t: max(r) for t, r in rates.items()}


def faults(photos: list[Path], tools: list[str], work: Path) -> tuple[list[dict], bool]:
    rows = {name: {"fault": name} for name in image_server.FAULTS}
    ok = True
    for tool in tools:
        proc, base = start_server(photos)  # a fresh server: the faults that fail once fail again
        urls = [u if "://" in u else base + u for u in image_server.FAULTS.values()]
        dest = work / f"faults-{tool}"
        start = time.perf_counter()
        if tool == "nbtrain":
            res = run_tool(tool, urls, dest, n_workers=8)
            for name, r in zip(image_server.FAULTS, res["rows"]):
                rows[name]["nbtrain"] = f"{r['status']}: {r['reason']}" if r["reason"] else r["status"]
                rows[name]["nbtrain left"] = (
                    f"1 file: {Path(r['file']).suffix}" if r["status"] == "saved" else "nothing"
                )
                status, reason = EXPECTED[name]
                if r["status"] not in status.split("|") or reason not in r["reason"]:
                    ok = False
                    rows[name]["nbtrain"] += "  << UNEXPECTED"
            left = [p for p in dest.iterdir() if p.suffix in IMAGE_SUFFIXES and not decodes(p)]
            ok &= not left
        else:
            res = run_tool(tool, urls, dest, n_workers=8, limit=FASTAI_LIMIT, per_url_dirs=True)
            outcome = res.get("outcome", {})
            for i, name in enumerate(image_server.FAULTS):
                said = outcome.get(str(i), f"still running after {FASTAI_LIMIT} s: killed")
                rows[name]["fastai"] = "returned None" if said == "returned" else said
                rows[name]["fastai left"] = left_on_disk(dest / f"{i:03d}")
        rows_took = time.perf_counter() - start
        proc.kill()
        print(f"  {tool}: the {len(urls)} fault URLs took {rows_took:.1f} s", flush=True)
    return list(rows.values()), ok


def expected_files(photos: list[Path], n: int) -> dict[str, str]:
    site = image_server.Site(photos=[p.read_bytes() for p in photos] or None)
    return {f"{k:08d}.jpg": hashlib.sha256(site.photo(k)).hexdigest() for k in range(n)}


def on_disk(dest: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in dest.iterdir()
        if p.is_file() and not p.name.startswith(".")
    }


def kill_trial(photos: list[Path], n: int, trials: int, work: Path, seed: int = 0) -> tuple[dict, bool]:
    proc, base = start_server(photos)
    urls = [f"{base}/photo/{k}.jpg" for k in range(n)]
    expected = expected_files(photos, n)
    rng = random.Random(seed)
    try:
        clean = run_tool("nbtrain", urls, work / "kill-clean", 8)
        clean_set = on_disk(work / "kill-clean")
        assert clean_set == expected, "the clean run differs from the server's files"
        totals = {
            "partial at the kill": 0,
            "temp files at the kill": 0,
            "files at the kill": 0,
            "partial after resume": 0,
            "missing after resume": 0,
            "extra after resume": 0,
            "temp files after resume": 0,
            "trials equal to the clean run": 0,
        }
        for t in range(trials):
            dest = work / f"kill-{t}"
            (work / f"kill-{t}-urls.json").write_text(json.dumps(urls))
            child_proc = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "nbtrain",
                    "--urls",
                    str(work / f"kill-{t}-urls.json"),
                    "--dest",
                    str(dest),
                    "--n-workers",
                    "8",
                    "--result",
                    str(work / f"kill-{t}.json"),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            child_proc.stdout.readline()  # "start": imports done, the download begins
            time.sleep(rng.uniform(0, clean["seconds"]))
            child_proc.send_signal(signal.SIGKILL)
            child_proc.wait()
            now = on_disk(dest) if dest.exists() else {}
            totals["files at the kill"] += len(now)
            totals["partial at the kill"] += sum(1 for k, h in now.items() if expected.get(k) != h)
            totals["temp files at the kill"] += len(list(dest.glob(".nbtrain-part-*"))) if dest.exists() else 0
            run_tool("nbtrain", urls, dest, 8)
            final = on_disk(dest)
            totals["partial after resume"] += sum(1 for k, h in final.items() if k in expected and expected[k] != h)
            totals["missing after resume"] += len(set(expected) - set(final))
            totals["extra after resume"] += len(set(final) - set(expected))
            totals["temp files after resume"] += len(list(dest.glob(".nbtrain-part-*")))
            totals["trials equal to the clean run"] += final == clean_set
    finally:
        proc.kill()
    ok = (
        totals["partial at the kill"] == 0
        and totals["partial after resume"] == 0
        and totals["trials equal to the clean run"] == trials
    )
    return totals, ok


def table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")).replace("|", "/") for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--good", type=int, default=2000)
    ap.add_argument("--n-workers", type=int, default=8)
    ap.add_argument("--kill-urls", type=int, default=1000)
    ap.add_argument("--kill-trials", type=int, default=20)
    ap.add_argument("--child")
    ap.add_argument("--urls")
    ap.add_argument("--dest")
    ap.add_argument("--result")
    ap.add_argument("--per-url-dirs", action="store_true")
    args = ap.parse_args()
    if args.child:
        child(
            args.child,
            json.loads(Path(args.urls).read_text()),
            Path(args.dest),
            args.n_workers,
            Path(args.result),
            args.per_url_dirs,
        )
        return 0
    try:
        import fastai.vision.utils  # noqa: F401

        tools = ["nbtrain", "fastai"]
    except ImportError:
        tools = ["nbtrain"]
        print("fastai is not installed (pip install '.[bench]'): nbtrain alone.")
    photos = photo_files()
    print(
        f"{len(photos) or 'no'} real photos served{'' if photos else ' (generated pictures instead)'}; "
        f"tools: {', '.join(tools)}\n",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        rates = throughput(photos, tools, args.good, args.n_workers, work)
        print(f"## Throughput: {args.good} good URLs, n_workers={args.n_workers}\n")
        print(table([{"tool": t, "images/s": f"{r:.0f}"} for t, r in rates.items()], ["tool", "images/s"]), "\n")
        rows, faults_ok = faults(photos, tools, work)
        cols = ["fault", "nbtrain", "nbtrain left"] + (["fastai", "fastai left"] if "fastai" in tools else [])
        print("\n## Faults\n")
        print(table(rows, cols), "\n")
        totals, kill_ok = kill_trial(photos, args.kill_urls, args.kill_trials, work)
        print(f"## Kill trial: {args.kill_urls} URLs, SIGKILL at a random moment, {args.kill_trials} times\n")
        print(table([{"count": k, "total": v} for k, v in totals.items()], ["count", "total"]), "\n")
        print(f"whole bench: {time.perf_counter() - start:.0f} s")
    fast_enough = "fastai" not in rates or rates["nbtrain"] >= rates["fastai"]
    print(f"faults as expected: {faults_ok}; kill trial clean: {kill_ok}; throughput at least fastai's: {fast_enough}")
    return 0 if faults_ok and kill_ok else 1


if __name__ == "__main__":
    sys.exit(main())
