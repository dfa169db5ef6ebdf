"""Shared set-up for the gcvit-nb test suite.

The suite runs once per Keras backend, in separate processes:

    KERAS_BACKEND=tensorflow|jax|torch .venv/bin/python -m pytest -q -p no:cacheprovider tests

Models are run with `predict_on_batch` (jit-compiled on JAX) through :func:`run`; eager calls are kept for
tiny layers and for the training-mode test.
"""
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
for p in (ROOT / "tools", ROOT):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from gcvit_nb.testing import synthetic_state_dict  # noqa: E402

PARITY_FILES = {
    "xxtiny": "parity_xxtiny_224.npz",
    "ls": "parity_ls_160.npz",
    "nonsquare": "parity_nonsquare_192x256.npz",
}

# A small GCViT used by most model tests: every stage has a local and a global block.
TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), mlp_ratio=2.0, num_classes=7,
            drop_path_rate=0.0)


def to_numpy(x):
    "Backend tensor (or list of them) -> NumPy array (or list)."
    import keras
    if isinstance(x, (list, tuple)):
        return [to_numpy(t) for t in x]
    if isinstance(x, dict):
        return {k: to_numpy(v) for k, v in x.items()}
    return np.asarray(keras.ops.convert_to_numpy(x))


def run(model, x):
    "Run `model` on a NumPy batch with `predict_on_batch` (jitted on JAX) and return NumPy array(s)."
    return to_numpy(model.predict_on_batch(np.asarray(x, dtype="float32")))


def state_shapes(model) -> dict:
    "{timm key: shape} of a Keras GCViT."
    import gcvit_nb
    return {k: tuple(v.shape) for k, v in gcvit_nb.timm_state_dict(model).items()}


def randomize(model, seed: int):
    "Load deterministic synthetic weights (layer scales ~0.5, big position biases) so every part matters."
    import gcvit_nb
    gcvit_nb.load_timm_weights(model, synthetic_state_dict(state_shapes(model), seed))
    return model


def weights_numpy(model) -> dict:
    "{variable path: NumPy copy} of every model weight."
    import keras
    return {v.path: np.array(keras.ops.convert_to_numpy(v)) for v in model.weights}


def tiny_model(input_shape=(64, 64, 3), seed=None, **overrides):
    "A TINY-config GCViT, optionally loaded with synthetic weights of `seed`."
    import gcvit_nb
    model = gcvit_nb.GCViT(**{**TINY, **overrides}, input_shape=input_shape)
    return randomize(model, seed) if seed is not None else model


def images(shape, seed=0):
    "A batch of random normalised images, float32 NHWC."
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


# Tests marked `one_backend` check logic that does not depend on the Keras backend (argument parsing and
# fuzzing, file handling, the GPU runner's own bookkeeping). `make test` runs the suite once per backend;
# these run in the first of those runs only, and the others report them as skipped with this reason.
PRIMARY_BACKEND = "torch"      # the quickest of the three to start


def pytest_collection_modifyitems(config, items):
    import keras
    if keras.backend.backend() == PRIMARY_BACKEND:
        return
    skip = pytest.mark.skip(reason=f"backend-independent: runs under KERAS_BACKEND={PRIMARY_BACKEND}")
    for item in items:
        if item.get_closest_marker("one_backend"):
            item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "one_backend: backend-independent; run under one backend only")
    # Keras' TensorFlow backend converts tensors with np.array(x, copy=False) internally: NumPy 2 warns each time
    config.addinivalue_line("filterwarnings",
                            "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


@dataclass
class ParityCase:
    name: str
    config: dict
    shapes: dict
    inputs: np.ndarray
    logits: np.ndarray
    stages: list
    strides: list

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def input_shape(self):
        h, w = self.config["img_size"]
        return (int(h), int(w), 3)

    def state_dict(self, head=True) -> dict:
        sd = synthetic_state_dict(self.shapes, self.seed)
        return sd if head else {k: v for k, v in sd.items() if not k.startswith("head.")}

    def build(self, **overrides):
        import gcvit_nb
        c = self.config
        kwargs = dict(embed_dim=c["embed_dim"], depths=c["depths"], num_heads=c["num_heads"],
                      mlp_ratio=c["mlp_ratio"], layer_scale=c["layer_scale"], window_ratio=c["window_ratio"],
                      num_classes=c["num_classes"], input_shape=self.input_shape, drop_path_rate=0.0)
        return gcvit_nb.GCViT(**{**kwargs, **overrides})


def load_case(name: str) -> ParityCase:
    with np.load(FIXTURES / PARITY_FILES[name], allow_pickle=False) as d:
        return ParityCase(name=name, config=json.loads(str(d["config_json"])),
                          shapes=json.loads(str(d["shapes_json"])), inputs=d["inputs"].astype("float32"),
                          logits=d["logits"], stages=[d[f"stage{i}"] for i in range(4)],
                          strides=[int(s) for s in d["stage_strides"]])


@pytest.fixture(scope="session")
def parity_cases():
    "All parity fixtures, loaded once."
    return {name: load_case(name) for name in PARITY_FILES}


class ParityModels:
    "Builds and loads each fixture's Keras model (classifier or features_only) once per session."
    def __init__(self, cases):
        self.cases, self._cache = cases, {}

    def get(self, name: str, features_only: bool = False):
        key = (name, features_only)
        if key not in self._cache:
            import gcvit_nb
            case = self.cases[name]
            model = case.build(features_only=features_only)
            gcvit_nb.load_timm_weights(model, case.state_dict(head=not features_only))
            self._cache[key] = model
        return self._cache[key]


@pytest.fixture(scope="session")
def parity_models(parity_cases):
    return ParityModels(parity_cases)


@pytest.fixture(scope="session")
def xxtiny_case(parity_cases):
    return parity_cases["xxtiny"]


@pytest.fixture(scope="session")
def xxtiny_model(parity_models):
    "timm gcvit_xxtiny (224×224, 1000 classes) with the fixture's synthetic weights (seed 0)."
    return parity_models.get("xxtiny")


@pytest.fixture(scope="session")
def nonsquare_tiny_model():
    "TINY config with layer scale at 200×288 (windows padded, global tokens resized), synthetic weights seed 7."
    return tiny_model((200, 288, 3), seed=7, layer_scale=1e-5)


@pytest.fixture(scope="session")
def nonsquare_tiny_features(nonsquare_tiny_model):
    "`features_only` twin of `nonsquare_tiny_model` (same weights, no head)."
    import gcvit_nb
    model = gcvit_nb.GCViT(**TINY, layer_scale=1e-5, input_shape=(200, 288, 3), features_only=True)
    state = gcvit_nb.timm_state_dict(nonsquare_tiny_model)
    return gcvit_nb.load_timm_weights(model, {k: v for k, v in state.items() if not k.startswith("head.")})


@pytest.fixture(scope="session")
def tiny160_model():
    "TINY config at 160×160 (windows 5, 5, 10, 5), synthetic weights seed 6."
    return tiny_model((160, 160, 3), seed=6)


@pytest.fixture
def float32_policy():
    "Restore the global dtype policy to float32 whatever the test does."
    import keras
    keras.mixed_precision.set_dtype_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
