"""Prepare TensorFlow Datasets offline, as a stand-in for tfds' downloads.

    python tools/tfds_standin.py DATA_DIR [--flowers-per-class 8] [--fashion-mnist]

Runs tfds' own builders (`tf_flowers`, and `fashion_mnist` when Debian's copy is installed),
but hands them local archives instead of downloading: tfds then writes DATA_DIR exactly as a
connected machine would, and `tfds.load(name, data_dir=DATA_DIR)` (or `TFDS_DATA_DIR=DATA_DIR`)
reads it through the package's real code path.

- `tf_flowers`: a `flower_photos.tgz` made here, with the five class folders of the real
  archive; each class holds crops of one real photo that scikit-image ships (the real
  3,670 flower photos cannot be downloaded here). The classes are learnable, not flowers.
- `fashion_mnist`: Debian's `dataset-fashion-mnist` files, which are the original archives.
"""
import argparse
import gzip
import io
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

FLOWER_CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def flower_photos_tgz(path: Path, per_class: int, seed: int = 0) -> Path:
    "A tgz laid out like tf_flowers' archive: flower_photos/<class>/<n>.jpg."
    from PIL import Image
    from skimage import data
    sources = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket(),
               data.immunohistochemistry()]
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as tar:
        for name, photo in zip(FLOWER_CLASSES, sources):
            h, w = photo.shape[:2]
            for i in range(per_class):
                side = int(min(h, w) * rng.uniform(0.6, 0.9))
                top = int(rng.integers(0, h - side + 1))
                left = int(rng.integers(0, w - side + 1))
                crop = Image.fromarray(photo[top:top + side, left:left + side])
                buf = io.BytesIO()
                crop.resize((160, 160), Image.BICUBIC).save(buf, "JPEG", quality=90)
                info = tarfile.TarInfo(f"flower_photos/{name}/{i:03d}.jpg")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)
    return path


def _local_files(files: dict, scratch: Path, extract: bool):
    """A DownloadManager.download (or download_and_extract, which gunzips) that hands
    out local files by URL or file name, and refuses any other URL."""
    def resolve(url):
        key = str(url)
        for known, local in files.items():
            if key == known or key.endswith("/" + known):
                gunzip = local.name.endswith(".gz") and not local.name.endswith(".tar.gz")
                if extract and gunzip:
                    out = scratch / local.name[:-3]
                    out.write_bytes(gzip.decompress(local.read_bytes()))
                    return out
                return local
        raise RuntimeError(f"the tfds stand-in has no local copy of {key}")

    def download(self, url_or_urls):
        if isinstance(url_or_urls, dict):
            return {k: resolve(v) for k, v in url_or_urls.items()}
        if isinstance(url_or_urls, (list, tuple)):
            return type(url_or_urls)(resolve(v) for v in url_or_urls)
        return resolve(url_or_urls)
    return download


def prepare(name: str, data_dir: Path, files: dict) -> str:
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
    builder = tfds.builder(name, data_dir=str(data_dir))
    if builder.is_prepared():
        return f"{name}: already prepared in {builder.data_dir}"
    manager = tfds.download.DownloadManager
    originals = manager.download, manager.download_and_extract
    local = {k: Path(v) for k, v in files.items()}
    with tempfile.TemporaryDirectory() as scratch:
        manager.download = _local_files(local, Path(scratch), extract=False)
        manager.download_and_extract = _local_files(local, Path(scratch), extract=True)
        try:
            builder.download_and_prepare()
        finally:
            manager.download, manager.download_and_extract = originals
    sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
    return f"{name}: prepared in {builder.data_dir} {sizes}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--flowers-per-class", type=int, default=8)
    parser.add_argument("--fashion-mnist", action="store_true",
                        help="also prepare fashion_mnist from Debian's copy")
    args = parser.parse_args(argv)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    tgz = flower_photos_tgz(args.data_dir / "flower_photos.tgz", args.flowers_per_class)
    print(prepare("tf_flowers", args.data_dir, {"flower_photos.tgz": tgz}))
    tgz.unlink()
    if args.fashion_mnist:
        names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
        missing = [n for n in names if not (FASHION_MNIST_DIR / n).is_file()]
        if missing:
            print(f"fashion_mnist needs Debian's copy in {FASHION_MNIST_DIR} "
                  "(apt-get install dataset-fashion-mnist)", file=sys.stderr)
            return 1
        print(prepare("fashion_mnist", args.data_dir,
                      {n: FASHION_MNIST_DIR / n for n in names}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
