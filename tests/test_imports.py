"""Imports: the CLI answers `--help` and config errors without loading jax, and no module of
mmjax or benchmarks imports itself back, at module level or inside a function."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("jax", "orbax.checkpoint", "tensorflow_datasets", "grain", "torch")


def test_the_cli_answers_help_and_config_errors_without_heavy_imports():
    code = f"""
import contextlib, io, sys
from mmjax import cli
with contextlib.redirect_stdout(io.StringIO()):
    try:
        cli.main(["--help"])
    except SystemExit:
        pass
with contextlib.redirect_stderr(io.StringIO()) as err:
    code = cli.main(["train", "--config.train.nonexistent_key=1"])
assert code == 2 and "nonexistent_key" in err.getvalue(), (code, err.getvalue())
print([m for m in {HEAVY!r} if m in sys.modules])
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", f"imported by `import mmjax.cli`: {done.stdout}"


def modules(*roots) -> dict[str, pathlib.Path]:
    """{dotted module name: file} of the .py files under ROOT/root for each root."""
    found = {}
    for root in roots:
        for path in (ROOT / root).rglob("*.py"):
            found[".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def imported(module: str, path: pathlib.Path, known) -> set[str]:
    """The `known` modules that `module` imports anywhere in its file. `from pkg import sub`
    counts the submodule pkg.sub; `from mod import name` counts mod."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + [base] if base else parts)
            subs = {f"{base}.{a.name}" for a in node.names} & set(known)
            found |= subs | ({base} if len(subs) < len(node.names) else set())
    return {m for m in found if m in known and m != module}


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each import cycle as 'a -> b -> a' (depth-first; a cycle may show from several starts)."""
    found, done, stack = set(), set(), []

    def visit(m):
        stack.append(m)
        for d in sorted(graph[m]):
            if d in stack:
                found.add(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in done:
                visit(d)
        stack.pop()
        done.add(m)

    for m in sorted(graph):
        if m not in done:
            visit(m)
    return sorted(found)


def test_the_cycle_finder_finds_a_function_level_cycle(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == ["a -> b -> c -> a"]
    path = tmp_path / "m.py"
    path.write_text("import x.y\nfrom x import z, CONSTANT\n\ndef f():\n    from x.y import thing\n")
    assert imported("pkg.m", path, {"x", "x.y", "x.z", "pkg.m"}) == {"x", "x.y", "x.z"}


def test_no_import_cycles_in_mmjax_or_benchmarks():
    known = modules("mmjax", "benchmarks")
    graph = {m: imported(m, path, known) for m, path in known.items()}
    assert len(graph) > 50 and graph["mmjax.cli"]
    assert cycles(graph) == []
