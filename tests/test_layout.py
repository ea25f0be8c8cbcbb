"""Layout rules of the gacd_tf package, checked on its source with ``ast``
(nothing is imported, so no TensorFlow).

1. No import cycles between modules, counting imports inside functions too.
2. Imports point down the layers (low to high): core (gacd_tf/__init__, errors,
   registry, settings) < data, models, training < attacks, losses < methods
   < evaluation < analysis, serving < programs. training (resumable fit,
   checkpoints, tf.distribute helpers) needs no data, model or attack, and the
   attacks use its cross-replica helpers, so it sits beside data and models.

The module graph: ``import gacd_tf.a.b`` is an edge to gacd_tf.a.b (a package
stands for its ``__init__``); ``from gacd_tf.a import n`` is an edge to
gacd_tf.a.n when that is a module, else to gacd_tf.a. As in Python, importing
gacd_tf.a.b loads its parent packages implicitly; that adds no edge from
gacd_tf.a.b to gacd_tf.a, only an explicit ``import gacd_tf.a`` or ``from
gacd_tf.a import name`` (name not a submodule) does. Imports inside the lazy
``__getattr__`` of the top package's ``__init__`` are exempt.
"""

import ast
import textwrap
from pathlib import Path

PACKAGE = "gacd_tf"
SOURCE_ROOT = Path(__file__).parents[1]  # the folder holding gacd_tf/

# Layer of each first component under the package; the package's __init__ is core (0).
LAYERS = {"errors": 0, "registry": 0, "settings": 0, "data": 1, "models": 1, "training": 1,
          "attacks": 2, "losses": 2, "methods": 3, "evaluation": 4, "analysis": 5,
          "serving": 5, "programs": 6}


def find_modules(root, package):
    """``{dotted module name: path}`` of every .py file under ``root/package``."""
    modules = {}
    for path in sorted((root / package.replace(".", "/")).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _targets(node, module, is_package, modules, package):
    """Modules of the package one import statement makes its module load."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    base = node.module or ""
    if node.level:  # relative: anchor at the module's own package
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
    if base != package and not base.startswith(package + "."):
        return []
    found = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        found += [sub] if sub in modules else [base] if base in modules else []
    return found


def import_graph(root, package=PACKAGE):
    """``{module: {imported module: [line, ...]}}`` over every import in every file."""
    modules = find_modules(root, package)
    graph = {name: {} for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        exempt = set()
        if name == package:  # the lazy __getattr__ of the top package
            for fn in tree.body:
                if isinstance(fn, ast.FunctionDef) and fn.name == "__getattr__":
                    exempt |= {id(n) for n in ast.walk(fn)}
        for node in ast.walk(tree):  # ast.walk: imports inside functions count too
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in exempt:
                is_package = path.name == "__init__.py"
                for target in _targets(node, name, is_package, modules, package):
                    lines = graph[name].setdefault(target, [])
                    lines += [node.lineno] if node.lineno not in lines else []
    return graph


def find_cycles(graph):
    """Strongly connected components with more than one module (Tarjan), and
    modules that import themselves, each a sorted list."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def layer_of(module, package=PACKAGE):
    """The layer of a module, or None for one outside every layer."""
    rest = module.split(".")[len(package.split(".")):]
    return LAYERS.get(rest[0]) if rest else 0


def upward_edges(graph, package=PACKAGE):
    """``(from, to)`` import edges from a lower layer to a higher one."""
    edges = []
    for src, dsts in graph.items():
        for dst in dsts:
            low, high = layer_of(src, package), layer_of(dst, package)
            if dst != package and None not in (low, high) and low < high:
                edges.append((src, dst))
    return sorted(edges)


def _describe(graph, edges):
    return "\n".join(f"  {a} -> {b} (line {', '.join(map(str, graph[a][b]))})" for a, b in edges)


def test_no_import_cycles():
    graph = import_graph(SOURCE_ROOT)
    cycles = find_cycles(graph)
    report = "\n".join(
        f"cycle of {len(c)}: {', '.join(c)}\n"
        + _describe(graph, [(a, b) for a in c for b in sorted(graph[a]) if b in c])
        for c in cycles)
    assert not cycles, f"import cycles in {PACKAGE}:\n{report}"


def test_layers_point_down():
    graph = import_graph(SOURCE_ROOT)
    up = upward_edges(graph)
    assert not up, (f"imports from a lower layer to a higher one (layers: {LAYERS}):\n"
                    + _describe(graph, up))


def test_every_module_has_a_layer():
    """A module outside every layer would escape test_layers_point_down."""
    unplaced = [m for m in import_graph(SOURCE_ROOT) if layer_of(m) is None]
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"


def _write_package(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_cycle_detector_finds_a_known_cycle(tmp_path):
    _write_package(tmp_path, {
        "toy/__init__.py": "def __getattr__(name):\n    import toy.a\n",  # exempt
        "toy/a.py": "import toy\ndef f():\n    from toy import b\n",  # a -> b inside a function
        "toy/b.py": "from toy.a import f\n",  # b -> a: the cycle a <-> b
        "toy/c.py": "from toy import c\n",  # imports itself
        # A package importing its submodules, which import siblings: no cycle ...
        "toy/ok/__init__.py": "from toy.ok import x\n",
        "toy/ok/x.py": "import toy.ok.y\n",
        "toy/ok/y.py": "",
        # ... but a submodule taking a name from its own package's __init__ is one.
        "toy/bad/__init__.py": "from toy.bad.x import helper\nVALUE = 1\n",
        "toy/bad/x.py": "from toy.bad import VALUE\ndef helper():\n    return VALUE\n",
    })
    graph = import_graph(tmp_path, "toy")
    assert graph["toy.a"] == {"toy": [1], "toy.b": [3]}
    assert graph["toy.ok.x"] == {"toy.ok.y": [1]}
    assert find_cycles(graph) == [["toy.a", "toy.b"], ["toy.bad", "toy.bad.x"], ["toy.c"]]


def test_layer_check_finds_a_known_upward_arrow(tmp_path):
    _write_package(tmp_path, {
        "toy/__init__.py": "def __getattr__(name):\n    import toy.programs.main\n",  # exempt
        "toy/errors.py": "",
        "toy/data/__init__.py": "from toy.errors import *\nimport toy\n",
        "toy/data/load.py": """\
            from toy.data import something_else
            def load():
                from toy.programs import main  # the arrow back up
            """,
        "toy/programs/__init__.py": "",
        "toy/programs/main.py": "from toy import data\nfrom toy.data import load\n",
        "toy/training/loop.py": "import toy.methods.kd\n",  # 3 -> 4: up
        "toy/methods/kd.py": "from toy.training import loop\n",  # 4 -> 3: down
    })
    graph = import_graph(tmp_path, "toy")
    assert upward_edges(graph, "toy") == [("toy.data.load", "toy.programs.main"),
                                          ("toy.training.loop", "toy.methods.kd")]
    assert all(layer_of(m, "toy") is not None for m in graph)


def _string_constants(path):
    """Every string literal of a file (implicitly concatenated ones joined)."""
    return [node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def _joined_strings(path):
    """The f-strings and plain strings of a file, their literal parts joined."""
    texts = _string_constants(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.JoinedStr):
            texts.append("".join(v.value if isinstance(v, ast.Constant) else "{}"
                                 for v in node.values))
    return texts


def test_the_programs_reword_training_advice_that_the_library_gives():
    """programs.common.TRAINING_ADVICE_IN_FLAGS re-words gacd_tf.training's advice in flag
    names by text: each library phrase must still be in gacd_tf/training's messages."""
    common = ast.parse((SOURCE_ROOT / PACKAGE / "programs" / "common.py").read_text())
    table = next(node.value for node in common.body if isinstance(node, ast.Assign)
                 and getattr(node.targets[0], "id", "") == "TRAINING_ADVICE_IN_FLAGS")
    phrases = [ast.literal_eval(pair)[0] for pair in table.elts]
    texts = [t for path in (SOURCE_ROOT / PACKAGE / "training").glob("*.py")
             for t in _joined_strings(path)]
    missing = [p for p in phrases if not any(p in t for t in texts)]
    assert len(phrases) == 4 and not missing, missing
