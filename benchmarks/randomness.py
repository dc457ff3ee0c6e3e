"""The cost of drawing DP randomness from ChaCha20 instead of torch's generator, per epoch.

An epoch of DP-SGD at a site with N training rows and batch size B draws, at each of its
⌈N/B⌉ steps, N uniforms (Poisson sampling) and P Gaussians (noise for every parameter). Both
are timed side by side in one run: :class:`common.randomness.RandomStream` (ChaCha20 from
``cryptography``, four Box–Muller draws per Gaussian) and ``torch.rand`` / ``torch.randn``
(Mersenne Twister, what Opacus uses with ``secure_mode`` off), for the default model. One real
DP-SGD epoch of the demo hospital (``client.training.train_local``, which draws from the stream)
puts the figure in proportion.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.report import machine

SITES = (320, 11_800)  # a demo hospital's training rows; a larger one


def _timed(draw, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        draw()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _epoch_seconds(config) -> float:
    import torch

    from client.training import plan_round, train_local
    from common.model_inputs import load_model_inputs
    from common.models import build_model
    from common.randomness import RandomStream
    from common.serialization import model_weights
    from simulations.demo_data import generate_demo
    from simulations.scenarios import Scenario

    with tempfile.TemporaryDirectory(prefix="fm", dir="/tmp") as folder:
        generate_demo(Path(folder), sites=1, samples_per_site=400, seed=0,
                      scenario=Scenario.IID, test_samples=0)
        data = load_model_inputs(Path(folder) / "site-01", config).subset(np.arange(320))
        weights = model_weights(build_model(data=config.data, model=config.model, seed=0))
        plan = plan_round(len(data), config)
        torch.manual_seed(0)
        train_local(config=config, global_weights=weights, data=data, plan=plan, history=[],
                    stream=RandomStream.from_seed(0))  # warm-up: calibration, imports
        started = time.perf_counter()
        train_local(config=config, global_weights=weights, data=data, plan=plan, history=[],
                    stream=RandomStream.from_seed(1))
        return time.perf_counter() - started


def randomness_cost(*, quick: bool) -> list[dict]:
    import torch

    from common.config import RunConfig
    from common.models import build_model, count_parameters
    from common.randomness import RandomStream

    config = RunConfig.model_validate({"privacy": {"noise_multiplier": 1.0,
                                                   "grad_sample_mode": "hooks"}})
    parameters = count_parameters(build_model(data=config.data, model=config.model))
    batch = config.training.batch_size
    stream = RandomStream.fresh()
    rows = []
    for rows_at_site in SITES:
        steps = math.ceil(rows_at_site / batch)

        def chacha(n=rows_at_site, steps=steps) -> None:
            for _ in range(steps):
                stream.uniform(n)
                stream.normal(parameters)

        def mersenne(n=rows_at_site, steps=steps) -> None:
            for _ in range(steps):
                torch.rand(n)
                torch.randn(parameters)

        repeats = 1 if quick else 3
        chacha_s, torch_s = _timed(chacha, repeats), _timed(mersenne, repeats)
        row = {"benchmark": "randomness", "training_rows": rows_at_site, "steps": steps,
               "parameters": parameters, "chacha_seconds": round(chacha_s, 4),
               "torch_seconds": round(torch_s, 4), "ratio": round(chacha_s / torch_s, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    epoch = _epoch_seconds(config)
    rows[0]["dp_sgd_epoch_seconds"] = round(epoch, 2)
    print(json.dumps({"benchmark": "randomness", "dp_sgd_epoch_seconds": round(epoch, 2)}),
          flush=True)
    return rows


def markdown(rows: list[dict], command: str) -> list[str]:
    lines = ["## DP randomness: ChaCha20 vs torch's generator", "",
             f"Command: `{command}`  ", f"Machine: {machine()}", "",
             "Per epoch, at each of its ⌈N/B⌉ steps, a site draws N uniforms (Poisson "
             "sampling) and P Gaussians (DP-SGD noise for every parameter). Timed side by side "
             "in one run: fedmm's ChaCha20 stream (`common/randomness.py`, four Box–Muller "
             "draws per Gaussian) and `torch.rand` / `torch.randn` (a Mersenne Twister, what "
             "Opacus draws from with `secure_mode` off), for the default model.", "",
             "| training rows | steps / epoch | parameters | ChaCha20 s / epoch | "
             "torch s / epoch | × torch |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['training_rows']:,} | {r['steps']} | {r['parameters']:,} | "
                     f"{r['chacha_seconds']} | {r['torch_seconds']} | {r['ratio']} |")
    epoch = rows[0].get("dp_sgd_epoch_seconds")
    if epoch:
        share = rows[0]["chacha_seconds"] / epoch
        lines += ["", f"A real DP-SGD epoch of the demo hospital ({rows[0]['training_rows']} "
                  f"rows, default model) takes {epoch} s here, so its ChaCha20 draws are "
                  f"{share:.1%} of it."]
    return lines
