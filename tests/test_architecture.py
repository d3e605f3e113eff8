"""The import structure of covnb: no cycle between its modules, and data flowing one way.

The graph is read from the source (ast), with the imports at the top of a module AND those inside
functions (a function-level import hides a dependency, it does not remove it).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "covnb"

#: Stages of the data flow, first to last: a module may import modules of its own or an earlier
#: stage, never of a later one. (A module not listed here is still checked for cycles.)
STAGES = {
    "base": {"__init__", "cluster", "io_utils", "registry", "cache", "quiet", "aggregate", "compiled", "media", "canonical",
             "run_folders"},
    "data": {"phantom_style", "phantom_screen", "phantom_draw", "phantom", "near_duplicates", "datasets", "dataset_table",
             "dataset_layouts", "fetch", "splits"},
    "frames": {"frames", "frame_treatments"},
    "features": {"torch_pickle", "efficientnet_lite", "backbones", "models", "weights", "weights_tfjs"},
    "fit": {"experiments.recipes", "experiments.features", "experiments.fitting", "experiments.keras_loop",
            "uncertainty", "feature_norm", "nuisance",
            "fewshot_embeddings", "fewshot_episodes", "fewshot_methods"},
    # cross-validation and few-shot episodes fit and score: they sit with evaluation
    "evaluate": {"experiments.crossval", "fewshot_evaluation", "fewshot_curves", "fewshot_plots", "fewshot", "evaluate",
                 "calibration", "predict", "prediction_trust", "heatmaps", "cam_layers", "cam_gradients", "cam", "cam_export",
                 "explorer_state", "widgets",
                 "explore_common", "explore_census", "explore_frames", "explore_duplicates", "explore_phantom",
                 "explore", "ensemble"},
    "report": {"experiments.training", "experiments", "train", "audit", "backbone_comparison", "trust", "model_card", "parameters", "report",
               "report_page", "notebook_html", "cli", "cli_common", "cli_data", "cli_train", "cli_cam", "__main__"},
    # what the notebooks call: figures, sentences and studies built on everything above
    "notebooks": {"notebook_display", "recipe_text", "transfer_study", "study_plots", "exploration_summary",
                  "fewshot_study", "fewshot_text", "cam_figures", "cam_model", "trust_demo", "transfer_summary"},
}
ORDER = list(STAGES)
STAGE_OF = {module: ORDER.index(stage) for stage, modules in STAGES.items() for module in modules}

#: Edges still to be removed by the restructuring of train.py (issue 10: its fitting and
#: cross-validation move out, and trust.py then imports those modules instead of train). Each one
#: must still exist: remove it from here when it goes.
PENDING_EDGES: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    """``frames`` for covnb/frames.py, ``experiments.crossval`` for covnb/experiments/crossval.py,
    ``experiments`` for covnb/experiments/__init__.py (the package's own __init__ stays ``__init__``)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(dotted: str, names, modules: set[str]) -> list[str]:
    """The covnb modules an ``import`` of ``dotted`` (relative to covnb, may be '') with ``names`` reaches."""
    found = []
    if dotted and dotted in modules:
        found.append(dotted)
    for name in names:
        candidate = f"{dotted}.{name}" if dotted else name
        if candidate in modules:
            found.append(candidate)
    if not found and dotted:  # a name inside a module of a subpackage: its longest existing prefix
        parts = dotted.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        if parts:
            found.append(".".join(parts))
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """{module: {imported covnb module: line}} for every module of the package and its subpackages."""
    paths = sorted(path for path in PACKAGE.rglob("*.py") if "notebooks" not in path.parts)
    modules = {_module_name(path) for path in paths}
    graph: dict[str, dict[str, int]] = {}
    for path in paths:
        me = _module_name(path)
        package = me if path.name == "__init__.py" else me.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("covnb."):
                        targets += _resolve(alias.name.split(".", 1)[1], [], modules)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "covnb" or node.module.startswith("covnb."):
                    dotted = node.module.split(".", 1)[1] if "." in node.module else ""
                    targets = _resolve(dotted, [a.name for a in node.names], modules)
            elif isinstance(node, ast.ImportFrom) and node.level:  # relative: from .x import y
                base = package.split(".") if package and package != "__init__" else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                dotted = ".".join(base + ([node.module] if node.module else []))
                targets = _resolve(dotted, [a.name for a in node.names], modules)
            for target in targets:
                if target != me:
                    edges.setdefault(target, node.lineno)
        graph[me] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]], ignore=frozenset()) -> list[str] | None:
    """One import cycle (as a list of modules, first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, {})):
            if (module, target) in ignore:
                continue
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 1}}) is None
    assert find_cycle({"a": {"b": 1}, "b": {"a": 1}}, ignore={("b", "a")}) is None


def test_the_graph_sees_function_level_imports(tmp_path):
    graph = import_graph()
    assert "media" in graph["frames"] and "phantom" in graph["datasets"]
    assert "backbones" in graph["weights"]  # imported inside functions only (Keras is heavy)


def test_no_import_cycle_between_covnb_modules():
    graph = import_graph()
    cycle = find_cycle(graph, ignore=PENDING_EDGES)
    assert cycle is None, "import cycle: " + " -> ".join(
        f"{module} (line {graph[module][target]})" for module, target in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_pending_edges_still_exist():
    graph = import_graph()
    gone = [edge for edge in PENDING_EDGES if edge[1] not in graph.get(edge[0], {})]
    assert not gone, f"these edges are gone: remove them from PENDING_EDGES: {gone}"


def test_data_flows_one_way():
    graph = import_graph()
    wrong = [f"{module} ({ORDER[STAGE_OF[module]]}) imports {target} ({ORDER[STAGE_OF[target]]}) at line {line}"
             for module, edges in graph.items() if module in STAGE_OF
             for target, line in edges.items()
             if target in STAGE_OF and STAGE_OF[target] > STAGE_OF[module] and (module, target) not in PENDING_EDGES]
    assert not wrong, "imports against the data flow:\n" + "\n".join(wrong)


@pytest.mark.parametrize("module", ["datasets", "frames", "phantom", "media", "canonical"])
def test_data_modules_never_import_fitting_evaluation_or_reporting(module):
    later = {"train", "fewshot", "evaluate", "predict", "report", "report_page", "cli", "trust", "models", "backbones"}
    assert not later & set(import_graph()[module])


def test_base_helpers_import_no_other_covnb_module_than_base_ones():
    graph = import_graph()
    for module in STAGES["base"]:
        if module in graph:
            assert set(graph[module]) <= STAGES["base"], (module, graph[module])


def test_import_covnb_and_the_registry_stay_light():
    code = ("import sys, covnb, covnb.registry, covnb.io_utils, covnb.aggregate; "
            "heavy = [m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout.strip()
    assert out == "[]"
