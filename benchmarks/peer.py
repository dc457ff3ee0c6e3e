"""fedmm's client round vs the way Flower's official Opacus example trains, side by side.

The peer (Flower's ``examples/opacus``): each round it loads the global weights through a
state_dict of NumPy arrays, builds a fresh optimiser and a fresh ``PrivacyEngine``, calls
``make_private`` (default mode, hooks), trains one epoch, asks that engine for ε, and returns the
state_dict as NumPy arrays. fedmm: :func:`client.local_round.train_round` as a simulated site
runs it (ledger reservation, σ memo, calibrated mode, update, ε from the whole ledger).

Same model, same demo site, same σ, C, batch size, optimiser and step size; rounds alternate
(peer, fedmm, peer, ...) so machine load hits both alike. Also reported: the ε each one reports
after the last round. The peer's engine is new every round, so its ε covers only that round.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from benchmarks.report import machine

NOISE = 1.0


def _peer_round(config, weights_arrays: list, data) -> tuple[list, float]:
    """One round the example's way; returns the new weights (NumPy list) and the printed ε."""
    import torch
    from opacus import PrivacyEngine

    from common.evaluation import dataset_of
    from common.models import build_model

    model = build_model(data=config.data, model=config.model)
    keys = list(model.state_dict().keys())
    model.load_state_dict({k: torch.tensor(v) for k, v in zip(keys, weights_arrays,
                                                                strict=True)})
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.training.learning_rate,
                                momentum=config.training.momentum)
    loader = torch.utils.data.DataLoader(dataset_of(data),
                                         batch_size=config.training.batch_size)
    engine = PrivacyEngine(secure_mode=False)
    model, optimizer, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=NOISE,
        max_grad_norm=config.privacy.max_grad_norm)
    criterion = torch.nn.CrossEntropyLoss()
    for image, tokens, signal, present, label in loader:
        optimizer.zero_grad()
        if len(label) == 0:
            continue
        criterion(model(image, tokens, signal, present), label).backward()
        optimizer.step()
    epsilon = engine.get_epsilon(config.privacy.delta)
    return [v.cpu().numpy() for v in model._module.state_dict().values()], epsilon


def peer_comparison(*, quick: bool) -> list[dict]:
    import torch

    from client.local_round import RoundInputs, train_round
    from client.policy import load_policy
    from client.site import Site
    from client.validation import site_split
    from common.config import RunConfig
    from common.model_inputs import load_model_inputs
    from common.models import build_model
    from common.serialization import model_weights
    from common.site_state import SiteState
    from simulations.demo_data import generate_demo
    from simulations.scenarios import Scenario

    torch.set_num_threads(1)
    rounds = 3 if quick else 8
    config = RunConfig.model_validate({"privacy": {"noise_multiplier": NOISE},
                                       "training": {"rounds": rounds}})
    times: dict[str, list[float]] = {"peer": [], "fedmm": []}
    epsilon: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = Path(folder)
        generate_demo(root, sites=1, samples_per_site=400, seed=0, scenario=Scenario.IID,
                      test_samples=0)
        site_dir = root / "site-01"
        policy = site_dir / "policy.toml"  # a budget that lets every round run
        policy.write_text(policy.read_text().replace("max_epsilon = 10.0", "max_epsilon = 1e4"))
        site = Site("site-01", site_dir, SiteState.of(site_dir), load_policy(policy), True)
        train, _ = site_split(site, config, load_model_inputs(site_dir, config, site.state))
        initial = model_weights(build_model(data=config.data, model=config.model, seed=0))
        peer_weights = list(initial.values())
        fedmm_weights = dict(initial)
        for number in range(1, rounds + 1):
            started = time.perf_counter()
            peer_weights, epsilon["peer"] = _peer_round(config, peer_weights, train)
            times["peer"].append(time.perf_counter() - started)
            started = time.perf_counter()
            result = train_round(RoundInputs(number, "peer-benchmark", fedmm_weights),
                                 site, config, threads=1)
            times["fedmm"].append(time.perf_counter() - started)
            if result.status != "ok":
                raise RuntimeError(f"fedmm's round {number} failed: {result.reason}")
            fedmm_weights = {k: fedmm_weights[k] + result.update[k] for k in fedmm_weights}
            assert result.report is not None and result.report.epsilon is not None
            epsilon["fedmm"] = result.report.epsilon
    rows = []
    for name in ("peer", "fedmm"):
        after_first = times[name][1:]
        row: dict[str, Any] = {
            "benchmark": "peer", "client": name, "rounds": rounds,
            "first_round_seconds": round(times[name][0], 3),
            "round_seconds_median": round(statistics.median(after_first), 3),
            "epsilon_reported": round(epsilon[name], 3)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def markdown(rows: list[dict], command: str) -> list[str]:
    peer, fedmm = rows
    ratio = fedmm["round_seconds_median"] / peer["round_seconds_median"]
    return [
        "## fedmm's client vs Flower's Opacus example, per round", "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}; 1 torch thread", "",
        "The same default model and demo site (320 training patients), σ = 1.0, C = 1, "
        "batch 128, SGD with momentum, one epoch a round; rounds alternate between the two. "
        "The peer trains the way Flower's `examples/opacus` client does (fresh optimiser and "
        "`PrivacyEngine` each round, `make_private` in its default mode, weights through a "
        "NumPy state_dict); fedmm runs `client.local_round.train_round` as a simulated site "
        "does (ledger, σ memo, calibrated per-sample-gradient mode, update, ε from the ledger).",
        "",
        "| client | first round (s) | s / round after the first | ε reported after "
        f"{peer['rounds']} rounds |",
        "|---|---|---|---|",
        *(f"| {'Flower Opacus example' if r['client'] == 'peer' else 'fedmm'} | "
          f"{r['first_round_seconds']:.2f} | {r['round_seconds_median']:.3f} | "
          f"{r['epsilon_reported']:.2f} |" for r in rows),
        "",
        f"fedmm's round takes {ratio:.2f}× the peer's. fedmm's first round includes the "
        "one-off calibration of the per-sample-gradient mode. The ε the peer prints is that "
        "of its last round alone (a new `PrivacyEngine` each round forgets the earlier ones); "
        f"fedmm's {fedmm['epsilon_reported']:.2f} is the accountant's ε for all "
        f"{fedmm['rounds']} rounds of steps actually taken."]
