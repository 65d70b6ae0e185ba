"""Generated images in CIFAR-10's python format, for runs where the real archive is not on disk.

Writes ``OUT/cifar-10-batches-py/`` as the real ``cifar-10-python.tar.gz`` unpacks:
``data_batch_1`` .. ``data_batch_5`` (10,000 images each), ``test_batch`` (10,000) and
``batches.meta``, each a dict pickled with protocol 2 as the original (Python 2 cPickle)
files are: ``b"data"`` uint8 (10000, 3072), each row a 32x32 image's red, green and blue
planes in row-major order; ``b"labels"`` a list of ints in 0..9; ``b"batch_label"`` and
``b"filenames"`` bytes (Python 2 str in the file). A ``GENERATED.txt`` beside them says
what they are. These are not CIFAR-10's photographs: their md5s are not the published
ones, so a run reads them with ``data.verify: false`` (and ``data.download: false``, so a
missing file is an error rather than a download).

The images: each class has a template of its own, a low-frequency colour field (a few 2-D
cosines per channel, frequencies 1-3 cycles across the image) plus an oriented grating at
a class-specific angle. Each image is its class's template, shifted by up to 4 pixels
(which moves the cosines' phases), mirrored half the time, with random contrast and
brightness, blended with a second class's template (weight 0.2-0.5, so no single
colour or pattern gives the class away), 1-3 rectangles of random colour (distractors)
and pixel noise. Classes are learnable from spatial structure, not from a mean colour: with
seed 0, the nearest class mean scores 38% on the test batch and a logistic regression on
10,000 training images 62% (CIFAR-10 itself: about 28% and 40%).

    python bench/make_cifar10_format.py [--out /tmp/cifar10_generated] [--seed 0]
"""

from __future__ import annotations

import argparse
import pickle
import struct
from pathlib import Path

import numpy as np

FOLDER = "cifar-10-batches-py"
SIDE, CHANNELS, CLASSES = 32, 3, 10
BATCH = 10_000
TRAIN_BATCHES = 5
CHUNK = 2_000  # images drawn at once: (CHUNK, 3, 32, 32) float32 is 25 MB
MAX_SHIFT = 4


class Python2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2's cPickle wrote the original batches: bytes as Python 2 str
    (SHORT_BINSTRING / BINSTRING, one byte a byte), where Python 3's protocol 2 would
    write ``_codecs.encode(text, "latin-1")`` (UTF-8 text, half as large again)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj: bytes) -> None:
        size = len(obj)
        if size < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([size]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", size) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def dump(obj: dict, path: Path) -> None:
    with open(path, "wb") as file:
        Python2Pickler(file, protocol=2).dump(obj)


def class_templates(rng: np.random.Generator) -> np.ndarray:
    """(CLASSES, 3, 32, 32) float32 templates, each roughly in [-1, 1]."""
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) / SIDE
    templates = np.zeros((CLASSES, CHANNELS, SIDE, SIDE), np.float32)
    for k in range(CLASSES):
        for c in range(CHANNELS):
            for _ in range(3):
                fy, fx = rng.integers(-3, 4, size=2)
                phase, amplitude = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.0)
                templates[k, c] += amplitude * np.cos(2 * np.pi * (fx * x + fy * y) + phase)
        angle, frequency = np.pi * k / CLASSES, rng.uniform(3.0, 5.0)
        grating = np.cos(2 * np.pi * frequency * (np.cos(angle) * x + np.sin(angle) * y))
        templates[k] += 0.6 * grating * rng.uniform(-1, 1, size=(CHANNELS, 1, 1))
    return templates / np.abs(templates).max(axis=(1, 2, 3), keepdims=True)


def draw_images(templates: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, 3072) uint8 images of classes ``labels`` (n,)."""
    n = len(labels)
    shifts = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=(n, 2))
    flips = rng.random(n) < 0.5
    others = (labels + rng.integers(1, CLASSES, size=n)) % CLASSES
    mix = rng.uniform(0.2, 0.5, size=(n, 1, 1, 1)).astype(np.float32)
    images = np.empty((n, CHANNELS, SIDE, SIDE), np.float32)
    for i in range(n):
        own = np.roll(templates[labels[i]], tuple(shifts[i]), axis=(1, 2))
        images[i] = own[:, :, ::-1] if flips[i] else own
    images = (1 - mix) * images + mix * templates[others]
    contrast = rng.uniform(0.5, 1.0, size=(n, 1, 1, 1)).astype(np.float32)
    brightness = rng.uniform(-0.3, 0.3, size=(n, CHANNELS, 1, 1)).astype(np.float32)
    images = contrast * images + brightness
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            top, left = rng.integers(0, SIDE - 4, size=2)
            height, width = rng.integers(4, 13, size=2)
            images[i, :, top : top + height, left : left + width] = rng.uniform(-1, 1, size=(CHANNELS, 1, 1))
    images += rng.normal(0.0, 0.25, size=images.shape).astype(np.float32)
    pixels = np.clip(np.rint(127.5 + 127.5 * images), 0, 255).astype(np.uint8)
    return pixels.reshape(n, CHANNELS * SIDE * SIDE)


def make_batch(templates: np.ndarray, rng: np.random.Generator, name: str) -> dict:
    """One batch file's dict: BATCH images, every class BATCH / CLASSES times, shuffled."""
    labels = rng.permutation(np.repeat(np.arange(CLASSES), BATCH // CLASSES))
    chunks = [draw_images(templates, labels[s : s + CHUNK], rng) for s in range(0, BATCH, CHUNK)]
    data = np.concatenate(chunks)
    return {
        b"batch_label": name.encode(),
        b"labels": [int(label) for label in labels],
        b"data": data,
        b"filenames": [f"generated_{name.replace(' ', '_')}_{i:05d}.png".encode() for i in range(BATCH)],
    }


def write(out: Path, seed: int) -> Path:
    """Write the batches under ``out``/cifar-10-batches-py/ and return that folder."""
    folder = out / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    template_seed, *batch_seeds = np.random.SeedSequence(seed).spawn(TRAIN_BATCHES + 2)
    templates = class_templates(np.random.default_rng(template_seed))
    names = [f"data_batch_{b + 1}" for b in range(TRAIN_BATCHES)] + ["test_batch"]
    labels = [f"training batch {b + 1} of {TRAIN_BATCHES}" for b in range(TRAIN_BATCHES)]
    labels.append("testing batch 1 of 1")
    for name, label, batch_seed in zip(names, labels, batch_seeds, strict=True):
        batch = make_batch(templates, np.random.default_rng(batch_seed), label)
        dump(batch, folder / name)
    meta = {
        b"num_cases_per_batch": BATCH,
        b"label_names": [f"generated_class_{k}".encode() for k in range(CLASSES)],
        b"num_vis": CHANNELS * SIDE * SIDE,
    }
    dump(meta, folder / "batches.meta")
    (folder / "GENERATED.txt").write_text(
        f"Generated by bench/make_cifar10_format.py --seed {seed}: CIFAR-10's file format, not its images.\n"
        "Their md5s are not the published ones: read them with data.verify: false.\n"
    )
    return folder


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/cifar10_generated"), help="data.root to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote {write(args.out, args.seed)}")


if __name__ == "__main__":
    main()
