"""Every fusion head × every modality subset × both text encoders: forward, backward and one
real Opacus DP-SGD step, with no validator fixes needed."""

import itertools
import warnings

import pytest
import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator

from common.config import MODALITIES, DataConfig, ModelConfig
from common.features import FEATURE_SIZES
from common.models import build_model, count_parameters, drop_modalities, select_device

DATA = DataConfig()
SUBSETS = [c for r in (1, 2, 3) for c in itertools.combinations(MODALITIES, r)]


def _batch(size: int, present: torch.Tensor | None = None) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    mask = present if present is not None else torch.ones(size, 3, dtype=torch.bool)
    return [
        torch.randn(size, 1, 32, 32, generator=generator),
        torch.randint(1, DATA.vocab_size, (size, DATA.max_text_tokens), generator=generator),
        torch.randn(size, 1, DATA.signal_length, generator=generator),
        mask,
        torch.randint(0, DATA.num_classes, (size,), generator=generator),
    ]


@pytest.mark.parametrize("text_encoder", ["gru", "attention"])
@pytest.mark.parametrize("fusion", ["concat", "attention", "late"])
@pytest.mark.parametrize("modalities", SUBSETS, ids=["+".join(s) for s in SUBSETS])
def test_head_with_modality_subset_trains_under_dp(fusion: str, text_encoder: str,
                                                   modalities: tuple[str, ...]) -> None:
    config = ModelConfig(fusion=fusion, text_encoder=text_encoder, modalities=modalities,
                         embed_dim=8, hidden_dim=16, modality_dropout=0.3)
    model = build_model(data=DATA, model=config, seed=0)
    assert ModuleValidator.validate(model, strict=False) == []
    # some rows lack some modalities, but every row keeps one the model uses
    columns = [MODALITIES.index(m) for m in modalities]
    present = torch.ones(8, 3, dtype=torch.bool)
    present[::2, columns[0]] = len(columns) == 1
    dataset = torch.utils.data.TensorDataset(*_batch(8, present))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = PrivacyEngine(accountant="rdp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private, optimizer, loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0,
            max_grad_norm=1.0, poisson_sampling=False)
        before = [p.detach().clone() for p in model.parameters()]
        image, tokens, signal, mask, label = next(iter(loader))
        logits = private(image, tokens, signal, mask)
        assert logits.shape == (4, DATA.num_classes) and torch.isfinite(logits).all()
        torch.nn.functional.cross_entropy(logits, label).backward()
        optimizer.step()
    changed = [not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)]
    assert all(changed)
    assert engine.accountant.history == [(1.0, 0.5, 1)]


@pytest.mark.parametrize("fusion", ["concat", "attention", "late"])
def test_missing_modality_is_masked_not_zero_filled(fusion: str) -> None:
    """Changing the input of a missing modality must not change the output."""
    model = build_model(data=DATA, model=ModelConfig(fusion=fusion, embed_dim=8), seed=1).eval()
    image, tokens, signal, _, _ = _batch(4)
    present = torch.tensor([[False, True, True]] * 4)
    first = model(image, tokens, signal, present)
    second = model(image * 5 + 3, tokens, signal, present)
    assert torch.allclose(first, second)
    assert not torch.allclose(first, model(image * 5 + 3, tokens, signal,
                                           torch.ones(4, 3, dtype=torch.bool)))


def test_modality_dropout_keeps_one_modality() -> None:
    torch.manual_seed(0)
    present = torch.rand(1000, 3) < 0.7
    present[present.sum(dim=1) == 0, 0] = True
    kept = drop_modalities(present, 0.9)
    assert (kept <= present).all() and kept.any(dim=1).all()
    assert kept.sum() < present.sum()


def test_seeded_build_is_reproducible_and_device_auto() -> None:
    a, b = (build_model(data=DATA, model=ModelConfig(), seed=3) for _ in range(2))
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert count_parameters(a) > 10_000
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            select_device("cuda")


@pytest.mark.parametrize("fusion", ["concat", "attention", "late"])
def test_pretrained_encoders_train_projections_of_frozen_features_under_dp(fusion: str) -> None:
    config = ModelConfig(fusion=fusion, encoders="pretrained", embed_dim=8, hidden_dim=16)
    model = build_model(data=DATA, model=config, seed=0)
    assert ModuleValidator.validate(model, strict=False) == []
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(8, FEATURE_SIZES["image"], generator=generator)
    text = torch.randn(8, FEATURE_SIZES["text"], generator=generator)
    _, _, signal, present, label = _batch(8)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(image, text, signal, present, label), batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private, optimizer, loader = PrivacyEngine().make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0,
            max_grad_norm=1.0, poisson_sampling=False)
        batch = next(iter(loader))
        torch.nn.functional.cross_entropy(private(*batch[:4]), batch[4]).backward()
        optimizer.step()
    # the frozen encoders are not in the model: far fewer parameters than the trainable ones
    trainable = build_model(data=DATA, model=ModelConfig(fusion=fusion, embed_dim=8,
                                                         hidden_dim=16))
    projection = model.encoders["image"]
    assert sum(p.numel() for p in projection.parameters()) == (
        2 * FEATURE_SIZES["image"] + FEATURE_SIZES["image"] * 8 + 8)
    assert count_parameters(model) != count_parameters(trainable)
