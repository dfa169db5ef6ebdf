"""Appendix C1 (gcvit_nb.data): image folders, Fashion-MNIST, tfds offline, the input pipeline."""
import gzip
import struct
import tempfile
import time

import numpy as np
import pytest

from _training import CLASSES, make_image_folder

from gcvit_nb import data as dm


# tf.data pipelines and file readers: the same on every Keras backend
pytestmark = pytest.mark.one_backend

@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


def test_scan_skips_and_reports_bad_files(image_folder, capsys):
    data = dm.load_image_folder(image_folder)
    assert sorted(f for f, _ in data.skipped) == ["circle/truncated.jpg", "square/notes.txt"]
    assert "Skipped 2 unreadable or oversized file(s)" in capsys.readouterr().out
    assert data.class_names == list(CLASSES) and data.n_train + data.n_val == 24
    assert data.n_val == 6                                  # per class: round(20 % of 8) = 2
    for image, label in data.train.map(data.decode):        # every kept file decodes to uint8 RGB
        assert image.shape[-1] == 3 and image.dtype.name == "uint8" and 0 <= int(label) < 3


def test_split_is_fixed_and_per_class():
    labels = np.repeat(np.arange(4), [10, 5, 2, 1])
    a, b = dm._split_per_class(labels, 0.2, seed=0), dm._split_per_class(labels, 0.2, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    train, val = a
    assert sorted(np.concatenate([train, val])) == list(range(len(labels)))
    assert np.bincount(labels[val], minlength=4).tolist() == [2, 1, 1, 0]
    assert dm._balanced_subset(labels, 6).tolist() == [0, 1, 10, 11, 15, 17]


def test_pipeline_shapes_and_padding(image_folder):
    data = dm.load_image_folder(image_folder, verbose=False)
    x, y = next(iter(dm.make_dataset(data, "train", 48, 6, augment=dm.Augment())))
    assert tuple(x.shape) == (6, 48, 48, 3) and tuple(y.shape) == (6, 3)
    assert np.isfinite(np.asarray(x)).all() and abs(float(np.mean(x))) < 3
    batches = list(dm.make_dataset(data, "val", 48, 4).as_numpy_iterator())      # 6 images -> 2 batches of 4
    weights = np.concatenate([w for _, _, w in batches])
    assert len(batches) == 2 and weights.tolist() == [1] * 6 + [0] * 2


def test_read_idx(tmp_path):
    labels = np.arange(7, dtype=np.uint8)
    path = tmp_path / "labels-idx1-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\0\0\x08\x01" + struct.pack(">I", 7) + labels.tobytes())
    assert dm._read_idx(path).tolist() == labels.tolist()
    (tmp_path / "bad").write_bytes(b"\0\0\x08\x01" + struct.pack(">I", 9) + labels.tobytes())
    with pytest.raises(ValueError, match="truncated"):
        dm._read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(b"\0\0\x08\x03\0\0")
    with pytest.raises(ValueError, match="truncated"):
        dm._read_idx(tmp_path / "short")


def test_fashion_mnist_offline():
    # Required, not skipped: the book's offline data (`make data` / `apt-get install dataset-fashion-mnist`).
    assert (dm._fashion_mnist_dir() / "train-images-idx3-ubyte.gz").is_file(), \
        "run: apt-get install dataset-fashion-mnist"
    data = dm.load_data("fashion_mnist", train_limit=50, val_limit=20)
    assert (data.n_train, data.n_val, data.num_classes) == (50, 20, 10)
    assert "dataset-fashion-mnist" in data.description
    image, label = next(iter(data.train.map(data.decode)))
    assert tuple(image.shape) == (28, 28, 3)


def test_tfds_fails_fast_offline(monkeypatch):
    monkeypatch.setattr(dm, "_probe", lambda url, timeout: "cannot resolve host storage.googleapis.com")
    t0 = time.perf_counter()
    with pytest.raises(dm.DatasetUnavailable, match="fashion_mnist") as e:
        dm.load_data("tf_flowers", data_dir=tempfile.mkdtemp())
    assert "image folder" in str(e.value) and time.perf_counter() - t0 < 10
    assert "cannot resolve host" in str(e.value)                  # what happened, not a guess


def test_one_network_probe_and_no_thread(monkeypatch):
    "Issue 23: data.py asks through Chapter 8's probe, in the calling thread."
    import threading
    from gcvit_nb import pretrained
    assert dm._probe is pretrained._probe and not hasattr(dm, "_download_reachable")
    asked = []
    monkeypatch.setattr(dm, "_probe", lambda url, timeout: asked.append((url, timeout)) or "no answer")
    before = threading.active_count()
    assert dm._tfds_host_problem(2.0) == "no answer"
    assert asked == [("https://storage.googleapis.com/", 2.0)] and threading.active_count() == before


def test_tfds_path_with_mock_data(monkeypatch):
    import tensorflow_datasets as tfds
    monkeypatch.setattr(dm, "_probe", lambda url, timeout: None)
    with tfds.testing.mock_data(num_examples=10):
        data = dm.load_data("tf_flowers")
        assert data.class_names[:2] == ["dandelion", "daisy"] and "train[:90%]" in data.description
        x, y = next(iter(dm.make_dataset(data, "train", 48, 4, augment=dm.Augment())))
    assert tuple(x.shape) == (4, 48, 48, 3) and tuple(y.shape) == (4, 5)


def test_bad_limits_and_sizes_are_clear_errors(image_folder):
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="train_limit"):
            dm.load_data(image_folder, train_limit=bad)
    data = dm.load_image_folder(image_folder, verbose=False)
    for size, batch in ((0, 4), (48, 0), (48, -2)):
        with pytest.raises(ValueError, match="must be positive"):
            dm.make_dataset(data, "val", size, batch)
    with pytest.raises(ValueError, match="val_fraction"):
        dm.load_image_folder(image_folder, val_fraction=1.5)


def test_warns_for_one_class_and_for_a_class_without_readable_images(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (tmp_path / "two" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "two" / name / f"{i}.png")
    (tmp_path / "two" / "birds").mkdir()
    (tmp_path / "two" / "birds" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.warns(UserWarning, match="birds hold no readable image"):
        data = dm.load_image_folder(tmp_path / "two", verbose=False)
    assert data.class_names == ["birds", "cats", "dogs"]
    (tmp_path / "one" / "cats").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "one" / "cats" / f"{i}.png")
    with pytest.warns(UserWarning, match="only 1 class"):
        dm.load_image_folder(tmp_path / "one", verbose=False)


def test_tfds_train_limit_is_class_balanced(monkeypatch):
    "Issue 24 #8: train_limit took the first N (per-class counts 11, 6, 12, 14, 7 in one run)."
    import tensorflow_datasets as tfds
    monkeypatch.setattr(dm, "_probe", lambda url, timeout: None)
    with tfds.testing.mock_data(num_examples=200):
        full = dm.load_data("tf_flowers")
        items = [(bytes(x.numpy()), int(y)) for x, y in full.train]
        every = np.array([y for _, y in items])
        data = dm.load_data("tf_flowers", train_limit=25, val_limit=10)
        kept = [(bytes(x.numpy()), int(y)) for x, y in data.train]
    counts = np.bincount([y for _, y in kept], minlength=5)
    assert data.n_train == len(kept) == 25
    assert counts.tolist() == [5, 5, 5, 5, 5], counts              # every class has ≥ 5 of 180
    assert np.bincount(every[:25], minlength=5).tolist() != counts.tolist()   # not the first 25
    firsts = {c: np.flatnonzero(every == c)[:5].tolist() for c in range(5)}
    assert kept == [items[i] for i in sorted(i for c in range(5) for i in firsts[c])]   # in file order
    assert data.n_val == 10


def test_oversized_images_are_skipped_and_named(tmp_path, monkeypatch, capsys):
    "Issue 24 #5: a 100 Mpx file was decoded with only a warning."
    from PIL import Image
    rng = np.random.default_rng(0)
    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(tmp_path / "dogs" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)        # 80² = 6400 px: over; 20² = 400: under
    data = dm.load_image_folder(tmp_path)
    assert [f for f, _ in data.skipped] == ["dogs/huge.png"]
    assert "80x80 pixels" in data.skipped[0][1] or "safety limit" in data.skipped[0][1]
    out = capsys.readouterr().out
    assert "dogs/huge.png" in out and "1,000-pixel safety limit" in out
    assert data.n_train + data.n_val == 8
    with pytest.warns(UserWarning, match="huge.png"):            # verbose=False: a warning, never silent
        dm.load_image_folder(tmp_path, verbose=False)


def test_fashion_mnist_reads_through_the_one_idx_reader(monkeypatch):
    "Issue 23: load_fashion_mnist reads through fashion_mnist_arrays."
    calls = []
    real = dm.fashion_mnist_arrays
    monkeypatch.setattr(dm, "fashion_mnist_arrays", lambda split, root=None: calls.append(split) or real(split, root))
    data = dm.load_fashion_mnist(train_limit=30, val_limit=20)
    assert calls == ["train", "test"]
    labels = np.array([int(y) for _, y in data.train])
    assert np.bincount(labels, minlength=10).tolist() == [3] * 10


@pytest.mark.parametrize("photo", ["chelsea", "coffee", "astronaut", "rocket"])
@pytest.mark.parametrize("size", [224, 56])
def test_eval_transform_agrees_with_preprocess_image(photo, size):
    "Issue 23: one evaluation transform in Pillow and tf.data, within the tolerance Appendix C1 states."
    from skimage import data as photos
    from gcvit_nb.pretrained import IMAGENET_STD, preprocess_image
    image = getattr(photos, photo)()
    pil = preprocess_image(image, size)[0]
    tfd = np.asarray(dm.eval_transform(image, size))
    assert tfd.shape == pil.shape
    levels = np.abs(pil - tfd) * IMAGENET_STD * 255             # in 8-bit levels
    assert np.mean(levels <= 1.0001) >= 0.99 and levels.max() <= 10, (np.mean(levels <= 1.0001), levels.max())


def test_eval_transform_output_has_a_static_shape():
    """Traced for images of any size (as tf.data and a distribution strategy trace it), the crop
    still has a static size: the model's layers are built from it."""
    tf = pytest.importorskip("tensorflow")
    traced = tf.function(lambda im: dm.eval_transform(im, 40),
                         input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    out = traced.get_concrete_function().structured_outputs
    assert out.shape.as_list() == [40, 40, 3]
    image = np.random.default_rng(0).integers(0, 256, (57, 90, 3), dtype=np.uint8)
    assert traced(image).shape == (40, 40, 3)
