"""The package's modules import only from the layers below them: no upward import, hence no cycle.

A new module must be given its layer here; that is the point: where it sits is a decision.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nbtrain"

# Bottom first. A module may import from any earlier layer, never from its own or a later one.
LAYERS: list[set[str]] = [
    {"locations", "paths"},  # Kaggle paths, read-only data, data folders; fastai's Path (no torch)
    {
        "environment",
        "fileops",
        "samples",
        "downloads",  # device and precision; safe file changes; sample data
        "image_downloads",
        "image_search",
    },  # image URLs to checked files; image search providers
    {"neighbours", "linear_probe"},  # robust z, kNN, LOF, class contrast; linear classifiers out of fold
    {"decisions"},  # a review's decisions on disk: the log as they are made, the choices file
    {"label_table"},  # a review's result as a CSV of file and label; a cleaned copy from one
    {
        "augmentation",
        "metrics",
        "plots",
        "lr_suggestions",
        "housekeeping",
    },  # transforms, metrics, the one image-grid plotter, lr_find's rules, nbtrain's own files
    {"image"},  # PILImage: any image input to a PIL image
    {"data", "models"},  # datasets and loaders; torchvision models
    {"datablock", "image_resize"},  # fastai's DataBlock API over the loaders; resizing image folders
    {"distributed", "recipe"},  # processes and collectives; the default training recipe
    {"callbacks", "recorder"},  # the events of the training loop; what training records
    {"schedule", "persistence", "summary", "predictions", "progress", "dynamics"},  # over a learner duck-typed
    {"loop"},  # the one training loop, stages in their events
    {"learner"},  # set-up, training state, the public methods
    {"scores", "interpretation"},  # pure scores; plots of a trained model
    {"embeddings"},  # a trained body's features; near-duplicates
    {"image_properties"},  # image checks, no model
    {"label_issues"},  # out-of-fold ranking
    {"audit", "review", "views"},  # issue table; choices and undo (no widget); a view's rows
    {"frontends"},  # the cleaner's two front ends behind one interface
    {"cleaner", "app"},  # the widgets
    {"v1"},  # fastai v1's names (the 2019 course) over all of the above
    {"__main__"},  # the command line
]
LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def package_imports(source: str) -> set[str]:
    """The nbtrain modules a module's code imports, at the top or inside functions; imports only for
    type checkers (`if TYPE_CHECKING:`) never run and are left out."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(a.name for a in node.names)
            elif node.module and node.module.split(".")[0] == "nbtrain":
                parts = node.module.split(".")
                found.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names if a.name in LAYER_OF])
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "nbtrain" and len(parts) > 1:
                    found.add(parts[1])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def test_every_module_has_a_declared_layer():
    assert [m for m in modules() if m not in LAYER_OF] == []


@pytest.mark.parametrize("module", modules())
def test_a_module_imports_only_from_the_layers_below_it(module):
    imported = package_imports((PACKAGE / f"{module}.py").read_text())
    upward = sorted(m for m in imported if m in LAYER_OF and LAYER_OF[m] >= LAYER_OF.get(module, -1))
    assert upward == [], f"{module} (layer {LAYER_OF.get(module)}) imports from its own layer or above: {upward}"


def test_the_import_reader_sees_lazy_imports_and_ignores_type_checking_ones():
    source = """
from __future__ import annotations
from typing import TYPE_CHECKING
from . import fileops
from .data import DataLoader
import nbtrain.learner
if TYPE_CHECKING:
    from .cleaner import ImageClassifierCleaner
def later():
    from .label_issues import find_duplicates
"""
    assert package_imports(source) == {"fileops", "data", "learner", "label_issues"}


def test_the_package_has_no_star_imports():
    stars = [
        p.name
        for p in PACKAGE.glob("*.py")
        if any(
            isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names)
            for n in ast.walk(ast.parse(p.read_text()))
        )
    ]
    assert stars == []
