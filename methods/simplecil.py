"""``simplecil``: class-mean prototypes of the frozen backbone under a cosine classifier, no training.

Zhou, Cai, Ye, Zhan, Liu, "Revisiting Class-Incremental Learning with Pre-Trained Models:
Generalizability and Adaptivity are All You Need", IJCV 2024 (arXiv 2303.07338).
Specification: ``shared/reference/simplecil.md`` section 1; official code zhoudw-zdw/RevisitingCIL
(a2e6b71; now LAMDA-CL/RevisitingCIL) models/simplecil.py, same algorithm in LAMDA-CL/LAMDA-PILOT.

For each task t, ``end_task`` sets row c of the head, for every class c of the task, to the mean
of the frozen features (CLS token after the final LayerNorm) of **all** of c's training images
under the **test** transform (``hook_transform = "test"``). A row is written once and never
revisited. Inference: logits_c = sigma * cos(f(x), w_c) with sigma = 1, argmax over all seen
classes, no task id. Nothing is trained: ``trainable_parameters`` is empty, so the protocol builds
no optimiser and takes no step. The APER / ADAM adapted variant (specification section 2) is not
implemented.

Paper vs code (this follows the code):
* the paper says the classifier is set to prototype features of the training instances; the code
  computes them under the test transform (its loader is built with ``mode="test"``); the training
  transform is built and never used.

Reference settings and how this harness runs them (ours = a harness choice, not the reference's):
* backbone: the code's ``pretrained_vit_b16_224_in21k`` is, under its timm 0.6.12, the AugReg
  ImageNet-21k ViT-B/16, pinned here as ``vit_base_patch16_224.augreg_in21k`` (the published
  IN-21k numbers). PILOT and the SEMA tables use an ImageNet-1k backbone instead: pass
  ``--backbone vit_base_patch16_224.augreg_in21k_ft_in1k`` (which 1k weights timm 0.6.12 gave is
  unverified); a bare ``vit_base_patch16_224`` under timm >= 0.9 is ``augreg2_in21k_ft_in1k``, not
  what either code loaded.
* test transform: the code uses Resize(256, bicubic) -> CenterCrop(224), [0, 1] pixels, for every
  data set. This harness has one test transform per benchmark for all methods: CIFAR-100
  Resize(224) (as the RanPAC and CODA codes), the others Resize(256) -> CenterCrop(224), bilinear;
  [0, 1] pixels as the code. On CIFAR, Resize(224) appears worth about +2 points A_T (reference
  section 4; attribution unverified).
* the statistics pass: the code's module-level batch size 128 (its configs' ``batch_size`` 48 is
  never read by SimpleCIL); the recipe fields (epochs, lr, optimizer, schedule, ...) are accepted
  and ignored, since no optimiser is built (values other than the defaults only change the run id).
* splits and class order: the code runs B0 Inc5 / Inc10 with a seed-1993 NumPy permutation; this
  harness uses its protocol's splits and orders. A_T does not depend on either, only A_bar does.
* ours: the code averages float32 features in the order of a shuffled loader; here each class's
  float32 features are summed exactly (``math.fsum``, correctly rounded to float64) and divided by
  the count, so a prototype is a function of the class's images alone, whatever their order (it
  differs from the code's float32 mean by about 1e-7 relative).
* ours: the backbone always sees batches of exactly ``batch_size`` images (the last one
  zero-padded), in the statistics pass and at inference, so an image's features do not depend on
  which batch it arrives in: kernels are chosen by shape (ViT-B/16 on CPU changes its last bits
  with the batch size), while at a fixed shape a row's result was seen not to depend on its
  position or its companions (CPU; unchecked on GPU). With the above, predictions, hence A_T, are
  the same for every task count and class order (tested).
* ours: ``predict`` returns the float64 logits minus each row's maximum (argmax unchanged), so the
  protocol's float32 cast cannot turn two distinct cosines into a tie broken by class position.
* sigma is a fixed buffer (1), as the code's CosineLinear sigma that no optimiser ever updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F

from benchmark.registry import register_method
from methods.base import Method, MethodConfig


@dataclass
class SimpleCILConfig(MethodConfig):
    """Only ``batch_size`` matters: the batch of every backbone call. No optimiser is built, so
    the remaining recipe fields are ignored."""

    epochs: int = 1
    batch_size: int = 128


# The official code's statistics batch (models/simplecil.py module constant) on every data set;
# nothing else to set (synth included: there is no recipe for the lead to re-choose).
SIMPLECIL_DEFAULTS = {dataset: dict(batch_size=128)
                      for dataset in ("synth", "cifar100", "imagenet-r", "imagenet-a", "domainnet")}


def exact_class_mean(features: torch.Tensor) -> torch.Tensor:
    """Mean of the rows of ``features`` (n, D) in float64: the exact sum of each column
    (``math.fsum``, correctly rounded), divided by n, so the result ignores the rows' order."""
    if len(features) == 0:
        raise ValueError("a class has no training images: its prototype is undefined")
    columns = features.detach().cpu().double().T.tolist()
    return torch.tensor([math.fsum(column) for column in columns], dtype=torch.float64) / len(features)


@register_method("simplecil")
class SimpleCIL(Method):
    """Frozen features, class-mean prototypes (test transform), cosine classifier; no training."""

    Config = SimpleCILConfig
    DATASET_DEFAULTS = SIMPLECIL_DEFAULTS
    SEARCH_SPACE = {}  # nothing is trained: nothing to choose
    pretrained_tag = "augreg_in21k"  # RevisitingCIL's pretrained_vit_b16_224_in21k (timm 0.6.12)
    hook_transform = "test"

    def __init__(self, backbone, task_sizes, cfg: SimpleCILConfig):
        super().__init__(backbone, task_sizes, cfg)
        # row c: prototype of class c, written once at the end of its task (0 until then)
        self.register_buffer("prototypes", torch.zeros(sum(self.task_sizes), self.feature_dim, dtype=torch.float64))
        self.register_buffer("sigma", torch.ones((), dtype=torch.float64))

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 features of ``x``, from backbone calls of exactly ``batch_size`` images each, in
        one memory layout (contiguous): a channels-last batch (synth's images are) and a padded,
        contiguous one take different convolution kernels in the patch embedding, whose results
        differ in the last bits on some CPUs."""
        size = self.cfg.batch_size
        out = []
        for chunk in x.split(size):
            n = len(chunk)
            if n < size:
                chunk = torch.cat([chunk, chunk.new_zeros((size - n, *chunk.shape[1:]))])
            out.append(self.features(chunk.contiguous())[:n].float())
        return torch.cat(out)

    def trainable_parameters(self, task: int) -> list[dict]:
        return []

    def end_task(self, task: int, train_loader: Iterable) -> None:
        features, labels = [], []
        for x, y in train_loader:
            features.append(self.image_features(x.to(self.device)).cpu())
            labels.append(y.cpu())
        features, labels = torch.cat(features), torch.cat(labels)
        for c in self.task_classes(task):
            self.prototypes[c] = exact_class_mean(features[labels == c]).to(self.prototypes.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """sigma * cos(f(x), w_c) over the seen classes, in float64 (autocast leaves float64 alone)."""
        f = F.normalize(self.image_features(x).double(), dim=1)
        w = F.normalize(self.prototypes[:self.n_seen_classes], dim=1)
        return self.sigma * f @ w.T

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        logits = self(x)
        return logits - logits.max(dim=1, keepdim=True).values
