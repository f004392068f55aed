"""The package's shape: imports flow one way through the pipeline's layers, and no module imports
one that imports it back. Parsed from the source, so imports inside functions count too."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "megatron_speech"

# Lower layers never import higher ones. Modules of one layer may import each other (acyclically).
LAYERS = [
    {"atomic", "backends", "cpu_compat", "config_loader", "parallel"},
    {"lm_tokenizer"},
    {"models"},
    {"data", "jobs", "nemo_runs"},
    {"speech"},
    {"speech_tokenizer"},
    {"speech_decoder"},
    {"checkpoints"},
    {"training"},
    {"synthesis"},
    {"evaluation"},
]
EXEMPT = {"testing", "_C"}  # test helpers may use everything; nothing but tests imports them


def _layer(top: str) -> int:
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    raise AssertionError(f"megatron_speech.{top} is in no layer of {__file__}: add it where it belongs")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {name for name in found if name.startswith("megatron_speech.")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {i for i in _imports(path) if i in modules} for name, path in modules.items()}


GRAPH = _graph()


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_a_higher_layer(module):
    top = module.split(".")[1] if "." in module else module
    if top in EXEMPT or module == "megatron_speech":
        return
    upward = [i for i in GRAPH[module] if i.split(".")[1] not in EXEMPT and _layer(i.split(".")[1]) > _layer(top)]
    assert not upward, f"{module} imports {upward}, which sit in a higher layer"


def test_no_import_cycles():
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in GRAPH[module]:
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(target):] + [module, target]))
            if target not in state:
                visit(target, path + [module])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])


def test_the_layer_check_finds_an_upward_import(tmp_path):
    """The check itself can fail: a lower-layer module importing training is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from megatron_speech.training.loop import pretrain\n")
    assert "megatron_speech.training.loop" in _imports(bad) and _layer("training") > _layer("checkpoints")
