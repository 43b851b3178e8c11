"""No import cycles between the modules of cmd_jax and data_prep (docs/architecture.md).

Every module is parsed with ``ast`` (nothing is imported) and every import statement in it
counts, at the top of the module or inside a function: ``import a.b``, ``from a import b``
(an edge to the submodule ``a.b`` when there is one, otherwise to the package ``a``, i.e.
its ``__init__``), relative imports resolved against the importing module's package.
Imports of anything outside the two packages are ignored. The graph must have no cycle;
the failure names each one (``a -> b -> a``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("cmd_jax", "data_prep")


def module_files(root: Path = REPO, packages=PACKAGES) -> dict[str, Path]:
  """``{dotted module name: file}`` of every module of ``packages`` (a package is its ``__init__``)."""
  out = {}
  for package in packages:
    for path in sorted((root / package).rglob("*.py")):
      parts = list(path.relative_to(root).with_suffix("").parts)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      out[".".join(parts)] = path
  return out


def _resolve(name: str, modules) -> str | None:
  """The longest prefix of a dotted name that is one of ``modules`` (``a.b.func`` -> ``a.b``)."""
  parts = name.split(".")
  for n in range(len(parts), 0, -1):
    candidate = ".".join(parts[:n])
    if candidate in modules:
      return candidate
  return None


def imports_of(module: str, path: Path, modules) -> set[str]:
  """The modules of ``modules`` that ``module`` (the file ``path``) imports anywhere in its code."""
  is_package = path.name == "__init__.py"
  package = module if is_package else module.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
    if isinstance(node, ast.Import):
      for alias in node.names:
        out.add(_resolve(alias.name, modules))
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split(".")
        base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
        source = ".".join(base + ([node.module] if node.module else []))
      else:
        source = node.module
      for alias in node.names:
        submodule = f"{source}.{alias.name}"
        out.add(submodule if submodule in modules else _resolve(source, modules))
  out.discard(None)
  out.discard(module)
  return out


def import_graph(root: Path = REPO, packages=PACKAGES) -> dict[str, set[str]]:
  files = module_files(root, packages)
  return {module: imports_of(module, path, files) for module, path in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], set[str]]]:
  """``(cycle, component)`` per strongly connected component of more than one module: a
  shortest cycle ``[a, b, ..., a]`` through its first module, and all its modules."""
  index, low, on_stack, stack, components = {}, {}, set(), [], []

  def connect(v):  # Tarjan's algorithm
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        connect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        components.append(set(component))

  for v in sorted(graph):
    if v not in index:
      connect(v)

  cycles = []
  for component in components:
    start = min(component)
    # Breadth-first search inside the component for the shortest way back to ``start``.
    previous, frontier, last = {start: None}, [start], None
    while last is None:
      last = next((v for v in frontier if start in graph[v]), None)
      nxt = []
      for v in frontier:
        for w in sorted(graph[v] & component):
          if w not in previous:
            previous[w] = v
            nxt.append(w)
      frontier = nxt
    path = [last]
    while previous[path[-1]] is not None:
      path.append(previous[path[-1]])
    cycles.append((path[::-1] + [start], component))
  return sorted(cycles, key=lambda c: c[0])


def test_no_import_cycles():
  graph = import_graph()
  assert "cmd_jax.trainers.pretrain" in graph and "data_prep.pku" in graph  # the walk found the packages
  lines = []
  for cycle, component in find_cycles(graph):
    others = sorted(component - set(cycle))
    lines.append(" -> ".join(cycle) + (f" (the circle also takes in {', '.join(others)})" if others else ""))
  assert not lines, ("import cycles (a piece shared by two modules belongs in a module below both):\n"
                     + "\n".join(lines))


@pytest.fixture
def toy_packages(tmp_path):
  """A package ``p`` with a cycle through a function-level relative import and a
  ``from p import submodule`` import, and an acyclic package ``q``."""
  files = {
      "p/__init__.py": "",
      "p/a.py": "from p import b\n",
      "p/b.py": "import os\n\ndef f():\n  from .sub import c\n",
      "p/sub/__init__.py": "",
      "p/sub/c.py": "from ..a import thing\n",
      "q/__init__.py": "from q.x import name\n",
      "q/x.py": "import q.y\nfrom q import y\n",
      "q/y.py": "from . import z\n",
      "q/z.py": "",
  }
  for name, text in files.items():
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text(text)
  return tmp_path


def test_graph_and_cycles_of_toy_packages(toy_packages):
  graph = import_graph(toy_packages, ("p", "q"))
  assert graph["p.a"] == {"p.b"}
  assert graph["p.b"] == {"p.sub.c"}
  assert graph["p.sub.c"] == {"p.a"}
  assert graph["q"] == {"q.x"} and graph["q.x"] == {"q.y"} and graph["q.y"] == {"q.z"}
  assert find_cycles(graph) == [(["p.a", "p.b", "p.sub.c", "p.a"], {"p.a", "p.b", "p.sub.c"})]
