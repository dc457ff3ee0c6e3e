"""Calibration of Opacus' per-sample-gradient mode: the reference gradient is the textbook one,
every accepted mode reproduces it, failing modes are rejected with their reason, the pick
prefers hooks unless another mode is clearly faster, and the memo survives corruption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from client.grad_sample import (
    MARGIN,
    MODES,
    Calibration,
    ModeMemo,
    calibrate,
    choose_mode,
    pick,
    private_gradient,
    reference_gradient,
    relative_error,
)
from common.config import DataConfig, ModelConfig
from common.models import build_model
from common.serialization import load_weights, model_weights

DATA = DataConfig()


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def test_reference_gradient_is_the_mean_of_clipped_per_sample_gradients() -> None:
    torch.manual_seed(0)
    model = Linear()
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    clip = 0.5
    expected_w, expected_b = torch.zeros(3, 5), torch.zeros(3)
    for i in range(6):  # cross-entropy's gradient: (softmax − one-hot) ⊗ x
        error = model(x[i:i + 1]).softmax(dim=1)[0].detach() - nn.functional.one_hot(y[i], 3)
        grad_w, grad_b = torch.outer(error, x[i]), error
        norm = torch.sqrt((grad_w**2).sum() + (grad_b**2).sum())
        factor = min(1.0, clip / float(norm))
        expected_w += factor * grad_w / 6
        expected_b += factor * grad_b / 6
    got = reference_gradient(model, [x, y], clip)
    assert relative_error(got, [expected_w, expected_b]) < 1e-6


def _builder(fusion: str):
    config = ModelConfig(fusion=fusion, embed_dim=8, hidden_dim=16)
    weights = model_weights(build_model(data=DATA, model=config, seed=0))

    def build() -> nn.Module:
        model = build_model(data=DATA, model=config)
        load_weights(model, weights)
        return model

    return build


def _batch(size: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    present = torch.ones(size, 3, dtype=torch.bool)
    present[::3, 1] = False
    return [torch.randn(size, 1, 32, 32, generator=generator),
            torch.randint(1, DATA.vocab_size, (size, DATA.max_text_tokens), generator=generator),
            torch.randn(size, 1, DATA.signal_length, generator=generator), present,
            torch.randint(0, DATA.num_classes, (size,), generator=generator)]


@pytest.mark.parametrize("fusion", ["concat", "attention", "late"])
def test_every_accepted_mode_reproduces_the_reference(fusion: str) -> None:
    build, batch = _builder(fusion), _batch(12)
    calibration = calibrate(build=build, batch=batch, max_grad_norm=0.1, steps=1)
    assert set(calibration.seconds) | set(calibration.rejected) == set(MODES)
    assert "hooks" in calibration.seconds and calibration.mode in calibration.seconds
    expected = reference_gradient(build().train(), batch, 0.1)
    for mode in calibration.seconds:
        got = private_gradient(build, mode, batch, 0.1)
        assert relative_error(got, expected) < 1e-3, mode


def test_a_mode_that_fails_is_rejected_with_its_reason() -> None:
    calibration = calibrate(build=_builder("late"), batch=_batch(8), max_grad_norm=1.0, steps=1)
    assert "ew" in calibration.rejected  # expanded weights cannot take the 1-D index lookup
    assert "RuntimeError" in calibration.rejected["ew"]


def test_pick_keeps_hooks_unless_another_mode_is_clearly_faster() -> None:
    assert pick({"hooks": 1.0, "ew": 1.0 - MARGIN / 2, "ghost": 3.0}) == "hooks"
    assert pick({"hooks": 1.0, "ew": 0.5, "ghost": 0.3}) == "ghost"
    assert pick({"ghost": 0.3, "functorch": 0.2}) == "functorch"  # hooks rejected
    assert pick({}) == "hooks"


def test_small_models_train_with_hooks_without_calibrating(tmp_path: Path) -> None:
    memo = ModeMemo(tmp_path / "memo.json")
    build = _builder("concat")
    assert choose_mode(requested="auto", model=build(), build=build, batch=lambda: _batch(8),
                       max_grad_norm=1.0, memo=memo, device=torch.device("cpu")) == "hooks"
    assert not memo.path.exists()


def test_choose_mode_uses_the_memo_and_leaves_the_rng_alone(tmp_path: Path,
                                                           monkeypatch) -> None:
    monkeypatch.setattr("client.grad_sample.CALIBRATE_MIN_PARAMETERS", 0)
    memo = ModeMemo(tmp_path / "memo.json")
    build, batch = _builder("concat"), _batch(8)
    model = build()
    assert choose_mode(requested="ghost", model=model, build=build, batch=lambda: batch,
                       max_grad_norm=1.0,
                       memo=memo, device=torch.device("cpu")) == "ghost"
    assert not memo.path.exists()  # an explicit mode is not calibrated
    torch.manual_seed(3)
    state = torch.get_rng_state()
    chosen = choose_mode(requested="auto", model=model, build=build, batch=lambda: batch,
                         max_grad_norm=1.0,
                         memo=memo, device=torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), state)

    def no_second_calibration(**_: object) -> Calibration:
        raise AssertionError("calibrated again")

    monkeypatch.setattr("client.grad_sample.calibrate", no_second_calibration)
    assert choose_mode(requested="auto", model=model, build=build, batch=lambda: batch,
                       max_grad_norm=1.0,
                       memo=memo, device=torch.device("cpu")) == chosen


def test_a_corrupt_memo_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "memo.json"
    path.write_text("{not json")
    assert ModeMemo(path).get("key") is None
    path.write_text(json.dumps({"key": {"mode": "something else"}}))
    assert ModeMemo(path).get("key") is None
    ModeMemo(path).put("key", Calibration("ew", {"ew": 0.1}))
    assert ModeMemo(path).get("key") == "ew"


def test_a_model_with_one_wide_tensor_is_calibrated_and_the_default_ones_are_not() -> None:
    """Hooks materialise batch × tensor per-sample values: a scattering model's wide
    projection (3,969 × 16 inputs) is calibrated although the model has under 200 k
    parameters; the default and pretrained-feature models still skip it."""
    from client.grad_sample import needs_calibration
    from common.config import load_config
    from common.models import build_model

    def model(**overrides: str):
        config = load_config(None, overrides)
        return build_model(data=config.data, model=config.model)

    assert needs_calibration(model(**{"model.encoders": "scattering",
                                      "data.image_size": "28"}))
    assert not needs_calibration(model())
    assert not needs_calibration(model(**{"model.encoders": "pretrained"}))
