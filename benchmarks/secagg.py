"""Secure-aggregation cost, side by side in one run: fedmm's SecAgg+ vs its plaintext round, and
Flower 1.42's legacy SecAgg+ workflow vs its legacy plaintext round, on the same clients.

Training is replaced by a fixed random update of P float32 parameters, so the figures are the
protocol's cost alone (keys, signed advertisements checked against the roster, shares, masks,
the consistency check, unmasking, messaging): five message exchanges per secure round, one per
plaintext round. The consistency check's exchange (every survivor signs the survivor set and
the model hash; every site verifies all signatures at unmasking) is timed on its own, so a
round without it costs the round minus that. Each setting (n clients of 20
simulated nodes on Flower's simulation engine, P parameters) runs 3 rounds per variant (2 with
--quick); reported are the median round time and the mean bytes each client sends (serialised
Flower messages) per round.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

NODES = 20
SHAPE_ROW = 1000  # parameters are laid out as (P / 1000, 1000)


def _settings(quick: bool) -> list[tuple[int, int]]:
    if quick:
        return [(5, 100_000), (10, 100_000)]
    return [(n, p) for p in (100_000, 1_000_000) for n in (5, 10, 20)]


class MeteredGrid:
    """A Grid that counts the serialised bytes of every reply, by sending node."""

    def __init__(self, grid: Any) -> None:
        self.grid = grid
        self.bytes_from: dict[int, int] = defaultdict(int)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def _count(self, replies) -> list:
        from flwr.common.serde import message_to_proto

        replies = list(replies)
        for reply in replies:
            self.bytes_from[reply.metadata.src_node_id] += message_to_proto(reply).ByteSize()
        return replies

    def send_and_receive(self, messages, *, timeout=None):  # Flower's legacy workflow
        return self._count(self.grid.send_and_receive(messages, timeout=timeout))

    def pull_messages(self, message_ids):  # fedmm's exchanges (server/replies.py)
        return self._count(self.grid.pull_messages(message_ids))

    def take_bytes(self) -> int:
        """Bytes all clients sent since the last call."""
        total = sum(self.bytes_from.values())
        self.bytes_from.clear()
        return total


def _weights(parameters: int) -> dict[str, np.ndarray]:
    return {"w": np.zeros((parameters // SHAPE_ROW, SHAPE_ROW), np.float32)}


def _fake_update(global_weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng()
    return {k: rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in global_weights.items()}


def fedmm_apps(settings: list[tuple[int, int]], rounds: int, results: list[dict]):
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp

    from client.local_round import LocalRound
    from client.replies import reply, status
    from client.secure_aggregation import register_secure_aggregation
    from client.site import Identities
    from common import wire
    from common.config import RunConfig
    from common.serialization import from_record, to_record
    from server.replies import send_and_parse
    from server.secure_aggregation import SecureAggregation

    def report() -> wire.TrainReport:
        return wire.TrainReport(num_examples=100, train_loss=None, steps=1, skipped_rows=0,
                                seconds=0.0)

    def train(msg: Message, site, config) -> LocalRound:
        return LocalRound(site.site_id, "ok", report=report(),
                          update=_fake_update(from_record(msg.content[wire.ARRAYS])))

    client_app = ClientApp()
    register_secure_aggregation(client_app, site_dirs=[f"/nonexistent/site-{i:02d}"
                                                       for i in range(NODES)], train=train,
                                identities=Identities.generate(NODES))

    @client_app.train()
    def plain(msg: Message, context: Context) -> Message:
        update = _fake_update(from_record(msg.content[wire.ARRAYS]))
        return reply(msg, status("site", "ok"), report(), **{wire.ARRAYS: to_record(update)})

    server_app = ServerApp()
    config = RunConfig()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        metered = MeteredGrid(grid)
        while len(grid.get_node_ids()) < NODES:
            time.sleep(0.5)
        nodes = sorted(grid.get_node_ids())
        site_of = {node: f"site-{i:02d}" for i, node in enumerate(nodes)}

        def exchange(chosen, kind, arrays, extra, round_id="0"):
            base = wire.RoundConfig(run_config=config.to_json(), round=1, run_id="bench")
            return send_and_parse(metered, chosen, kind, config=base, arrays=arrays,
                                  extra=extra, timeout=600, group_id=round_id, site_of=site_of)

        secure = SecureAggregation(settings=config.secure_aggregation, exchange=exchange)
        secure.train(round_id="warm-up", nodes=nodes[:5], weights=_weights(SHAPE_ROW))
        exchange(nodes[:5], "train", _weights(SHAPE_ROW), None)
        metered.take_bytes()
        for clients, parameters in settings:
            weights, chosen = _weights(parameters), nodes[:clients]
            times: dict[str, list[float]] = {"plain": [], "secure": []}
            sent: dict[str, list[float]] = {"plain": [], "secure": []}
            consistency: list[float] = []
            for r in range(rounds):
                for variant in ("plain", "secure"):
                    started = time.perf_counter()
                    if variant == "plain":
                        replies = exchange(chosen, "train", weights, None)
                        assert all(x.status == "ok" for x in replies), replies[0].reason
                    else:
                        outcome = secure.train(round_id=f"{clients}/{parameters}/{r}",
                                               nodes=chosen, weights=weights)
                        assert outcome.mean is not None, outcome.note
                        consistency.append(outcome.details["stage_seconds"]["consistency"])
                    times[variant].append(time.perf_counter() - started)
                    sent[variant].append(metered.take_bytes() / clients)
            for variant in ("plain", "secure"):
                results.append(_row("fedmm", variant, clients, parameters, times[variant],
                                    sent[variant]))
            results[-1]["consistency_seconds_median"] = round(statistics.median(consistency),
                                                              3)

    return server_app, client_app


def legacy_apps(settings: list[tuple[int, int]], rounds: int, secure: bool,
                results: list[dict]):
    from flwr.app import Context
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.serverapp import Grid, ServerApp

    from common.secagg.graph import default_degree
    from common.secagg.graph import threshold as threshold_for

    class FixedUpdateClient(NumPyClient):
        def fit(self, parameters, config):
            rng = np.random.default_rng()
            return ([p + rng.normal(0, 0.1, p.shape).astype(np.float32) for p in parameters],
                    100, {})

    client_app = ClientApp(client_fn=lambda context: FixedUpdateClient().to_client(),
                           mods=[secaggplus_mod] if secure else [])

    class TimedFedAvg(FedAvg):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            self.started: list[float] = []
            self.ended: list[float] = []

        def configure_fit(self, server_round, parameters, client_manager):
            self.started.append(time.perf_counter())
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):
            aggregated = super().aggregate_fit(server_round, results, failures)
            self.ended.append(time.perf_counter())
            return aggregated

    server_app = ServerApp()

    def run(grid, context, clients: int, parameters: int, rounds: int) -> TimedFedAvg:
        strategy = TimedFedAvg(fraction_fit=clients / NODES, min_fit_clients=clients,
                               min_available_clients=NODES, fraction_evaluate=0.0,
                               initial_parameters=ndarrays_to_parameters(
                                   list(_weights(parameters).values())))
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds),
                               strategy=strategy)
        degree = default_degree(clients)
        fit = (SecAggPlusWorkflow(num_shares=degree + 1,
                                  reconstruction_threshold=threshold_for(degree + 1, 0.5))
               if secure else None)
        DefaultWorkflow(fit_workflow=fit)(grid, legacy)
        return strategy

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        metered = MeteredGrid(grid)
        run(metered, context, 5, SHAPE_ROW, 1)  # warm-up
        metered.take_bytes()
        for clients, parameters in settings:
            strategy = run(metered, context, clients, parameters, rounds)
            times = [end - start for start, end in zip(strategy.started, strategy.ended,
                                                      strict=True)]
            per_round = metered.take_bytes() / rounds / clients
            results.append(_row("flower-legacy", "secure" if secure else "plain", clients,
                                parameters, times, [per_round] * rounds))

    return server_app, client_app


def _row(system: str, variant: str, clients: int, parameters: int, times: list[float],
         sent: list[float]) -> dict:
    return {"benchmark": "secure_aggregation", "system": system, "variant": variant,
            "clients": clients, "parameters": parameters,
            "round_seconds_median": round(statistics.median(times), 3),
            "bytes_per_client": int(statistics.mean(sent)), "rounds": len(times)}


def secure_aggregation_cost(*, quick: bool) -> list[dict]:
    import logging

    from flwr.simulation import run_simulation

    from simulations.dispatch import patch_message_dispatch
    from simulations.runner import prepare_environment

    settings, rounds = _settings(quick), (2 if quick else 3)
    results: list[dict] = []
    logging.getLogger("flwr").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="fm", dir="/tmp") as folder:
        prepare_environment(Path(folder))
        backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                   "init_args": {"include_dashboard": False, "logging_level": logging.ERROR,
                                 "log_to_driver": False}}
        builds = [lambda: fedmm_apps(settings, rounds, results),
                  lambda: legacy_apps(settings, rounds, False, results),
                  lambda: legacy_apps(settings, rounds, True, results)]
        patch_message_dispatch()  # as `fedmm simulate` runs (all three variants alike)
        for build in builds:
            before = len(results)
            server_app, client_app = build()
            run_simulation(server_app=server_app, client_app=client_app,
                           num_supernodes=NODES, backend_config=backend)
            for row in results[before:]:
                print(json.dumps(row), flush=True)
    return results


def markdown(rows: list[dict], command: str) -> list[str]:
    by_key = {(r["system"], r["variant"], r["clients"], r["parameters"]): r for r in rows}
    lines = [
        "## Secure aggregation cost", "",
        f"Command: `{command}`. {__doc__.split(chr(10) + chr(10))[1].strip()}", "",
        "| parameters | clients | plain s/round | SecAgg+ s/round | × plain | of which "
        "consistency check s | SecAgg+ without it (s) | bytes/client "
        "plain | bytes/client SecAgg+ | × plain | Flower legacy SecAgg+ s/round | × legacy "
        "plain | legacy bytes/client | fedmm ÷ legacy time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    settings = sorted({(r["parameters"], r["clients"]) for r in rows})
    lines[4:4] = _reading(by_key, settings)
    for parameters, clients in settings:
        plain, secure, legacy_plain, legacy = (
            by_key.get((system, variant, clients, parameters))
            for system, variant in (("fedmm", "plain"), ("fedmm", "secure"),
                                    ("flower-legacy", "plain"), ("flower-legacy", "secure")))
        if not (plain and secure and legacy_plain and legacy):
            continue
        lines.append(
            f"| {parameters:,} | {clients} | {plain['round_seconds_median']:.2f} | "
            f"{secure['round_seconds_median']:.2f} | "
            f"{secure['round_seconds_median'] / plain['round_seconds_median']:.2f} | "
            f"{secure.get('consistency_seconds_median', float('nan')):.2f} | "
            f"{secure['round_seconds_median'] - secure.get('consistency_seconds_median', 0):.2f}"
            " | "
            f"{plain['bytes_per_client']:,} | {secure['bytes_per_client']:,} | "
            f"{secure['bytes_per_client'] / plain['bytes_per_client']:.2f} | "
            f"{legacy['round_seconds_median']:.2f} | "
            f"{legacy['round_seconds_median'] / legacy_plain['round_seconds_median']:.2f} | "
            f"{legacy['bytes_per_client']:,} | "
            f"{secure['round_seconds_median'] / legacy['round_seconds_median']:.2f} |")
    return lines


def _reading(by_key: dict, settings: list[tuple[int, int]]) -> list[str]:
    """One paragraph of ranges over the settings measured."""
    ratios: dict[str, list[float]] = defaultdict(list)
    for parameters, clients in settings:
        rows = {(system, variant): by_key.get((system, variant, clients, parameters))
                for system in ("fedmm", "flower-legacy") for variant in ("plain", "secure")}
        if not all(rows.values()):
            continue
        plain, secure = rows["fedmm", "plain"], rows["fedmm", "secure"]
        legacy_plain, legacy = rows["flower-legacy", "plain"], rows["flower-legacy", "secure"]
        time = secure["round_seconds_median"]
        ratios["time"].append(time / plain["round_seconds_median"])
        ratios["bytes"].append(secure["bytes_per_client"] / plain["bytes_per_client"])
        ratios["check"].append(secure.get("consistency_seconds_median", 0.0) / time)
        ratios["legacy"].append(legacy["round_seconds_median"]
                                / legacy_plain["round_seconds_median"])
        ratios["versus"].append(time / legacy["round_seconds_median"])
    if not ratios:
        return []

    def span(key: str, digits: int = 2) -> str:
        return f"{min(ratios[key]):.{digits}f}–{max(ratios[key]):.{digits}f}"

    return [f"Reading it: fedmm's SecAgg+ round costs {span('time', 1)}× its plaintext round "
            "(five message exchanges instead of one, signatures checked against the roster, "
            "key agreement with every neighbour, one ChaCha20 mask per neighbour) and sends "
            f"{span('bytes')}× the plaintext bytes; the consistency check is "
            f"{min(ratios['check']):.0%}–{max(ratios['check']):.0%} of the secure round. "
            f"Flower 1.42's legacy SecAgg+ (no signatures, no consistency check, an "
            f"honest-but-curious server) costs {span('legacy', 1)}× its own plaintext round; "
            f"fedmm's secure round takes {span('versus')}× the legacy one.", ""]
