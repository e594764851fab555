"""The complete ``args`` of the public reference's ``cifar100_dualprompt`` configuration, and the check
that a checkpoint's ``args`` asks for nothing dpcompat does not implement.

The reference stores its whole ``argparse.Namespace`` in every checkpoint: the parser's 77 fields
(``subparser_name`` included) plus ``nb_classes`` and ``distributed`` that its code adds, 79 in all
(under torch.distributed also ``rank``, ``gpu`` and ``dist_backend``). Tools that rebuild a model
from ``args`` read any of them, so dpcompat's checkpoints carry all of them; the fields dpcompat sets
from its own options (architecture, batch size, epochs, ``batchwise_prompt`` from ``--selection``,
``lr`` after the reference's scaling ...) override these values.
"""
from __future__ import annotations

from typing import Any, Mapping

# The reference parser's defaults for `cifar100_dualprompt`, with `nb_classes` and `distributed` as its
# code sets them for CIFAR-100 on one process. `lr` is the base rate here; a checkpoint stores it scaled.
REFERENCE_DEFAULTS: dict[str, Any] = {
    "subparser_name": "cifar100_dualprompt", "batch_size": 24, "epochs": 5,
    "model": "vit_base_patch16_224", "input_size": 224, "pretrained": True, "drop": 0.0, "drop_path": 0.0,
    "opt": "adam", "opt_eps": 1e-8, "opt_betas": (0.9, 0.999), "clip_grad": 1.0, "momentum": 0.9,
    "weight_decay": 0.0, "reinit_optimizer": True,
    "sched": "constant", "lr": 0.03, "lr_noise": None, "lr_noise_pct": 0.67, "lr_noise_std": 1.0,
    "warmup_lr": 1e-6, "min_lr": 1e-5, "decay_epochs": 30, "warmup_epochs": 5, "cooldown_epochs": 10,
    "patience_epochs": 10, "decay_rate": 0.1, "unscale_lr": True,
    "color_jitter": None, "aa": None, "smoothing": 0.1, "train_interpolation": "bicubic",
    "reprob": 0.0, "remode": "pixel", "recount": 1,
    "data_path": "/local_datasets/", "dataset": "Split-CIFAR100", "shuffle": False, "output_dir": "./output",
    "device": "cuda", "seed": 42, "eval": False, "num_workers": 4, "pin_mem": True,
    "world_size": 1, "dist_url": "env://",
    "num_tasks": 10, "train_mask": True, "task_inc": False,
    "use_g_prompt": True, "g_prompt_length": 5, "g_prompt_layer_idx": [0, 1], "use_prefix_tune_for_g_prompt": True,
    "use_e_prompt": True, "e_prompt_layer_idx": [2, 3, 4], "use_prefix_tune_for_e_prompt": True,
    "prompt_pool": True, "size": 10, "length": 5, "top_k": 1, "initializer": "uniform", "prompt_key": True,
    "prompt_key_init": "uniform", "use_prompt_mask": True, "mask_first_epoch": False, "shared_prompt_pool": True,
    "shared_prompt_key": False, "batchwise_prompt": True, "embedding_key": "cls", "predefined_key": "",
    "pull_constraint": True, "pull_constraint_coeff": 1.0, "same_key_value": False,
    "global_pool": "token", "head_type": "token",
    "freeze": ["blocks", "patch_embed", "cls_token", "norm", "pos_embed"], "print_freq": 10,
    "nb_classes": 100, "distributed": False,
}

# Architecture fields whose other values build a different network, and what dpcompat implements:
# prefix-tuned g- and e-prompts, a learned key per pool entry, separate key and value prompts, the [CLS]
# head, and prompt selection by the frozen [CLS] query (embedding_key 'cls').
IMPLEMENTED: dict[str, Any] = {
    "embedding_key": "cls", "head_type": "token", "prompt_pool": True, "prompt_key": True, "use_g_prompt": True,
    "use_e_prompt": True, "use_prefix_tune_for_g_prompt": True, "use_prefix_tune_for_e_prompt": True,
    "same_key_value": False, "predefined_key": "",
}


def reference_args(**fields: Any) -> dict[str, Any]:
    """Every reference field, ``fields`` (dpcompat's values) taking precedence."""
    return {**REFERENCE_DEFAULTS, **fields}


def check_supported(args: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming every architecture field of ``args`` that dpcompat does not implement
    (a field that is absent or None means the reference's default)."""
    wrong = [f"{k}={args[k]!r} (dpcompat implements {v!r})" for k, v in IMPLEMENTED.items()
             if args.get(k) is not None and args[k] != v]
    if wrong:
        raise ValueError("args ask for an architecture dpcompat does not implement: " + ", ".join(wrong))
