"""Built-in synthetic benchmark ``synth``: procedurally generated 32x32 RGB images, no download.

A class is a fixed composition of three parts drawn from a shared vocabulary of primitive
shapes (stroke, elongated blob, ring, grating patch, checker patch, cross, square outline,
half-ring arc) and a 10-colour palette; each part has its own type, orientation, size, colour,
offset from the object centre and texture period, drawn from a per-class seeded generator.

How a sample is rendered around its class's object is a named, frozen ``RenderSettings``:

* ``BORDER_CLUTTER`` (the benchmark's images): a small (x0.6), nearly centred object with low
  nuisance, behind which ``clutter`` full-colour shapes of the whole vocabulary crowd a narrow band
  along one random side of the image. The frozen pretrained features mix the clutter into every
  token; adaptation can learn to ignore the band, a cue every task shares (as a rendition style is
  shared by all of ImageNet-R's classes), so a linear probe of the frozen features stays far below
  joint fine-tuning (docs/synthetic.md).
* ``CLASSIC`` (the pretext images the shipped backbone was pretrained on, and ``synth``'s images
  before this benchmark was redesigned): a gradient background, two distractor shapes anywhere, a
  shifted, rotated and scaled object with part jitter and dropout, colour jitter and pixel noise.

Target classes (the benchmark) and *pretext* classes (used once to pretrain the tiny ViT
backbone, see ``scripts/pretrain_synth_backbone.py``) come from the same vocabulary but from
disjoint seed namespaces, so low-level structure is shared while class identity lives in the
mid-level composition. Everything is a pure function of fixed seeds: the train/test split never
changes and never depends on the run seed. The digest of the benchmark's settings (``digest``) is
part of every synth run's id. Design facts: ``shared/reference/synthetic.md``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.special import expit

from benchmark.errors import ConfigError
from benchmark.registry import register_dataset
from datasets.base import BenchmarkDataset, ClassIncrementalData, DatasetOptions, TensorImages

IMAGE_SIZE = 32
PARTS_PER_CLASS = 3
GENERATOR_SEED = 20241128
TARGET, PRETEXT = 0, 1  # seed namespaces of the two disjoint class families
TRAIN, TEST = 0, 1

PRIMITIVES = ("stroke", "blob", "ring", "grating", "checker", "cross", "square", "arc")
PALETTE = np.array(
    [
        [0.90, 0.10, 0.10],  # red
        [0.10, 0.70, 0.15],  # green
        [0.15, 0.25, 0.95],  # blue
        [0.95, 0.85, 0.10],  # yellow
        [0.85, 0.15, 0.85],  # magenta
        [0.10, 0.85, 0.85],  # cyan
        [0.98, 0.55, 0.05],  # orange
        [0.98, 0.98, 0.98],  # white
        [0.05, 0.05, 0.05],  # black
        [0.55, 0.30, 0.10],  # brown
    ],
    dtype=np.float32,
)
# The pretext classes (and their distractors) use only part of the vocabulary: the first 5
# primitive types and the first 6 colours. Crosses, checker patches, arcs, orange, white, black and
# brown appear only in the benchmark's classes, so the frozen features are incomplete for them
# and adaptation has something to learn (as renditions do for an ImageNet-pretrained ViT).
VOCABULARY = {TARGET: (len(PRIMITIVES), len(PALETTE)), PRETEXT: (5, 6)}
_SOFT = 0.5  # edge softness of the masks, in pixels

@dataclass(frozen=True)
class RenderSettings:
    """How a sample is drawn around its class's object (all lengths in pixels, angles in radians)."""

    distractors: int  # full-contrast shapes of the namespace's vocabulary, anywhere
    clutter: int  # full-contrast shapes of the whole vocabulary, in a band along one random side
    clutter_band: tuple[float, float]  # clutter centres' distance from that side: U(lo, hi)
    object_scale: float  # multiplies part sizes, offsets and texture periods
    shift: float  # object centre: U(-shift, shift) per axis
    rotation: float  # sigma of the object's rotation
    part_jitter: float  # sigma of each part's position jitter
    part_angle_jitter: float  # sigma of each part's angle jitter
    colour_jitter: float  # sigma of each part's colour jitter
    part_dropout: float  # probability that a part is not drawn
    noise: float  # sigma of the pixel noise

    def digest(self) -> str:
        """Short digest of the settings: what identifies the images they render."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


CLASSIC = RenderSettings(distractors=2, clutter=0, clutter_band=(0.0, 0.0), object_scale=1.0, shift=4.0,
                         rotation=0.25, part_jitter=1.0, part_angle_jitter=0.12, colour_jitter=0.08,
                         part_dropout=0.1, noise=0.06)
BORDER_CLUTTER = RenderSettings(distractors=0, clutter=14, clutter_band=(0.5, 7.0), object_scale=0.6, shift=2.0,
                                rotation=0.15, part_jitter=0.5, part_angle_jitter=0.12, colour_jitter=0.04,
                                part_dropout=0.0, noise=0.02)
BENCHMARK_RENDER_NAME = "border-clutter"  # the benchmark's images; the pretext keeps CLASSIC
BENCHMARK_RENDER = BORDER_CLUTTER

_CHUNK = 4096  # images rendered per vectorised batch (bounds memory)


def class_parts(class_id: int, namespace: int = TARGET) -> dict[str, np.ndarray]:
    """The fixed composition of one class: arrays of length ``PARTS_PER_CLASS`` per attribute."""
    rng = np.random.default_rng([GENERATOR_SEED, namespace, class_id])
    n = PARTS_PER_CLASS
    n_types, n_colours = VOCABULARY[namespace]
    return {
        "type": rng.integers(0, n_types, n),
        "angle": rng.uniform(0.0, np.pi, n),
        "size": rng.uniform(3.0, 6.5, n),
        "colour": rng.choice(n_colours, n, replace=False),
        "offset": rng.uniform(-7.5, 7.5, (n, 2)),
        "period": rng.uniform(2.5, 5.0, n),
    }


def _masks(kind: int, u: np.ndarray, v: np.ndarray, size: np.ndarray, period: np.ndarray) -> np.ndarray:
    """Soft [0,1] masks of one primitive type; u, v are local coordinates (M, H, W)."""
    r = size[:, None, None]
    p = period[:, None, None]
    radius = np.sqrt(u * u + v * v)

    def stroke(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return expit((r - np.abs(a)) / _SOFT) * expit((1.0 - np.abs(b)) / _SOFT)

    name = PRIMITIVES[kind]
    if name == "stroke":
        return stroke(u, v)
    if name == "blob":
        return np.exp(-(u * u) / (r * r) - (v * v) / (0.2 * r * r))
    if name == "ring":
        return np.exp(-((radius - r) ** 2) / (2 * 0.8**2))
    if name == "grating":
        return expit((r - radius) / _SOFT) * (0.5 + 0.5 * np.cos(2 * np.pi * u / p))
    if name == "checker":
        box = expit((r - np.abs(u)) / _SOFT) * expit((r - np.abs(v)) / _SOFT)
        return box * (0.5 + 0.5 * np.tanh(4.0 * np.sin(np.pi * u / p) * np.sin(np.pi * v / p)))
    if name == "cross":
        return np.maximum(stroke(u, v), stroke(v, u))
    if name == "square":
        return np.exp(-((np.maximum(np.abs(u), np.abs(v)) - r) ** 2) / (2 * 0.7**2))
    if name == "arc":
        return np.exp(-((radius - r) ** 2) / (2 * 0.8**2)) * expit(v / _SOFT)
    raise ValueError(f"unknown primitive {kind}")


def _paint(canvas: np.ndarray, kinds: np.ndarray, centre: np.ndarray, angle: np.ndarray,
           size: np.ndarray, period: np.ndarray, colour: np.ndarray, visible: np.ndarray) -> None:
    """Alpha-composite one primitive per image onto ``canvas`` (N, H, W, 3), in place."""
    coords = np.arange(IMAGE_SIZE, dtype=np.float32)
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    for kind in np.unique(kinds):
        idx = np.nonzero((kinds == kind) & visible)[0]
        if idx.size == 0:
            continue
        dx = xs[None] - centre[idx, 0, None, None]
        dy = ys[None] - centre[idx, 1, None, None]
        cos, sin = np.cos(angle[idx])[:, None, None], np.sin(angle[idx])[:, None, None]
        u, v = cos * dx + sin * dy, -sin * dx + cos * dy
        alpha = _masks(int(kind), u, v, size[idx], period[idx])[..., None].astype(np.float32)
        canvas[idx] = canvas[idx] * (1 - alpha) + alpha * colour[idx, None, None, :]


def _render_chunk(labels: np.ndarray, namespace: int, rng: np.random.Generator,
                  settings: RenderSettings) -> np.ndarray:
    """Render one image per label; returns uint8 (N, 3, H, W)."""
    n = len(labels)
    comps = [class_parts(int(c), namespace) for c in range(int(labels.max()) + 1)]
    table = {k: np.stack([comp[k] for comp in comps]) for k in comps[0]}

    # background: a linear gradient between two random colours
    c1, c2 = rng.uniform(0, 1, (n, 3)), rng.uniform(0, 1, (n, 3))
    direction = rng.uniform(0, 2 * np.pi, n)
    grid = (np.arange(IMAGE_SIZE) - (IMAGE_SIZE - 1) / 2) / IMAGE_SIZE
    ramp = (np.cos(direction)[:, None, None] * grid[None, None, :]
            + np.sin(direction)[:, None, None] * grid[None, :, None]) + 0.5
    canvas = (c1[:, None, None] + (c2 - c1)[:, None, None] * ramp[..., None]).astype(np.float32)

    # distractors: random primitives of the namespace's vocabulary at random places, full contrast
    n_types, n_colours = VOCABULARY[namespace]
    for _ in range(settings.distractors):
        _paint(canvas, rng.integers(0, n_types, n), rng.uniform(2, IMAGE_SIZE - 2, (n, 2)),
               rng.uniform(0, np.pi, n), rng.uniform(2.0, 4.5, n), rng.uniform(2.5, 5.0, n),
               PALETTE[rng.integers(0, n_colours, n)], np.ones(n, dtype=bool))
    if settings.clutter:
        _paint_clutter(canvas, rng, settings)

    # the object: the class's parts under a global similarity transform plus per-part jitter
    shift = rng.uniform(-settings.shift, settings.shift, (n, 2))
    rot = rng.normal(0, settings.rotation, n)
    scale = rng.uniform(0.85, 1.15, n) * settings.object_scale
    cos, sin = np.cos(rot), np.sin(rot)
    centre0 = (IMAGE_SIZE - 1) / 2 + shift
    for part in range(PARTS_PER_CLASS):
        off = table["offset"][labels, part]
        rotated = np.stack([cos * off[:, 0] - sin * off[:, 1], sin * off[:, 0] + cos * off[:, 1]], 1)
        centre = centre0 + scale[:, None] * rotated + rng.normal(0, settings.part_jitter, (n, 2))
        colour = np.clip(PALETTE[table["colour"][labels, part]] + rng.normal(0, settings.colour_jitter, (n, 3)),
                         0, 1)
        _paint(canvas, table["type"][labels, part], centre,
               table["angle"][labels, part] + rot + rng.normal(0, settings.part_angle_jitter, n),
               table["size"][labels, part] * scale, table["period"][labels, part] * scale,
               colour.astype(np.float32), rng.uniform(0, 1, n) >= settings.part_dropout)

    canvas += rng.normal(0, settings.noise, canvas.shape).astype(np.float32)
    return (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(0, 3, 1, 2)


def _paint_clutter(canvas: np.ndarray, rng: np.random.Generator, settings: RenderSettings) -> None:
    """``settings.clutter`` shapes of the whole vocabulary (every type, every colour, full contrast)
    with centres in a band along one random side of each image, painted before the object."""
    n = len(canvas)
    side = rng.integers(0, 4, n)  # 0 top, 1 bottom, 2 left, 3 right
    lo, hi = settings.clutter_band
    for _ in range(settings.clutter):
        depth = rng.uniform(lo, hi, n)  # distance from the side
        along = rng.uniform(0, IMAGE_SIZE, n)
        far = IMAGE_SIZE - 1 - depth
        x = np.select([side == 0, side == 1, side == 2], [along, along, depth], far)
        y = np.select([side == 0, side == 1, side == 2], [depth, far, along], along)
        _paint(canvas, rng.integers(0, len(PRIMITIVES), n), np.stack([x, y], 1), rng.uniform(0, np.pi, n),
               rng.uniform(2.0, 4.5, n), rng.uniform(2.5, 5.0, n), PALETTE[rng.integers(0, len(PALETTE), n)],
               np.ones(n, dtype=bool))


def generate(num_classes: int, per_class: int, split: int, namespace: int = TARGET, stream: int = 0,
             settings: RenderSettings = CLASSIC) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of ``per_class`` samples per class.

    Deterministic in (namespace, split, stream, settings): the same call always returns the same
    arrays. ``stream`` selects further independent draws (the pretraining script uses one per
    epoch). The default settings are the pretext's (``CLASSIC``); the benchmark passes its own.
    """
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    order = np.random.default_rng([GENERATOR_SEED, namespace, split, stream, 0]).permutation(len(labels))
    labels = labels[order]
    chunks = []
    for i, start in enumerate(range(0, len(labels), _CHUNK)):
        rng = np.random.default_rng([GENERATOR_SEED, namespace, split, stream, i + 1])
        chunks.append(_render_chunk(labels[start:start + _CHUNK], namespace, rng, settings))
    return np.concatenate(chunks), labels


@dataclass
class SynthOptions(DatasetOptions):
    """Sizes of the fixed split (per class); the images themselves never change."""

    train_per_class: int = 50
    test_per_class: int = 20

    def __post_init__(self) -> None:
        for key in ("train_per_class", "test_per_class"):
            if getattr(self, key) < 1:
                raise ConfigError(f"data.{key} must be at least 1, got {getattr(self, key)}")


@functools.lru_cache(maxsize=4)
def _cached_split(num_classes: int, train_per_class: int, test_per_class: int):
    x_train, y_train = generate(num_classes, train_per_class, TRAIN, settings=BENCHMARK_RENDER)
    x_test, y_test = generate(num_classes, test_per_class, TEST, settings=BENCHMARK_RENDER)
    return x_train, y_train, x_test, y_test


@register_dataset("synth")
class SynthBenchmark(BenchmarkDataset):
    """100 procedurally generated classes, 10 tasks by default, read by the shipped tiny ViT."""

    num_classes = 100
    default_n_tasks = 10
    default_backbone = "tiny"
    fixed_image_size = IMAGE_SIZE
    Options = SynthOptions

    @classmethod
    def identity(cls) -> str:
        """``BENCHMARK_RENDER``'s digest with the generator seed and image size."""
        return f"{BENCHMARK_RENDER.digest()}-{GENERATOR_SEED}-{IMAGE_SIZE}"

    @classmethod
    def load(cls, options: SynthOptions, data_root: str | None) -> ClassIncrementalData:
        x_train, y_train, x_test, y_test = _cached_split(cls.num_classes, options.train_per_class,
                                                         options.test_per_class)
        return ClassIncrementalData(
            num_classes=cls.num_classes,
            train=TensorImages(torch.from_numpy(x_train), torch.from_numpy(y_train)),
            test=TensorImages(torch.from_numpy(x_test), torch.from_numpy(y_test)),
            train_targets=y_train, test_targets=y_test,
            info={"generator_seed": GENERATOR_SEED, "image_size": IMAGE_SIZE, "render": BENCHMARK_RENDER_NAME,
                  "render_settings": asdict(BENCHMARK_RENDER), "identity": cls.identity()},
        )
