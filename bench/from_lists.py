"""ImageDataLoaders.from_lists over many files with bad ones among them: time grows linearly.

Writes N tiny real PNG files (10% of them not images), then times `from_lists(..., valid_idx=...,
bad_files="skip")` at several sizes. Leaving the bad files out once took time quadratic in N.

    python bench/from_lists.py              # 25k, 50k, 100k, 200k files
    python bench/from_lists.py --sizes 20000
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from nbtrain import ImageDataLoaders  # noqa: E402


def write_files(root: Path, n: int) -> tuple[list[Path], list[str]]:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 200)).save(buf, format="PNG")
    png = buf.getvalue()
    files, labels = [], []
    for i in range(n):
        label = f"c{i % 10}"
        folder = root / label
        if i < 10:
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i}.png"
        path.write_bytes(b"not an image" if i % 10 == 3 else png)  # 10% bad
        files.append(path)
        labels.append(label)
    return files, labels


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="25000,50000,100000,200000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="nbtrain-fromlists-"))
    rows = []
    try:
        files, labels = write_files(tmp, max(sizes))
        for n in sizes:
            valid_idx = list(range(0, n, 5))
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dls = ImageDataLoaders.from_lists(
                    tmp, files[:n], labels[:n], valid_idx=valid_idx, bad_files="skip", device="cpu", num_workers=0
                )
            rows.append((n, time.perf_counter() - start, dls.train.n + dls.valid.n))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'files':>8} {'seconds':>8} {'us/file':>8} {'kept':>8}")
    for n, s, kept in rows:
        print(f"{n:>8} {s:>8.2f} {1e6 * s / n:>8.1f} {kept:>8}")


if __name__ == "__main__":
    main()
