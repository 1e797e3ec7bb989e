"""The shape of the code: no import cycles in fastsnn/, no file over the size limit, one place per setting."""

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import fastsnn
from fastsnn.callbacks import SNNConversion

ROOT = Path(fastsnn.__file__).parent
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The fastsnn modules ``path`` imports, anywhere in it (function bodies included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return {m for m in found if m in modules and m != name}


def _import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: _imports(path, set(files)) for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_fastsnn():
    # a package's __init__ importing its own submodules is how packages work, not a cycle
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in _import_graph().items()}
    assert _cycle(graph) is None


def test_fastsnn_imports_nothing_of_tasks_or_hydra():
    for path in ROOT.rglob("*.py"):
        text = path.read_text()
        assert "import tasks" not in text and "from tasks" not in text, path
        assert "import hydra" not in text and "from hydra" not in text, path


def test_no_file_in_fastsnn_is_over_the_limit():
    long = {
        str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long


def test_the_runtime_only_executes():
    assert len((ROOT / "convert" / "runtime.py").read_text().splitlines()) <= 300


def _snn_group() -> dict:
    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(str(conf), version_base=None):
        cfg = compose("config", overrides=["timesteps=3"])
    return cfg


def test_every_simulation_option_has_one_default_everywhere():
    fields = {f.name: f.default for f in dataclasses.fields(fastsnn.SimulationConfig)}
    cfg = _snn_group()
    group = {k: v for k, v in cfg.snn.items() if k != "_target_"}
    assert set(group) == set(fields)
    # the run's T and neuron come from the top level; every other option is the dataclass default
    assert {k: v for k, v in group.items() if k not in ("timesteps", "signed")} == {
        k: v for k, v in fields.items() if k not in ("timesteps", "signed")
    }
    assert cfg.signed == fields["signed"]
    assert instantiate(cfg.callbacks.snn_conversion).simulation == fastsnn.SimulationConfig(timesteps=3)
    # convert_to_snn and the callback take the settings object, not a copy of its options
    params = inspect.signature(fastsnn.convert_to_snn).parameters
    assert [p.kind for p in params.values()][-1] == inspect.Parameter.VAR_KEYWORD
    assert not set(params) & set(fields) and not set(inspect.signature(SNNConversion).parameters) & set(fields)


def test_convert_to_snn_options_are_the_settings_fields():
    q = fastsnn.quantize_model(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2)), 2)
    with pytest.raises(TypeError, match="unknown simulation option"):
        fastsnn.convert_to_snn(q, chunks=4)
    with pytest.raises(ValueError, match="mode must be one of"):
        fastsnn.SimulationConfig(mode="fast")
