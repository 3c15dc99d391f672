"""``joint``: the upper bound. Sequential LoRA's trainable parameters, trained on all classes at once.

The protocol trains it as one single task over every class of the benchmark (one head over all
classes, the same LoRA branch on k and v), then evaluates on the whole test set. It is reported
in its own table row as a reference, not as a continual method.
"""

from __future__ import annotations

from benchmark.registry import register_method
from methods.seq_lora import SeqLoRA


@register_method("joint")
class JointLoRA(SeqLoRA):
    """Sequential LoRA's architecture trained non-incrementally: the joint-training upper bound."""

    single_task = True
    upper_bound = True
    # synth: its own choice on validation A_T (results/measured/synth_sweep.json); else seq-LoRA's
    DATASET_DEFAULTS = {**SeqLoRA.DATASET_DEFAULTS, "synth": dict(epochs=3, lr=1e-2, head_lr=1e-2)}
    # synth: the grid its synth recipe was chosen from (validation A_T, results/measured/synth_sweep.json)
    DATASET_SEARCH_SPACES = {"synth": {"lr": [3e-3, 1e-2, 3e-2], "head_lr": [3e-3, 1e-2, 3e-2]}}
