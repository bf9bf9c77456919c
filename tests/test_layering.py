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


def test_packages_load_their_submodules_on_first_use():
    """``import m3d_components.engines as me`` loads no engine until a config reaches ``me.<name>``, so the
    benchmark runs where MLflow, nibabel, pydicom, jsonschema, fire and sacrebleu are missing (the GPU machines'
    image has PyTorch and transformers; MONAI and Ignite travel as wheels)."""
    import subprocess
    import sys

    missing = ("mlflow", "nibabel", "pydicom", "jsonschema", "fire", "sacrebleu", "pandas")
    code = "\n".join([
        "import sys",
        *(f"sys.modules[{name!r}] = None" for name in missing),
        "import m3d_components.engines as me",
        "assert 'm3d_components.engines.tracking' not in sys.modules",
        "assert me.speed.run_benchmark and 'm3d_components.engines.speed' in sys.modules",
        "assert 'speed' in dir(me)",
        "try:\n    me.nothing_here\nexcept AttributeError as e:\n    assert 'nothing_here' in str(e)",
    ])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
