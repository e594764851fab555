"""The reference's behaviours as explicit modes: its gather (key/value roles by batch position), its
batchwise count ranking and the original notebook's query, each against an independent restatement."""
import pytest
import torch

from dpcompat.common.errors import InputError
from train_fixtures import reference_batchwise, reference_outputs, tiny_model, varied_images

SIZES = (1, 2, 7, 8)


@pytest.fixture(scope="module")
def model():
    m = tiny_model(seed=11)
    with torch.no_grad():  # the reference's prompt scale, so that a role swap shows
        m.e_prompt.prompt.uniform_(-1, 1)
    return m


@pytest.mark.parametrize("batch", SIZES)
@pytest.mark.parametrize("selection", ["per-sample", "batchwise"])
@pytest.mark.parametrize("query", ["cls", "notebook"])
def test_reference_gather_equals_the_reference_computation(model, batch, selection, query):
    x = varied_images(batch, seed=batch)
    with torch.no_grad():
        ours = model(x, selection=selection, gather="reference", query=query)
        embedding, idx = model.embed(x, selection, "cls", gather="reference", query=query)
    ref = reference_outputs(model, x, batchwise=selection == "batchwise", query=query)
    assert torch.equal(ours["prompt_idx"], ref["prompt_idx"]) and torch.equal(idx, ref["prompt_idx"])
    assert (ours["embedding"] - ref["pre_logits"]).abs().max() <= 1e-5
    assert (embedding - ref["pre_logits"]).abs().max() <= 1e-5
    assert (ours["logits"] - ref["logits"]).abs().max() <= 1e-5


@pytest.mark.parametrize("batch", SIZES)
def test_reference_gather_under_the_training_prompt_mask(model, batch):
    x = varied_images(batch, seed=20 + batch)
    with torch.no_grad():
        ours = model(x, task_id=3, gather="reference")
    ref = reference_outputs(model, x, task_id=3)
    assert (ours["prompt_idx"] == 3).all()
    assert (ours["logits"] - ref["logits"]).abs().max() <= 1e-5


def test_role_swap_by_batch_position(model):
    """One image repeated: with every position on one prompt, positions < B/2 read (key, key) and
    positions >= B/2 (value, value); an odd batch's middle position reads (key, value), as at B = 1."""
    img = varied_images(1, seed=5)
    with torch.no_grad():
        alone = model(img, task_id=1, gather="reference")["embedding"][0]
        assert (model(img, task_id=1)["embedding"][0] - alone).abs().max() <= 1e-5
        even = model(img.expand(8, -1, -1, -1), task_id=1, gather="reference")["embedding"]
        odd = model(img.expand(7, -1, -1, -1), task_id=1, gather="reference")["embedding"]
        correct = model(img.expand(8, -1, -1, -1), task_id=1)["embedding"]
    assert (even[:4] - even[0]).abs().max() <= 1e-5 and (even[4:] - even[4]).abs().max() <= 1e-5
    assert (even[0] - even[4]).abs().max() > 1e-2
    assert (even[0] - alone).abs().max() > 1e-2 and (even[4] - alone).abs().max() > 1e-2
    assert (odd[:3] - even[0]).abs().max() <= 1e-5 and (odd[4:] - even[4]).abs().max() <= 1e-5
    assert (odd[3] - alone).abs().max() <= 1e-5
    assert (correct - alone).abs().max() <= 1e-5


def test_reference_batchwise_ranks_counts_as_the_reference_does():
    """Many index sets, ties and fewer distinct indices than top_k included, on this device's torch.topk."""
    gen = torch.Generator().manual_seed(0)
    for top_k in (1, 2, 3):
        model = tiny_model(top_k=top_k)
        for trial in range(200):
            batch = int(torch.randint(1, 9, (1,), generator=gen))
            spread = int(torch.randint(1, 11, (1,), generator=gen))
            idx = torch.randint(0, spread, (batch, top_k), generator=gen)
            got = model.e_prompt.reference_batchwise(idx)
            assert torch.equal(got, reference_batchwise(idx, 10, top_k)), (idx, got)


def test_notebook_query_is_the_max_over_embedded_tokens(model):
    x = varied_images(4, seed=9)
    with torch.no_grad():
        tokens = model.embedded_tokens(x)
        q = model.query(x, query="notebook")
    assert tokens.shape[1] == 1 + (32 // 8) ** 2
    assert torch.equal(q, tokens.max(dim=1).values)
    assert not torch.equal(q, tokens[:, 1:].max(dim=1).values)  # the [CLS] row takes part
    with torch.no_grad():
        assert (q - model.query(x)).abs().max() > 1e-2


def test_unknown_modes_are_refused(model):
    x = varied_images(1)
    with pytest.raises(InputError, match="gather"):
        model(x, gather="shuffled")
    with pytest.raises(InputError, match="query"):
        model(x, query="mean")
