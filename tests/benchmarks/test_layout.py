"""The benchmarks package: every benchmark runs as ``python -m benchmarks.<name>`` with the common
options, and the package stays small (no sys.path edits, no private imports across modules, short
functions)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import benchmarks
from benchmarks import cli

ROOT = Path(benchmarks.__file__).parent
SOURCES = {p.stem: p.read_text() for p in ROOT.glob("*.py")}
COMMON = ["--quick", "--threads", "--device", "--seed", "--max-load", "--max-wait", "--out-dir", "--name"]


def test_the_benchmarks_are_the_modules_that_run_as_main():
    runnable = {name for name, text in SOURCES.items() if 'if __name__ == "__main__":' in text}
    assert runnable == set(benchmarks.BENCHMARKS)


@pytest.mark.slow
@pytest.mark.parametrize("name", benchmarks.BENCHMARKS)
def test_every_benchmark_runs_as_a_module_with_help(name):
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", "--help"],
        cwd=ROOT.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert all(option in done.stdout for option in COMMON), done.stdout


def test_no_path_edits_no_private_imports_and_short_functions():
    lines = 0
    for name, text in SOURCES.items():
        lines += len(text.splitlines())
        assert "sys.path" not in text, name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmarks"):
                assert not [a.name for a in node.names if a.name.startswith("_")], (name, node.module)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 60, f"{name}.{node.name}: {node.end_lineno - node.lineno} lines"
    assert lines <= 1500


def test_common_options_and_their_quick_defaults(capsys):
    p = cli.parser("a benchmark")
    args = cli.parse(p, ["--quick", "--threads", "2"], "example")
    assert (args.name, args.max_wait, args.threads, args.device) == ("example_quick", 60, 2, "auto")
    assert args.argv == ["--quick", "--threads", "2"] and args.out_dir == ROOT / "results"
    assert cli.parse(p, ["--name", "x", "--max-wait", "5"], "example").name == "x"
    load, waited = cli.wait_for_quiet(max_load=-1.0, max_wait_s=0)  # never quiet: measures anyway, says so
    assert waited < 1 and (load is None or "measuring anyway" in capsys.readouterr().err)
