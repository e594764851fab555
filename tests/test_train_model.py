"""The DualPrompt model: reference layout, batch invariance, reference equality at batch size 1."""
import pytest
import timm
import torch

from dpcompat.train.model import DualPromptConfig, DualPromptViT
from train_fixtures import TINY_ARCH, reference_forward, reference_layout_keys, tiny_model, varied_images


def test_state_dict_has_reference_keys_and_shapes():
    model = DualPromptViT(DualPromptConfig())  # the reference's cifar100_dualprompt ViT-B/16
    sd = model.state_dict()
    assert sorted(sd) == sorted(reference_layout_keys(12))
    assert sd["g_prompt"].shape == (2, 2, 5, 12, 64)
    assert sd["e_prompt.prompt"].shape == (3, 2, 10, 5, 12, 64)
    assert sd["e_prompt.prompt_key"].shape == (10, 768)
    assert sd["pos_embed"].shape == (1, 197, 768)
    assert sd["head.weight"].shape == (100, 768)


def test_only_prompts_keys_and_head_train():
    model = tiny_model()
    model.freeze_backbone()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"g_prompt", "e_prompt.prompt", "e_prompt.prompt_key", "head.weight", "head.bias"}


def test_batch_invariance_across_sizes_and_positions():
    model = tiny_model()
    images = varied_images(33)
    with torch.no_grad():
        alone = model(images[:1])["embedding"][0]
        for batch in (images[:7], images[:33], torch.cat([images[5:12], images[:1], images[20:30]])):
            out = model(batch)
            pos = next(i for i in range(len(batch)) if torch.equal(batch[i], images[0]))
            assert (out["embedding"][pos] - alone).abs().max() <= 1e-5
        # the batch really uses several prompts, so a wrong gather would show
        assert len(model(images)["prompt_idx"].unique()) > 1


def test_equals_reference_at_batch_size_one_and_fixes_its_batch_defect():
    model = tiny_model(seed=3)
    images = varied_images(8, seed=4)
    with torch.no_grad():
        ours = model(images)["embedding"]
        singles = torch.cat([reference_forward(model, images[i:i + 1]) for i in range(8)])
        batched_reference = reference_forward(model, images)
    assert (ours - singles).abs().max() <= 1e-5
    # the reference's gather mixes samples in a batch: its batched output differs from its own B=1 output
    assert (batched_reference - singles).abs().max() > 1e-3


def test_query_pass_is_the_plain_vit_without_prompts():
    model = tiny_model(seed=5)
    vit = timm.create_model(TINY_ARCH["model"], pretrained=False, num_classes=0, img_size=32, patch_size=8,
                            embed_dim=64, depth=6, num_heads=4).eval()
    backbone = {k: v for k, v in model.state_dict().items() if k.startswith(DualPromptViT.BACKBONE)}
    missing, unexpected = vit.load_state_dict(backbone, strict=False)
    assert not unexpected and not [k for k in missing if not k.startswith(("head", "fc_norm"))]
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.query(x), vit(x), atol=1e-5)
        # prompts change the embedding: the prompted pass is not the query pass
        assert (model(x)["embedding"] - model.query(x)).abs().max() > 1e-3


def test_batchwise_selection_gives_every_sample_the_most_frequent_prompt():
    model = tiny_model(seed=6)
    x = varied_images(16, seed=6)
    with torch.no_grad():
        per_sample = model(x)["prompt_idx"][:, 0]
        batchwise = model(x, selection="batchwise")["prompt_idx"][:, 0]
    counts = torch.bincount(per_sample, minlength=10)
    assert (batchwise == int(torch.argmax(counts))).all()


def test_prompt_mask_forces_the_task_prompt_in_training():
    model = tiny_model()
    out = model(torch.rand(3, 3, 32, 32), task_id=2)
    assert out["prompt_idx"].flatten().tolist() == [2, 2, 2]
    out["reduce_sim"].backward()
    assert model.e_prompt.prompt_key.grad[2].abs().sum() > 0
    assert model.e_prompt.prompt_key.grad[[0, 1, 3]].abs().sum() == 0


def test_top_k_two_concatenates_prompts_per_sample():
    model = tiny_model(top_k=2)
    x = varied_images(5, seed=7)
    with torch.no_grad():
        out = model(x)
        single = torch.cat([model(x[i:i + 1])["embedding"] for i in range(5)])
    assert out["prompt_idx"].shape == (5, 2)
    assert (out["embedding"] - single).abs().max() <= 1e-5


def test_config_rejects_impossible_layouts():
    with pytest.raises(ValueError, match="prompt layers"):
        DualPromptConfig.from_name("vit_tiny_patch16_224", depth=4, e_prompt_layers=(2, 3, 4))
    with pytest.raises(ValueError, match="unsupported model name"):
        DualPromptConfig.from_name("resnet50")
