"""Reference-layout checkpoints: strict loading, clear shape errors, safe unpickling, atomic writes."""
import argparse
import os
import pickle

import pytest
import torch

from dpcompat.common.errors import InputError
from dpcompat.train.checkpoint import config_to_args, load_checkpoint, model_from_checkpoint, save_checkpoint
from dpcompat.train.weights import load_pretrained_backbone
from train_fixtures import reference_layout_keys, tiny_config, tiny_model


def reference_checkpoint(path, depth=6, dim=64, heads=4, classes=10, pool=10):
    """A checkpoint as the public reference writes it: its key list, its shapes, its args fields."""
    hd = dim // heads
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, 17, dim), "g_prompt": (2, 2, 5, heads, hd),
              "patch_embed.proj.weight": (dim, 3, 8, 8), "patch_embed.proj.bias": (dim,),
              "e_prompt.prompt": (3, 2, pool, 5, heads, hd), "e_prompt.prompt_key": (pool, dim),
              "norm.weight": (dim,), "norm.bias": (dim,), "head.weight": (classes, dim), "head.bias": (classes,)}
    for i in range(depth):
        shapes.update({f"blocks.{i}.norm1.weight": (dim,), f"blocks.{i}.norm1.bias": (dim,),
                       f"blocks.{i}.attn.qkv.weight": (3 * dim, dim), f"blocks.{i}.attn.qkv.bias": (3 * dim,),
                       f"blocks.{i}.attn.proj.weight": (dim, dim), f"blocks.{i}.attn.proj.bias": (dim,),
                       f"blocks.{i}.norm2.weight": (dim,), f"blocks.{i}.norm2.bias": (dim,),
                       f"blocks.{i}.mlp.fc1.weight": (4 * dim, dim), f"blocks.{i}.mlp.fc1.bias": (4 * dim,),
                       f"blocks.{i}.mlp.fc2.weight": (dim, 4 * dim), f"blocks.{i}.mlp.fc2.bias": (dim,)})
    assert sorted(shapes) == sorted(reference_layout_keys(depth))
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) * 0.1 for k, s in shapes.items()}
    args = argparse.Namespace(model="vit_tiny_patch16_224", input_size=32, nb_classes=classes, num_tasks=2, size=pool,
                              length=5, top_k=1, g_prompt_length=5, g_prompt_layer_idx=[0, 1],
                              e_prompt_layer_idx=[2, 3, 4], use_prefix_tune_for_g_prompt=True,
                              use_prefix_tune_for_e_prompt=True, head_type="token", embedding_key="cls",
                              batchwise_prompt=True, same_key_value=False, lr=0.03,
                              # the reference derives widths from the model name; this miniature states them
                              embed_dim=dim, depth=depth, num_heads=heads, patch_size=8)
    torch.save({"model": state, "optimizer": {}, "epoch": 4, "args": args}, path)
    return state


def test_reference_checkpoint_loads_strictly(tmp_path):
    state = reference_checkpoint(tmp_path / "task1_checkpoint.pth")
    model, ckpt = model_from_checkpoint(tmp_path / "task1_checkpoint.pth")
    assert model.cfg.embed_dim == 64 and model.cfg.pool_size == 10 and ckpt["epoch"] == 4
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_our_checkpoint_has_reference_structure(tmp_path):
    model = tiny_model()
    path = save_checkpoint(tmp_path / "task1_checkpoint.pth", model, None, 4, config_to_args(model.cfg, lr=0.1))
    raw = load_checkpoint(path)
    assert set(raw) == {"model", "optimizer", "epoch", "args"}
    assert isinstance(raw["args"], argparse.Namespace)
    for field in ("model", "input_size", "nb_classes", "size", "length", "top_k", "g_prompt_length",
                  "g_prompt_layer_idx", "e_prompt_layer_idx", "use_prefix_tune_for_g_prompt",
                  "use_prefix_tune_for_e_prompt", "head_type", "embedding_key", "same_key_value"):
        assert hasattr(raw["args"], field), field
    assert sorted(raw["model"]) == sorted(reference_layout_keys(6))
    assert not list(tmp_path.glob(".*tmp"))


def test_wrong_shapes_give_one_error_naming_keys(tmp_path):
    state = reference_checkpoint(tmp_path / "task1_checkpoint.pth")
    ckpt = torch.load(tmp_path / "task1_checkpoint.pth", weights_only=False)
    ckpt["model"]["e_prompt.prompt_key"] = torch.zeros(7, 64)
    ckpt["model"]["head.weight"] = torch.zeros(3, 64)
    torch.save(ckpt, tmp_path / "bad.pth")
    with pytest.raises(InputError) as e:
        model_from_checkpoint(tmp_path / "bad.pth")
    msg = str(e.value)
    assert "bad.pth" in msg and "e_prompt.prompt_key is (7, 64)" in msg and "head.weight" in msg and "\n" not in msg
    assert state  # the good one was written first


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_checkpoint_with_code_is_refused_and_nothing_runs(tmp_path):
    target = tmp_path / "pwned"
    with open(tmp_path / "evil.pth", "wb") as f:
        torch.save({"model": {}, "args": _Payload(str(target))}, f)
    with pytest.raises(InputError, match="refused"):
        load_checkpoint(tmp_path / "evil.pth")
    assert not target.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_truncated_or_garbage_checkpoint(tmp_path, content):
    path = tmp_path / "task1_checkpoint.pth"
    if content is None:
        save_checkpoint(path, tiny_model(), None, 0, config_to_args(tiny_config()))
        content = path.read_bytes()[: len(path.read_bytes()) // 2]
    path.write_bytes(content)
    with pytest.raises(InputError, match="task1_checkpoint.pth") as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)


def test_plain_pickle_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(InputError, match="x.pth"):
        load_checkpoint(path)


def test_pretrained_weights_from_local_timm_file(tmp_path):
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                            embed_dim=64, depth=6, num_heads=4)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    model = tiny_model()
    load_pretrained_backbone(model, tmp_path / "vit.pth")
    assert torch.equal(model.state_dict()["blocks.3.attn.qkv.weight"], vit.state_dict()["blocks.3.attn.qkv.weight"])
    assert torch.equal(model.state_dict()["pos_embed"], vit.state_dict()["pos_embed"])


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "task1_checkpoint.pth", tiny_model(), None, 0, config_to_args(tiny_config()))
    assert os.listdir(tmp_path) == []
