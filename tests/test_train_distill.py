"""Feature distillation: the terms' values and gradients against direct computations; training with it
records it and resumes to the same result."""
import json

import pytest
import torch

from dpcompat.train.checkpoint import list_checkpoints, model_from_checkpoint
from dpcompat.train.distill import Distiller, cosine_distillation, influence_loss
from test_train_cli import TRAIN, data_dir, run_cli  # noqa: F401 (data_dir is a fixture)
from train_fixtures import tiny_model, varied_images


def test_cosine_term_value_and_gradient():
    gen = torch.Generator().manual_seed(0)
    new = torch.randn(5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    old = torch.randn(5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    value = cosine_distillation(new, old)
    n, o = new.detach(), old.detach()
    nn, on = n.norm(dim=1, keepdim=True), o.norm(dim=1, keepdim=True)
    cos = (n * o).sum(1, keepdim=True) / (nn * on)
    assert value.item() == pytest.approx(float((1 - cos).mean()), abs=1e-6)
    value.backward()
    # d/dn of (1 - n.o / (|n||o|)) / B  =  -(o / (|n||o|) - cos * n / |n|^2) / B
    expected = -(o / (nn * on) - cos * n / nn ** 2) / 5
    assert torch.allclose(new.grad.double(), expected, atol=1e-6)
    assert old.grad is None or old.grad.abs().max() == 0


def test_influence_loss_value_and_gradient():
    gen = torch.Generator().manual_seed(1)
    new = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight, bias = torch.randn(10, 4, generator=gen, dtype=torch.float64), torch.randn(10, generator=gen, dtype=torch.float64)
    seen = torch.tensor([2, 3, 4, 5])
    labels = torch.tensor([2, 3, 4, 5, 2, 4])
    value = influence_loss(new, weight, bias, labels, seen)
    logits = new.detach() @ weight[seen].T + bias[seen]
    target = torch.tensor([list(seen).index(int(c)) for c in labels])
    log_p = logits - logits.logsumexp(1, keepdim=True)
    assert value.item() == pytest.approx(float(-log_p[torch.arange(6), target].mean()), abs=1e-6)
    value.backward()
    p = log_p.exp()
    p[torch.arange(6), target] -= 1
    assert torch.allclose(new.grad.double(), p @ weight[seen] / 6, atol=1e-6)


def test_distiller_is_zero_at_the_start_and_follows_the_model():
    model = tiny_model(seed=2)
    x = varied_images(6, seed=2)
    distiller = Distiller(model, "cosine")
    with torch.no_grad():
        assert distiller.term(x, None, model(x)["embedding"]).abs().item() <= 1e-6
        model.g_prompt.add_(0.5)  # training moves the model away from its frozen copy
        new = model(x)["embedding"]
        old = distiller.previous(x)["embedding"]
    assert distiller.term(x, None, new).item() == pytest.approx(
        float((1 - torch.nn.functional.cosine_similarity(new, old)).mean()), abs=1e-6)
    assert all(not p.requires_grad for p in distiller.previous.parameters())


def test_bct_synthesises_new_class_rows_as_old_class_means():
    model = tiny_model(seed=3)
    x = varied_images(8, seed=3)
    y = torch.tensor([4, 5, 4, 5, 4, 5, 5, 5])
    distiller = Distiller(model, "bct")
    distiller.prepare([(x[:3], y[:3]), (x[3:], y[3:])], [4, 5], [0, 1, 2, 3, 4, 5], torch.device("cpu"))
    with torch.no_grad():
        emb = model(x)["embedding"]
    assert torch.allclose(distiller.weight[4], emb[y == 4].mean(0), atol=1e-5)
    assert torch.allclose(distiller.weight[5], emb[y == 5].mean(0), atol=1e-5)
    assert torch.equal(distiller.weight[:4], model.head.weight[:4]) and (distiller.bias[4:6] == 0).all()
    assert torch.isfinite(distiller.term(x, y, emb))


@pytest.mark.parametrize("kind", ["cosine", "bct"])
def test_training_with_distillation_records_it_and_resumes(tmp_path, data_dir, kind):  # noqa: F811
    args = ["train", "--data-path", str(data_dir), "--output-dir", "out", *TRAIN, "--distill-weight", "0.5",
            "--distill-kind", kind]
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["distill_losses"] is None and len(rows[1]["distill_losses"]) == 3
    assert rows[1]["distill_weight"] == 0.5 and rows[1]["distill_kind"] == kind
    # the cosine term is positive once training moves the model; BCT's can round to 0 (separable classes)
    assert all(v > 0 if kind == "cosine" else v >= 0 for v in rows[1]["distill_losses"])
    ckpts = list_checkpoints(tmp_path / "out" / "checkpoint")
    model, ckpt = model_from_checkpoint(ckpts[2])
    assert (ckpt["args"].distill_weight, ckpt["args"].distill_kind) == (0.5, kind)
    before = model.state_dict()["e_prompt.prompt"].clone()
    ckpts[2].unlink()
    r = run_cli(*args, "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    again = model_from_checkpoint(ckpts[2])[0].state_dict()["e_prompt.prompt"]
    assert torch.allclose(again, before, atol=1e-6)
    resumed = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert resumed[1]["distill_losses"] == pytest.approx(rows[1]["distill_losses"], abs=1e-5)


def test_negative_distill_weight_is_refused(tmp_path):
    r = run_cli("train", "--distill-weight", "-1", *TRAIN, cwd=tmp_path)
    assert r.returncode == 2 and "--distill-weight" in r.stderr and "Traceback" not in r.stderr
