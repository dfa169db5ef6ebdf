"""Write gcvit_nb/resources/imagenet1k_labels.tsv: the 1000 ImageNet-1k classes in model-output order.

Source: timm's bundled WordNet lists (timm/data/_info/imagenet_synsets.txt gives the class order,
imagenet_synset_to_lemma.txt the names). Each row: index, synset id, short name (first lemma, spaces as
underscores, the style of Keras' decode_predictions) and all lemmas. Run with the reference environment:
    .venv-ref/bin/python tools/make_imagenet_labels.py
"""
from pathlib import Path

import importlib.util

# Read timm's data files without importing timm (its import needs a working torchvision).
info = Path(importlib.util.find_spec("timm").submodule_search_locations[0]) / "data" / "_info"
synsets = (info / "imagenet_synsets.txt").read_text().split()
lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines() if "\t" in line)
assert len(synsets) == 1000
out = Path(__file__).resolve().parents[1] / "gcvit_nb" / "resources" / "imagenet1k_labels.tsv"
with out.open("w") as f:
    f.write("index\tsynset\tname\tlemmas\n")
    for i, s in enumerate(synsets):
        full = lemmas[s].strip()
        f.write(f"{i}\t{s}\t{full.split(',')[0].strip().replace(' ', '_')}\t{full}\n")
print(f"wrote {out} ({len(synsets)} classes)")
