"""The public API: the top-level lazy table, each module's `__all__`, and the names README promises."""
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import gcvit_nb

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(m.name for m in pkgutil.iter_modules(gcvit_nb.__path__) if not m.name.startswith("_"))
README_NAMES = ("create_model", "GCViT", "VARIANTS", "load_timm_weights", "preprocess_image",
                "decode_predictions", "Predictor")


@pytest.mark.parametrize("name", sorted(gcvit_nb._PUBLIC))
def test_lazy_name_is_public_in_its_module(name):
    module = importlib.import_module(f"gcvit_nb.{gcvit_nb._PUBLIC[name]}")
    assert name in module.__all__, f"gcvit_nb.{name} points at {module.__name__}, whose __all__ lacks it"
    assert getattr(gcvit_nb, name) is getattr(module, name)


@pytest.mark.parametrize("module_name", MODULES)
def test_all_lists_only_defined_public_names(module_name):
    module = importlib.import_module(f"gcvit_nb.{module_name}")
    names = getattr(module, "__all__", [])
    assert len(names) == len(set(names)), f"{module_name}.__all__ repeats a name"
    for name in names:
        assert not name.startswith("_"), f"{module_name}.__all__ exports the private name {name}"
        assert hasattr(module, name), f"{module_name}.__all__ names {name}, which the module lacks"


def test_every_lazy_module_exists():
    assert set(gcvit_nb._PUBLIC.values()) <= set(MODULES)


def test_readme_names_are_top_level():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in README_NAMES:
        assert name in gcvit_nb._PUBLIC, f"README promises gcvit_nb.{name}"
        assert name in readme


def test_dir_and_unknown_attribute():
    assert set(gcvit_nb._PUBLIC) <= set(dir(gcvit_nb))
    with pytest.raises(AttributeError, match="no attribute"):
        gcvit_nb.no_such_name


def test_the_top_level_is_curated():
    "What users call, not every module's internals: at most about 45 names."
    assert len(gcvit_nb.__all__) <= 45
    for internal in ("atomic_write", "read_state", "worker_main", "official_to_timm"):
        assert internal not in gcvit_nb.__all__


def test_modules_are_not_squeezed():
    """Modules are split by concern, not squeezed to a size: no statements joined by `;`
    and no packed `import a, b` (the generated _modidx.py aside)."""
    import ast
    import io
    import tokenize
    problems = []
    for path in sorted((ROOT / "gcvit_nb").glob("*.py")):
        if path.name == "_modidx.py":
            continue
        source = path.read_text(encoding="utf-8")
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        problems += [f"{path.name}:{t.start[0]}: `;`" for t in tokens
                     if t.type == tokenize.OP and t.string == ";"]
        problems += [f"{path.name}:{node.lineno}: import of several modules"
                     for node in ast.walk(ast.parse(source))
                     if isinstance(node, ast.Import) and len(node.names) > 1]
    assert problems == []


def test_imports_only_go_backwards():
    "A module imports only from modules of notebooks with a smaller number (00a < 00b < 01)."
    order = {}
    for nb in (ROOT / "nbs").glob("[0-9][0-9]*_*.ipynb"):
        m = re.search(r"default_exp\s+(\w+)", nb.read_text(encoding="utf-8"))
        if m:
            order[m.group(1)] = nb.name.split("_")[0]
    for module, number in order.items():
        source = (ROOT / "gcvit_nb" / f"{module}.py").read_text(encoding="utf-8")
        for used in re.findall(r"^\s*from (?:\.|gcvit_nb\.)(\w+) import", source, flags=re.M):
            assert order.get(used, "") < number, f"{module} ({number}) imports {used} ({order.get(used)})"


def _settings() -> dict:
    import configparser
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    return dict(cfg["DEFAULT"])


def test_core_install_is_inference_and_each_backend_is_an_extra():
    "pip install gcvit-nb brings no backend; [jax] brings JAX and no TensorFlow."
    settings = _settings()
    core = settings["requirements"].split()
    names = [re.split(r"[<>=!~ \[]", r)[0] for r in core]
    assert not {"tensorflow", "tensorflow-datasets", "jax", "torch"} & set(names)
    jax_extra = settings["jax_requirements"].split()
    assert any(r.startswith("jax") for r in jax_extra)
    assert not any(r.startswith("tensorflow") for r in jax_extra)
    for extra in ("tensorflow", "train", "torch", "export", "dev"):
        assert settings[f"{extra}_requirements"].split()


def test_keras_floor_has_every_export_format():
    "Keras 3.13 is the first with LiteRT export (ONNX and OpenVINO came in 3.12)."
    from packaging.version import Version
    core = _settings()["requirements"].split()
    floor = next(r.split(">=")[1] for r in core if r.startswith("keras>="))
    assert Version(floor) >= Version("3.13")


def test_the_license_file_ships():
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert 'license_files=["LICENSE"]' in (ROOT / "setup.py").read_text()
    assert _settings()["license"] == "apache2"
