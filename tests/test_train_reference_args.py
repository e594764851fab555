"""Checkpoint args carry every field of the reference's cifar100_dualprompt parser; architectures that
dpcompat does not implement are refused with the field named."""
import argparse

import pytest

from dpcompat.common.errors import InputError
from dpcompat.train.checkpoint import config_from_args, config_to_args, model_from_checkpoint, save_checkpoint
from train_fixtures import tiny_config, tiny_model

# The reference's `args` on one process, written out from its parser and the fields its code adds.
REFERENCE_FIELDS = """
subparser_name batch_size epochs model input_size pretrained drop drop_path opt opt_eps opt_betas clip_grad
momentum weight_decay reinit_optimizer sched lr lr_noise lr_noise_pct lr_noise_std warmup_lr min_lr decay_epochs
warmup_epochs cooldown_epochs patience_epochs decay_rate unscale_lr color_jitter aa smoothing train_interpolation
reprob remode recount data_path dataset shuffle output_dir device seed eval num_workers pin_mem world_size dist_url
num_tasks train_mask task_inc use_g_prompt g_prompt_length g_prompt_layer_idx use_prefix_tune_for_g_prompt
use_e_prompt e_prompt_layer_idx use_prefix_tune_for_e_prompt prompt_pool size length top_k initializer prompt_key
prompt_key_init use_prompt_mask mask_first_epoch shared_prompt_pool shared_prompt_key batchwise_prompt
embedding_key predefined_key pull_constraint pull_constraint_coeff same_key_value global_pool head_type freeze
print_freq nb_classes distributed
""".split()


def test_args_carry_every_reference_field_with_dpcompat_values_on_top():
    assert len(REFERENCE_FIELDS) == 79
    args = vars(config_to_args(tiny_config(top_k=2), batch_size=8, lr=0.3 * 8 / 256, batchwise_prompt=False))
    assert set(REFERENCE_FIELDS) <= set(args)
    assert (args["drop"], args["drop_path"], args["opt"], args["sched"], args["smoothing"]) == (0.0, 0.0, "adam", "constant", 0.1)
    assert args["freeze"] == ["blocks", "patch_embed", "cls_token", "norm", "pos_embed"]
    assert (args["top_k"], args["batch_size"], args["batchwise_prompt"], args["nb_classes"]) == (2, 8, False, 10)
    assert args["lr"] == pytest.approx(0.009375) and args["input_size"] == 32
    assert config_from_args(argparse.Namespace(**args)) == tiny_config(top_k=2)


@pytest.mark.parametrize("field,value", [("embedding_key", "mean"), ("embedding_key", "max"), ("head_type", "gap"),
                                         ("same_key_value", True), ("use_prefix_tune_for_e_prompt", False),
                                         ("prompt_pool", False)])
def test_unimplemented_architectures_are_refused(tmp_path, field, value):
    args = config_to_args(tiny_config(), **{field: value})
    path = save_checkpoint(tmp_path / "task1_checkpoint.pth", tiny_model(), None, 0, args)
    with pytest.raises(InputError) as e:
        model_from_checkpoint(path)
    assert str(path) in str(e.value) and f"{field}={value!r}" in str(e.value)


def test_args_without_the_fields_read_as_the_reference_defaults():
    assert config_from_args(argparse.Namespace(model="vit_tiny_patch16_224", nb_classes=10)).num_classes == 10
