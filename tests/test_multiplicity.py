"""Augmentation multiplicity: K copies' gradients are averaged per sample before clipping."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from client.multiplicity import average_copies, mean_of_copies
from client.training import plan_round, train_local
from common.augmentation import augment_copies
from common.config import ConfigError, RunConfig, validate_config
from common.evaluation import dataset_of
from common.models import build_model
from common.randomness import RandomStream
from common.serialization import model_weights
from common.sitedata import load_site


def _with(config: RunConfig, *, privacy: dict | None = None, **training: object) -> RunConfig:
    return config.model_copy(update={
        "training": config.training.model_copy(update=training),
        "privacy": config.privacy.model_copy(update=privacy or {})})


def test_copies_are_sample_major_and_only_pixels_and_signals_change(demo_root: Path,
                                                                     small_config) -> None:
    data = load_site(demo_root / "site-01", small_config.data)
    batch = dataset_of(data).batch(range(5))
    torch.manual_seed(0)
    image, tokens, signal, present, label = augment_copies(*batch, multiplicity=3)
    assert len(label) == 15
    for original, copied in ((batch[1], tokens), (batch[3], present), (batch[4], label)):
        assert torch.equal(copied, original.repeat_interleave(3, dim=0))
    assert image.shape == (15, *batch[0].shape[1:]) and signal.shape == (15, *batch[2].shape[1:])
    assert not torch.equal(image[0], image[1]) or not torch.equal(image[1], image[2])
    assert not torch.equal(signal[0], signal[1])
    features = torch.randn(5, 1280)  # frozen pretrained image features are not augmented
    assert torch.equal(augment_copies(features, *batch[1:], multiplicity=3)[0],
                       features.repeat_interleave(3, dim=0))
    zeros = torch.zeros_like(batch[0])  # an absent modality stays absent
    assert not augment_copies(zeros, *batch[1:], multiplicity=3)[0].any()
    assert all(a is b for a, b in zip(augment_copies(*batch, multiplicity=1), batch, strict=True))


@pytest.mark.parametrize("mode", ["hooks", "functorch", "ew"])
def test_gradient_entering_clipping_is_the_mean_of_the_copies(demo_root: Path, small_config,
                                                              mode: str) -> None:
    """What Opacus clips, per sample, is (1/K) Σₖ ∇ℓ(copy k), each ∇ℓ computed by hand."""
    from opacus import PrivacyEngine

    from client.grad_sample import make_private

    k, samples = 3, 4
    data = load_site(demo_root / "site-01", small_config.data)
    torch.manual_seed(0)
    rows = augment_copies(*dataset_of(data).batch(range(samples)), multiplicity=k)
    model = build_model(data=small_config.data, model=small_config.model, seed=0).train()
    by_hand = copy.deepcopy(model)
    expected = []
    for j in range(len(rows[-1])):
        by_hand.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(by_hand(*(t[j:j + 1] for t in rows[:-1])),
                                    rows[-1][j:j + 1]).backward()
        expected.append([p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                         for p in by_hand.parameters()])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*rows[:samples]),
                                         batch_size=samples)
    private, optimizer, criterion, _ = make_private(
        PrivacyEngine(), mode=mode, module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0), data_loader=loader,
        criterion=nn.CrossEntropyLoss(), noise_multiplier=0.0, max_grad_norm=1.0,
        poisson_sampling=False)
    seen: list[torch.Tensor] = []
    clip = optimizer.clip_and_accumulate

    def spy() -> None:
        seen.extend(p.grad_sample.clone() for p in optimizer.params)
        clip()

    optimizer.clip_and_accumulate = spy
    average_copies(optimizer, multiplicity=k)
    criterion(private(*rows[:-1]), rows[-1]).backward()
    optimizer.step()
    assert optimizer.expected_batch_size == samples  # samples, not copies
    # Opacus' embedding per-sample gradient ignores padding_idx (autograd's leaves the padding
    # row at zero): compared apart from that row, which has nothing to do with K
    names = [name for name, _ in model.named_parameters()]
    for index, got in enumerate(seen):
        assert got.shape[0] == samples
        for i in range(samples):
            mean = sum(expected[i * k + c][index] for c in range(k)) / k
            if names[index] == "encoders.text.embedding.weight":
                got_i, mean = got[i][1:], mean[1:]
            else:
                got_i = got[i]
            torch.testing.assert_close(got_i, mean, rtol=0, atol=1e-6)


def _clipped_sum(grad_sample: torch.Tensor, *, k: int, per_copy: bool) -> torch.Tensor:
    """Opacus' clip-and-sum of ``grad_sample`` (rows of copies) through :func:`average_copies`;
    ``per_copy``: the weakened pipeline that clips each copy as if it were a sample."""
    from opacus.optimizers import DPOptimizer

    parameter = nn.Parameter(torch.zeros(grad_sample.shape[1:]))
    optimizer = DPOptimizer(torch.optim.SGD([parameter], lr=0.0), noise_multiplier=0.0,
                            max_grad_norm=1.0, expected_batch_size=len(grad_sample) // k)
    average_copies(optimizer, multiplicity=k)
    if per_copy:
        optimizer.augmentation_multiplicity = 1
    parameter.grad_sample = grad_sample
    optimizer.clip_and_accumulate()
    return parameter.summed_grad


def test_a_sample_moves_the_clipped_sum_by_at_most_c_and_per_copy_clipping_by_more() -> None:
    k, width = 4, 6
    generator = torch.Generator().manual_seed(0)
    others = 50 * torch.randn(3 * k, width, generator=generator)
    direction = torch.zeros(width)
    direction[0] = 1.0
    # sample i: K copies with large gradients pointing in different directions
    copies = 100 * (direction + 0.8 * torch.randn(k, width, generator=generator))
    for per_copy, bound in ((False, 1.0), (True, k * 1.0)):
        with_i = _clipped_sum(torch.cat([others, copies]), k=k, per_copy=per_copy)
        without_i = _clipped_sum(others, k=k, per_copy=per_copy)
        moved = float(torch.linalg.vector_norm(with_i - without_i))
        assert moved <= bound + 1e-6
        if per_copy:
            assert moved > 1.5  # the weakened variant breaks the sensitivity C
        else:
            assert moved == pytest.approx(1.0, abs=1e-5)  # the mean is clipped to exactly C
    # an empty Poisson batch still steps: no rows to average, a zero clipped sum
    assert not _clipped_sum(torch.zeros(0, width), k=k, per_copy=False).any()
    assert torch.equal(mean_of_copies(others, 1), others)
    with pytest.raises(ValueError, match="whole groups"):
        mean_of_copies(others[:5], k)


def _train(config: RunConfig, data, weights, *, seed: int = 0):
    torch.manual_seed(seed)
    return train_local(config=config, global_weights=weights, data=data,
                       plan=plan_round(len(data), config), history=[[0.7, 0.5, 3]],
                       stream=RandomStream.from_seed(seed))


def test_k1_is_todays_path_and_k_changes_neither_steps_nor_ledger(
        demo_root: Path, small_config, monkeypatch) -> None:
    config = _with(small_config, privacy={"grad_sample_mode": "hooks", "noise_multiplier": 1.0})
    data = load_site(demo_root / "site-01", config.data)
    weights = model_weights(build_model(data=config.data, model=config.model, seed=0))
    before = _train(config, data, weights)
    four = _with(config, augmentation_multiplicity=4)
    assert plan_round(len(data), four) == plan_round(len(data), config)
    multiplied = _train(four, data, weights)
    assert multiplied.steps == before.steps
    assert multiplied.history == before.history  # the accountant sees the same (σ, q, steps)
    assert any(not np.array_equal(multiplied.weights[n], before.weights[n]) for n in weights)

    def untouched(*args, **kwargs):
        raise AssertionError("K = 1 must not augment or average")

    monkeypatch.setattr("client.training.augment_copies", untouched)
    monkeypatch.setattr("client.multiplicity.average_copies", untouched)
    again = _train(config, data, weights)  # K = 1: bit for bit, without either step
    for name in weights:
        np.testing.assert_array_equal(again.weights[name], before.weights[name])


def test_non_private_training_takes_the_copies(demo_root: Path, small_config) -> None:
    config = _with(small_config, privacy={"enabled": False}, augmentation_multiplicity=2)
    data = load_site(demo_root / "site-02", config.data)
    weights = model_weights(build_model(data=config.data, model=config.model, seed=0))
    result = _train(config, data, weights)
    assert result.grad_sample_mode == "none" and np.isfinite(result.train_loss)


def test_multiplicity_never_trains_with_ghost_clipping(small_config, monkeypatch) -> None:
    from client import grad_sample

    with pytest.raises(ConfigError, match="ghost clipping keeps none"):
        validate_config({"training": {"augmentation_multiplicity": 2},
                         "privacy": {"grad_sample_mode": "ghost"}})
    asked: list[tuple[str, ...]] = []
    monkeypatch.setattr(grad_sample, "CALIBRATE_MIN_PARAMETERS", 0)
    monkeypatch.setattr(grad_sample, "calibrate", lambda **kw: asked.append(kw["modes"])
                        or grad_sample.Calibration("hooks"))
    model = build_model(data=small_config.data, model=small_config.model, seed=0)
    chosen = grad_sample.choose_mode(
        requested="auto", model=model, build=lambda: model, batch=lambda: [torch.zeros(4)],
        max_grad_norm=1.0, memo=grad_sample.ModeMemo(None), device=torch.device("cpu"),
        per_sample=True)
    assert chosen == "hooks" and asked == [("hooks", "ew", "functorch")]
    with pytest.raises(ValueError, match="no per-sample gradients"):
        grad_sample.choose_mode(requested="ghost", model=model, build=lambda: model,
                                batch=lambda: [], max_grad_norm=1.0,
                                memo=grad_sample.ModeMemo(None), device=torch.device("cpu"),
                                per_sample=True)


def test_fixed_image_features_are_copied_not_shifted() -> None:
    """Scattering maps are features, not a picture: with ``pixels=False`` each copy keeps
    them exactly (the signal is still augmented)."""
    import torch

    from common.augmentation import augment_copies

    torch.manual_seed(0)
    maps = torch.rand(2, 81, 7, 7)
    signal = torch.rand(2, 1, 100)
    out = augment_copies(maps, torch.zeros(2, 4, dtype=torch.long), signal,
                         torch.ones(2, 3, dtype=torch.bool), torch.tensor([0, 1]),
                         multiplicity=3, pixels=False)
    assert torch.equal(out[0], maps.repeat_interleave(3, dim=0))
    assert not torch.equal(out[2], signal.repeat_interleave(3, dim=0))
    shifted = augment_copies(maps, torch.zeros(2, 4, dtype=torch.long), signal,
                             torch.ones(2, 3, dtype=torch.bool), torch.tensor([0, 1]),
                             multiplicity=3)
    assert not torch.equal(shifted[0], maps.repeat_interleave(3, dim=0))  # pixels: shifted
