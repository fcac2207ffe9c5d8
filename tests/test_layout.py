"""The shape of the code: dependencies run one way, no import circle, no file past ~350 lines.

    cli -> commands (train, finetune, evaluate, compress, search, serve, explain) -> api (the LM facade)
        -> sampling / engine -> runs (the loading layer) -> models, data -> config, tokenizer, chat, io
"""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "lmkit"
LAYERS = [  # a module may import modules of its own layer or a lower one, never a higher one
    ["errors", "io", "sampling_config", "config_rules", "config", "config_help", "tokenizer", "chat", "chat_jinja",
     "chat_tools"],
    ["models", "data"],
    ["runs"],
    ["sampling", "engine", "speculative", "textstream", "beam", "grammar", "prefix_cache"],
    ["api"],
    ["train", "finetune", "evaluate", "compress", "search", "explain", "viz", "report", "report_svg", "serve"],
    ["cli", "__init__", "__main__"],
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def modules() -> dict[str, Path]:
    out = {}
    for f in SRC.rglob("*.py"):
        parts = f.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f  # "" is the package itself
    return out


def imports(name: str, path: Path, top_level: bool) -> list[tuple[str, int]]:
    """The lmkit modules `name` imports (module-level ones, or those inside functions), with line numbers."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level else [n for f in ast.walk(tree)
                                         if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                                         for n in ast.walk(f)]
    package = [p for p in name.split(".") if p]
    package = package if path.name == "__init__.py" else package[:-1]
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            found += [(target, node.lineno)] if node.module else [(f"{target}.{a.name}".strip("."), node.lineno)
                                                                    for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lmkit"):
            found.append((node.module.removeprefix("lmkit").strip("."), node.lineno))
    return found


def layer_of(module: str) -> int:
    return LAYER[module.split(".")[0] or "__init__"]


def test_dependencies_run_one_way():
    wrong = []
    for name, path in modules().items():
        for target, line in imports(name, path, top_level=True):
            if target and layer_of(target) > layer_of(name):
                wrong.append(f"{path.relative_to(SRC)}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_circle():
    mods = modules()
    graph = {n: {t for t, _ in imports(n, p, top_level=True) if t in mods or t.rsplit(".", 1)[0] in mods}
             for n, p in mods.items()}
    graph = {n: {t if t in mods else t.rsplit(".", 1)[0] for t in ts} - {n} for n, ts in graph.items()}
    state: dict[str, int] = {}

    def visit(n, stack):
        state[n] = 1
        for t in graph.get(n, ()):
            if state.get(t) == 1 and not n.startswith(t + "."):  # a package's __init__ importing its own parts
                raise AssertionError("import circle: " + " -> ".join(stack + [n, t]))
            if t not in state:
                visit(t, stack + [n])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [])


def test_function_level_imports_only_in_the_cli():
    """Inside functions, lmkit modules are imported only by the CLI (so that --help loads no torch) and the
    package's lazy __init__; optional third-party extras may be imported where they are used."""
    late = [f"{p.relative_to(SRC)}:{line} imports {t}" for n, p in modules().items()
            if not (n.startswith("cli") or n == "")
            for t, line in imports(n, p, top_level=False)]
    assert not late, "\n".join(late)


def test_no_file_is_longer_than_350_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 350}
    assert not long, long
