"""The package layering (SPEC §1), checked on the import statements of every module."""

import ast
from pathlib import Path

import m3d_components

PACKAGE = Path(m3d_components.__file__).parent
LAYERS = ("data", "models", "metrics", "engines", "cli")
# layer → layers it must not import. models may use data.tokens only (the small shared vocabulary).
FORBIDDEN = {
    "data": {"models", "metrics", "engines", "cli"},
    "models": {"data", "metrics", "engines", "cli"},
    "metrics": {"data", "models", "engines", "cli"},
    "engines": {"cli"},
}
ALLOWED = {("models", "m3d_components.data.tokens")}  # (layer, imported module or a name inside it)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.startswith("m3d_components.")}


def test_no_layer_imports_a_layer_above_it():
    violations = []
    for path in PACKAGE.rglob("*.py"):
        layer = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for name in _imports(path):
            target = name.split(".")[1]
            allowed = any(name.startswith(module) for lay, module in ALLOWED if lay == layer)
            if target in FORBIDDEN.get(layer, ()) and not allowed:
                violations.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not violations, violations
