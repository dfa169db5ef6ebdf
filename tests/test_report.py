"""Appendix C3 (gcvit_nb.report): evaluation without the padding rows, and the figures."""
import numpy as np

import _training  # noqa: F401  (backend set-up shared by the training tests)

import keras
import tensorflow as tf

from gcvit_nb import report


def _always_class_0():
    bias = keras.initializers.Constant([1.0, 0.0, 0.0])
    return keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(),
                             keras.layers.Dense(3, kernel_initializer="zeros", bias_initializer=bias)])


def test_evaluate_ignores_padding_rows():
    x = np.zeros((6, 4, 4, 3), "float32")
    y = np.eye(3, dtype="float32")[[0, 0, 1, 2, 0, 0]]
    w = np.array([1, 1, 1, 1, 1, 0], "float32")             # the last row is padding
    r = report.evaluate(_always_class_0(), tf.data.Dataset.from_tensor_slices((x, y, w)).batch(2),
                        ["a", "b", "c"], n_images=8)
    assert r["n"] == 5 and abs(r["accuracy"] - 0.6) < 1e-12
    assert r["confusion_matrix"] == [[3, 0, 0], [1, 0, 0], [1, 0, 0]]
    assert [c["support"] for c in r["per_class"]] == [3, 1, 1]
    assert abs(r["per_class"][0]["precision"] - 0.6) < 1e-12 and r["per_class"][0]["recall"] == 1.0
    assert len(r["examples"]["images"]) == 5                  # the padding row is not shown either


def test_figures_are_written_atomically(tmp_path):
    history = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "accuracy": [0.4, 0.8], "val_accuracy": [0.5, 0.75]}
    examples = dict(images=np.random.default_rng(0).random((3, 8, 8, 3)), y_true=np.array([0, 1, 2]),
                    y_pred=np.array([0, 2, 2]), prob=np.array([0.9, 0.5, 0.7]))
    rep = dict(confusion_matrix=[[1, 0, 0], [0, 0, 1], [0, 0, 1]], class_names=["a", "b", "c"], examples=examples)
    written = report.save_figures(tmp_path, history, rep, resumed_at=[1])
    assert sorted(p.name for p in written) == ["confusion_matrix.png", "curves.png", "predictions.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)   # no temporaries
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    fig = report.plot_confusion(rep["confusion_matrix"], rep["class_names"])
    assert fig.get_size_inches()[0] <= 10
