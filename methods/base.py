"""The method interface. The harness (``benchmark/protocol.py``) owns the loop; a method is hooks.

For each task t = 0 .. T-1 the protocol calls, in this order:

1. ``begin_task(t, train_loader)`` under ``torch.no_grad()``: prepare for the task (e.g. InfLoRA
   designs its subspace from a pass over the data). ``current_task`` is already t. The loader is
   the task's training loader, or with ``hook_transform = "test"`` the same images under the test
   transform in a fixed order (also for ``end_task``).
2. ``trainable_parameters(t)``: the parameter groups to optimise. The protocol freezes every
   other parameter, builds a fresh optimiser and schedule for the task, and steps them.
3. ``training_loss(x, y, t)`` for every batch: the loss of one batch. Labels are global class
   ids; task t owns ``task_classes(t)``. The default is cross-entropy over the classes seen so
   far with past-task logits masked, i.e. cross-entropy over the current task's classes.
4. ``end_task(t, train_loader)`` under ``torch.no_grad()``: e.g. InfLoRA updates its memory.
5. ``predict(x)`` on the test data of tasks 0..t: logits over the classes seen so far,
   shape (B, n_seen_classes); the protocol takes the argmax (no task id).

``checkpoint_state`` / ``load_checkpoint_state`` hold everything the method needs to resume,
except the frozen backbone weights (rebuilt from the run configuration).

A method file reads: docstring, config dataclass, per-dataset defaults, the class, registration.
No training loop, no optimiser, no argparse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.backbones import backbone_features, weights_digest
from benchmark.search_space import LR_LADDER, Around, Space


@dataclass
class MethodConfig:
    """Training recipe shared by every method; methods subclass it to add their hyperparameters.

    The optimiser and schedule are built by the protocol from these values, fresh for each task.
    ``schedule="coda-cosine"`` (default) is the per-epoch cosine as the CODA-Prompt and InfLoRA
    codes run it: lr_e = lr * cos(99 pi max(e-1, 0) / (200 (K-1))) for epoch e = 0..K-1 of K, so
    epochs 0 and 1 both run at the full rate (constant when K = 1, where the codes divide by zero);
    ``"cosine-annealing"`` is torch's CosineAnnealingLR(T_max=K) stepped per epoch;
    ``"step"`` multiplies the lr by ``gamma`` at each epoch in ``milestones``; ``"constant"``.
    The formulas: ``benchmark.schedules.epoch_lr_factor``.
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    head_lr: float = 0.0  # learning rate of the classifier heads; 0 = same as lr
    optimizer: str = "adam"  # adam | adamw | sgd
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    schedule: str = "coda-cosine"  # coda-cosine | cosine-annealing | step | constant
    milestones: list[int] = field(default_factory=list)  # step schedule: epochs where lr *= gamma
    gamma: float = 0.1
    grad_clip: float = 0.0  # max grad norm; 0 disables
    drop_last: bool = False  # skip each epoch's last incomplete training batch (CODA-Prompt's loaders do)


class TaskHeads(nn.Module):
    """One linear head per task over the backbone features; logits are concatenated in task order."""

    def __init__(self, dim: int, task_sizes: list[int]):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(dim, n) for n in task_sizes)

    def forward(self, features: torch.Tensor, up_to_task: int) -> torch.Tensor:
        return torch.cat([head(features) for head in self.heads[:up_to_task + 1]], dim=1)


class Method(nn.Module):
    """Base class of every continual-learning method; see the module docstring for the hooks.

    Attributes the harness supplies (read-only for methods):
        backbone: the frozen timm ViT (methods may wrap its layers, never update its weights).
        task_sizes: number of classes of each task, in task order.
        cfg: the resolved method configuration (a ``Config`` instance).
    """

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    DATASET_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}  # dataset -> overrides of Config
    single_task: ClassVar[bool] = False  # True: trained once on all classes (the joint bound)
    upper_bound: ClassVar[bool] = False  # shown in its own table row, not as a continual method
    variant_of: ClassVar[str | None] = None  # a variant (e.g. inflora-b5): left out of the default run
    # timm pretrained tag of ViT-B/16 in the method's reference code (used when --backbone vit-b16);
    # default: the CODA-Prompt code's (timm 0.4.12 vit_base_patch16_224)
    pretrained_tag: ClassVar[str] = "augreg_in21k_ft_in1k"
    DATASET_PRETRAINED_TAGS: ClassVar[dict[str, str]] = {}  # data set -> tag, where it differs per data set
    # the view of the task's training images that begin_task / end_task receive: "train" (the
    # shuffled training loader, with augmentation, as InfLoRA's code) or "test" (the same images
    # in fixed order under the test transform, as SimpleCIL's and RanPAC's class statistics)
    hook_transform: ClassVar[str] = "train"
    # what `sweep` searches by default (benchmark/search_space.py): setting -> values, or a rule
    # deriving them from the recipe's value; per data set where it differs. Default: the lr only
    SEARCH_SPACE: ClassVar[Space] = {"lr": Around(LR_LADDER)}
    DATASET_SEARCH_SPACES: ClassVar[dict[str, Space]] = {}

    def __init__(self, backbone: nn.Module, task_sizes: list[int], cfg: MethodConfig):
        super().__init__()
        self.backbone = backbone
        self.task_sizes = list(task_sizes)
        self.cfg = cfg
        self._task_starts = [sum(self.task_sizes[:t]) for t in range(len(self.task_sizes) + 1)]
        self._current_task = -1
        # identities of the frozen backbone tensors: never part of a checkpoint
        self._frozen_ids = {id(t) for t in backbone.state_dict(keep_vars=True).values()}
        self.backbone_digest = weights_digest(backbone)  # of the weights as given, before any wrapping

    @classmethod
    def search_space(cls, dataset: str) -> Space:
        """The default space of ``sweep`` on ``dataset``."""
        return cls.DATASET_SEARCH_SPACES.get(dataset, cls.SEARCH_SPACE)

    # -- harness-owned state -------------------------------------------------------------------
    @property
    def current_task(self) -> int:
        return self._current_task

    @property
    def n_seen_classes(self) -> int:
        return self._task_starts[self._current_task + 1]

    @property
    def device(self) -> torch.device:
        """Where the backbone (and so the method) lives; hooks move their data here."""
        return next(self.backbone.parameters()).device

    @property
    def feature_dim(self) -> int:
        return self.backbone.num_features

    def enter_task(self, task: int) -> None:
        """Called by the protocol only, before ``begin_task``."""
        self._current_task = task

    def task_classes(self, task: int) -> range:
        """Global class ids owned by ``task``."""
        return range(self._task_starts[task], self._task_starts[task + 1])

    # -- hooks ---------------------------------------------------------------------------------
    def begin_task(self, task: int, train_loader: Iterable) -> None:
        """Prepare for ``task`` (no grad). Default: nothing."""

    def trainable_parameters(self, task: int) -> list[dict[str, Any]]:
        """Parameter groups (``{"params": [...], optional "lr": ...}``) to train on ``task``."""
        raise NotImplementedError

    def param_groups(self, adapter: list[nn.Parameter], head: nn.Module) -> list[dict[str, Any]]:
        """Groups for adapter parameters and a head, the head at ``cfg.head_lr`` when set."""
        groups = [{"params": list(adapter)}] if adapter else []
        head_group: dict[str, Any] = {"params": list(head.parameters())}
        if self.cfg.head_lr > 0:
            head_group["lr"] = self.cfg.head_lr
        return groups + [head_group]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over the classes seen so far, shape (B, n_seen_classes)."""
        raise NotImplementedError

    def training_loss(self, x: torch.Tensor, y: torch.Tensor, task: int) -> torch.Tensor:
        """Cross-entropy over the seen classes with past-task logits masked (= current task only)."""
        return self.masked_cross_entropy(self(x), y, task)

    def end_task(self, task: int, train_loader: Iterable) -> None:
        """Consolidate after ``task`` (no grad). Default: nothing."""

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Inference logits over the classes seen so far (no task id)."""
        return self(x)

    # -- helpers -------------------------------------------------------------------------------
    def masked_cross_entropy(self, logits: torch.Tensor, y: torch.Tensor, task: int) -> torch.Tensor:
        """Mean cross-entropy of logits over the seen classes with the past tasks' logits set to
        -inf, i.e. over ``task``'s classes only: past and future head columns get no gradient."""
        masked = logits.clone()
        masked[:, :self.task_classes(task).start] = float("-inf")
        return F.cross_entropy(masked, y)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The (possibly adapted) backbone's CLS feature after the final LayerNorm."""
        return backbone_features(self.backbone, x)

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to resume: the module state minus frozen backbone weights."""
        module = {k: v.detach().clone() for k, v in self.state_dict(keep_vars=True).items()
                  if id(v) not in self._frozen_ids}
        return {"module": module, "current_task": self._current_task}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Inverse of ``checkpoint_state`` on a method built from the same configuration."""
        frozen_keys = {k for k, v in self.state_dict(keep_vars=True).items() if id(v) in self._frozen_ids}
        result = self.load_state_dict(state["module"], strict=False)
        missing = set(result.missing_keys) - frozen_keys
        if missing or result.unexpected_keys:
            raise ValueError(f"checkpoint does not match {self.name}: missing {sorted(missing)}, "
                             f"unexpected {sorted(result.unexpected_keys)}")
        self._current_task = state["current_task"]
