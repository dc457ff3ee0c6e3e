"""The round loop: select sites, send the global model, average their updates, step, evaluate.

It talks to sites only through a Flower ``Grid`` and knows nothing of checkpoints, logs or
displays (those are :mod:`server.callbacks`). A round whose usable updates are fewer than
``min_sites`` keeps the previous global model and says why in its record.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from flwr.serverapp import Grid

from common import wire
from common.config import RunConfig
from common.serialization import Weights, all_finite, check_compatible
from server.callbacks import Callback
from server.checkpoint import latest_checkpoint
from server.optimizers import build_server_optimizer, weighted_mean
from server.replies import SiteReply, TrainOutcome, send_and_parse
from server.run_folder import RoundRecord, RunFolder, SiteRound
from server.run_state import RunState, SitePrivacy
from server.secure_aggregation import SecureAggregation

log = logging.getLogger("fedmm.server")
MINIMUM_WAIT_S = 600.0  # deployments: how much longer to wait for min_sites after the grace
ASK_SILENT_AGAIN_S = 10.0  # a connected site that did not say what it holds is asked again


class FederationError(RuntimeError):
    """The run cannot go on (no sites, nothing to resume from); message is for a person."""


class Federation:
    def __init__(
        self,
        *,
        grid: Grid,
        config: RunConfig,
        run_dir: Path,
        callbacks: Sequence[Callback],
        resume: bool = False,
        test_dir: Path | None = None,
        wait_for_sites_s: float = 120.0,
        expected_sites: int | None = None,
    ) -> None:
        self.grid, self.config, self.folder = grid, config, RunFolder(Path(run_dir))
        self.callbacks, self.resume, self.test_dir = list(callbacks), resume, test_dir
        self.wait_for_sites_s = wait_for_sites_s
        self.expected_sites = expected_sites
        self.site_of: dict[int, str] = {}
        self.not_evaluating: dict[str, str] = {}  # site → why it sends no validation metrics

    # -- setup -----------------------------------------------------------------------------
    def _initial_state(self) -> RunState:
        from common.models import build_model
        from common.serialization import model_weights

        config = self.config
        model = build_model(data=config.data, model=config.model, seed=config.training.seed)
        weights = model_weights(model)
        optimizer = build_server_optimizer(config.training)
        state = RunState(config=config, folder=self.folder, run_id=uuid.uuid4().hex[:12],
                         weights=weights, optimizer=optimizer)
        if not self.resume:
            return state
        checkpoint = latest_checkpoint(self.folder.root)
        if checkpoint is None:
            raise FederationError(f"{self.folder.root}: no checkpoint to resume from; run "
                                  "without --resume to start afresh")
        check_compatible(weights, checkpoint.weights, what="checkpoint")
        saved_config = checkpoint.state.get("config")
        if saved_config and RunConfig.model_validate(saved_config) != config:
            raise FederationError(f"{self.folder.root}: the checkpoint was made with another "
                                  "configuration; resume with the same config")
        optimizer.load_state(checkpoint.optimizer_state)
        state.weights, state.round = checkpoint.weights, checkpoint.round
        state.run_id = checkpoint.state.get("run_id", state.run_id)
        state.sites = {name: SitePrivacy(**info)
                       for name, info in checkpoint.state.get("sites", {}).items()}
        log.info("resuming after round %d", checkpoint.round)
        return state

    def _wait_for_nodes(self, started: float) -> list[int]:
        """Wait, counting from ``started``, up to ``wait_for_sites_s`` for ``expected_sites``
        (default ``min_sites``) to connect; then go on with what is there once it is at least
        ``min_sites``, waiting for that up to ``MINIMUM_WAIT_S`` longer."""
        needed, hoped = self.config.training.min_sites, self._hoped_sites()
        while True:
            nodes = sorted(self.grid.get_node_ids())
            waited = time.monotonic() - started
            if len(nodes) >= hoped or (waited > self.wait_for_sites_s and len(nodes) >= needed):
                return nodes
            if waited > self._wait_limit_s():
                raise FederationError(f"only {len(nodes)} sites connected after "
                                      f"{waited:.0f} s; need {needed} (training.min_sites)")
            time.sleep(1.0)

    def _hoped_sites(self) -> int:
        needed = self.config.training.min_sites
        return max(needed, self.expected_sites or needed)

    def _wait_limit_s(self) -> float:
        return self.wait_for_sites_s + (MINIMUM_WAIT_S if self.expected_sites else 0.0)

    def _exchange(self, nodes: Sequence[int], kind: str, state: RunState,
                  arrays: Weights | None,
                  extra: Mapping[int, Mapping[str, Any]] | None = None, *,
                  round_number: int | None = None) -> list[SiteReply]:
        """One message kind to ``nodes``; it belongs to the round in progress unless
        ``round_number`` says otherwise (the evaluation of a finished round)."""
        number = state.round + 1 if round_number is None else round_number
        request = wire.RoundConfig(run_config=self.config.to_json(), round=number,
                                   run_id=state.run_id)
        return send_and_parse(self.grid, nodes, kind, config=request, arrays=arrays,
                              extra=extra, timeout=self.config.training.round_timeout_s,
                              group_id=str(number), site_of=self.site_of)

    def _discover_sites(self, state: RunState) -> list[int]:
        """Ask every connected site what it holds. A site that did not answer (Flower saw its
        SuperNode, which then went: on a loaded machine a hospital's first connection can
        time out after the server accepted it, and that hospital joins again) is asked again
        once it is back, within the wait for sites; a site that refused is not."""
        started = time.monotonic()
        usable: list[int] = []
        refused: set[int] = set()
        silent: set[int] = set()
        while True:
            connected = self._wait_for_nodes(started)
            ask = [n for n in connected if n not in usable and n not in refused]
            for reply in self._exchange(ask, wire.SITE_INFO, state, None):
                if reply.status == "ok":
                    self.site_of[reply.node] = reply.site_id
                    usable.append(reply.node)
                    silent.discard(reply.node)
                    info = reply.read(wire.SiteInfo)
                    if info is not None and info.bad_rows:
                        log.warning("site %s: %d bad rows skipped", reply.site_id,
                                    info.bad_rows)
                elif reply.code in (wire.NO_REPLY, wire.CLIENT_ERROR):
                    silent.add(reply.node)
                    log.warning("site %s did not answer (%s); asking again when it is back",
                                reply.site_id, reply.reason)
                else:
                    refused.add(reply.node)
                    log.warning("site %s unusable: %s", reply.site_id, reply.reason)
            enough = len(usable) >= self.config.training.min_sites
            if enough and len(usable) + len(refused) >= self._hoped_sites():
                break
            # Wait for the silent ones to come back: while the grace lasts when there are
            # enough already, up to the whole wait for sites when there are not.
            until = started + (self.wait_for_sites_s if enough else self._wait_limit_s())
            if not self._node_returns(set(usable) | refused, silent, until=until):
                if enough:
                    break
                raise FederationError(f"only {len(usable)} usable sites; need "
                                      f"{self.config.training.min_sites}")
        return sorted(usable, key=lambda n: self.site_of[n])

    def _node_returns(self, heard: set[int], silent: set[int], *, until: float) -> bool:
        """True once Flower sees a node online that was never asked, or, after
        :data:`ASK_SILENT_AGAIN_S`, one that did not answer; False at ``until``."""
        again = time.monotonic() + ASK_SILENT_AGAIN_S
        while time.monotonic() < until:
            online = set(self.grid.get_node_ids()) - heard
            if online - silent or (online and time.monotonic() >= again):
                return True
            time.sleep(1.0)
        return False

    def _sites_per_round(self) -> int:
        """At least ``min_sites``; at least 2 under secure aggregation (a sum of one site is
        that site's update)."""
        minimum = self.config.training.min_sites
        return max(minimum, 2) if self.config.secure_aggregation.enabled else minimum

    def _prefer_online(self, nodes: list[int]) -> list[int]:
        """The nodes Flower still sees online (a crashed site drops out after its heartbeat
        lapses, instead of costing every later round a timeout); all of them when too few are."""
        online = set(self.grid.get_node_ids())
        reachable = [n for n in nodes if n in online]
        return reachable if len(reachable) >= self._sites_per_round() else nodes

    def _select(self, nodes: list[int], round_number: int) -> list[int]:
        training = self.config.training
        count = max(self._sites_per_round(), math.ceil(training.fraction_train * len(nodes)))
        if count >= len(nodes):
            return nodes
        rng = np.random.default_rng([training.seed, round_number])
        chosen = rng.choice(len(nodes), size=count, replace=False)
        return [nodes[i] for i in sorted(chosen)]

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> RunState:
        state = self._initial_state()
        for callback in self.callbacks:
            callback.on_run_start(state)
        nodes = self._discover_sites(state)
        test_data = self._load_test_data()
        refusing: set[str] = set()  # sites whose policy refuses this run for good
        while state.round < self.config.training.rounds:
            started = time.perf_counter()
            active = [n for n in nodes if self.site_of[n] not in refusing]
            needed = self._sites_per_round()
            if len(active) < needed:
                state.stop_reason = (f"only {len(active)} sites can train (the others are "
                                     "out of privacy budget or their policies refuse this "
                                     f"run); need {needed} (training.min_sites; secure "
                                     "aggregation needs 2)")
                log.warning(state.stop_reason)
                break
            selected = self._select(self._prefer_online(active), state.round + 1)
            outcome = self._collect_mean_update(state, selected)
            record = self._record_round(state, outcome)
            self._step_global_model(state, outcome, record)
            refusing |= {r.site_id for r in outcome.replies
                         if r.status == "refused" and r.code in wire.LASTING_REFUSALS}
            state.round += 1
            training = self.config.training
            if state.round % training.evaluate_every == 0 or state.round == training.rounds:
                reachable = [r.node for r in outcome.replies if r.code != wire.NO_REPLY]
                record = record.model_copy(update=self._evaluate(state, reachable, test_data))
            record.seconds = round(time.perf_counter() - started, 3)
            state.rounds.append(record)
            for callback in self.callbacks:
                callback.on_round_end(state, record)
        for callback in self.callbacks:
            callback.on_run_end(state)
        return state

    def _collect_mean_update(self, state: RunState, selected: list[int]) -> TrainOutcome:
        """Send the round to ``selected``; their replies and the mean of the usable updates
        (the securely aggregated one, or the screened plaintext ones averaged)."""
        if self.config.secure_aggregation.enabled:
            def exchange(nodes, kind, arrays, extra):
                return self._exchange(nodes, kind, state, arrays, extra)

            secure = SecureAggregation(settings=self.config.secure_aggregation,
                                       exchange=exchange)
            return secure.train(round_id=f"{state.run_id}/{state.round + 1}", nodes=selected,
                                weights=state.weights)
        usable: list[tuple[Weights, float]] = []
        replies = []
        for reply in self._exchange(selected, wire.TRAIN, state, state.weights):
            if reply.status == "ok" and reply.update is not None:
                reply = screen_update(reply, state.weights,
                                      declared_range=self.config.secure_aggregation.clip_range)
                report = reply.read(wire.TrainReport)
                if reply.status == "ok" and reply.update is not None and report is not None:
                    usable.append((reply.update, float(report.num_examples)))
            replies.append(reply)
        mean = weighted_mean(usable) if usable else None
        return TrainOutcome(replies, mean, len(usable))

    def _site_round(self, state: RunState, reply: SiteReply) -> SiteRound:
        """What the round record keeps of one reply; updates the site's privacy figures."""
        entry = SiteRound(status=reply.status, code=reply.code or None,
                          reason=reply.reason or None, out_of_range=reply.out_of_range)
        report, spend = reply.read(wire.TrainReport), reply.read(wire.Spend)
        if report is not None:
            entry = entry.model_copy(update={
                "epsilon": report.epsilon, "train_loss": report.train_loss,
                "num_examples": report.num_examples, "seconds": report.seconds,
                "noise_multiplier": report.noise_multiplier,
                "skipped_rows": report.skipped_rows, "secagg_clipped": report.secagg_clipped,
                "grad_sample_mode": report.grad_sample_mode or None})
            if report.history is not None:
                state.sites[reply.site_id] = SitePrivacy(
                    epsilon=report.epsilon or 0.0, history=report.history,
                    max_grad_norm=report.max_grad_norm or self.config.privacy.max_grad_norm)
        elif spend is not None:
            entry = entry.model_copy(update={"epsilon": spend.epsilon})
            state.sites[reply.site_id] = SitePrivacy(
                epsilon=spend.epsilon, history=spend.history,
                max_grad_norm=self.config.privacy.max_grad_norm)
        if reply.status != "ok":
            log.warning("site %s %s (%s): %s", reply.site_id, reply.status, reply.code,
                        reply.reason)
        return entry

    def _record_round(self, state: RunState, outcome: TrainOutcome) -> RoundRecord:
        sites = {reply.site_id: self._site_round(state, reply) for reply in outcome.replies}
        epsilons = [s.epsilon for s in state.sites.values()]
        return RoundRecord(round=state.round + 1, sites=sites, sites_ok=outcome.contributors,
                           secure_aggregation=outcome.details or None,
                           epsilon_max=max(epsilons) if epsilons else None)

    def _step_global_model(self, state: RunState, outcome: TrainOutcome,
                           record: RoundRecord) -> None:
        """Apply the server optimiser to the mean update, or keep the model and say why."""
        minimum = self.config.training.min_sites
        if outcome.mean is None or outcome.contributors < minimum:
            record.note = outcome.note or (f"{outcome.contributors} usable updates < "
                                           f"min_sites {minimum}; global model kept")
            log.warning("round %d: %s", record.round, record.note)
            return
        before = state.optimizer.state()
        new_weights = state.optimizer.step(state.weights, outcome.mean)
        if not all_finite(new_weights) or not all_finite(state.optimizer.released(new_weights)):
            state.optimizer.load_state(before)
            record.note = "aggregate not finite; global model kept"
            log.error("round %d: %s", record.round, record.note)
            return
        state.weights = new_weights
        record.aggregated = True

    def _load_test_data(self):
        if self.test_dir is None:
            return None
        from common.model_inputs import load_model_inputs

        return load_model_inputs(self.test_dir, self.config, check_usable=False)

    def _evaluate(self, state: RunState, nodes: list[int], test_data) -> dict[str, Any]:
        """The sites' validation sums added up (Σ correct / Σ rows, Σ loss / Σ rows; DP-noised
        where the sites release them so), and the server's own test folder. A site that
        refuses to release metrics is not asked again this run."""
        result: dict[str, Any] = {}
        asked = [n for n in nodes if self.site_of.get(n) not in self.not_evaluating]
        released = state.released_weights
        replies = self._exchange(asked, wire.EVALUATE, state, released,
                                 round_number=state.round) if asked else []
        reports = []
        for reply in replies:
            report = reply.read(wire.EvaluationReport) if reply.status == "ok" else None
            if report is not None:
                reports.append(report)
                if report.history is not None and report.epsilon is not None:
                    known = state.sites.get(reply.site_id)
                    state.sites[reply.site_id] = SitePrivacy(
                        epsilon=report.epsilon, history=report.history,
                        max_grad_norm=known.max_grad_norm if known is not None
                        else self.config.privacy.max_grad_norm)
            elif reply.status == "refused" and reply.code != wire.BUDGET_EXHAUSTED:
                self.not_evaluating[reply.site_id] = f"{reply.code}: {reply.reason}"
                log.info("site %s sends no validation metrics (%s): %s", reply.site_id,
                         reply.code, reply.reason)
        result.update(combine_evaluations(reports))
        if test_data is not None and len(test_data):
            from common.evaluation import evaluate_weights, held_out_figures

            result.update(held_out_figures(evaluate_weights(self.config, released, test_data)))
        return result


def combine_evaluations(reports: Sequence[wire.EvaluationReport]) -> dict[str, Any]:
    """Validation loss and accuracy over all reporting sites, from their sums. Noisy sums
    (DP releases) can stray outside the possible range; accuracy is clamped to [0, 1], and no
    figure is given when the noisy row count is not positive."""
    if not reports:
        return {}
    count = sum(r.count for r in reports)
    result: dict[str, Any] = {"evaluated_sites": len(reports),
                              "evaluation_private": any(r.private for r in reports)}
    if count <= 0:
        return result
    result["accuracy"] = min(1.0, max(0.0, sum(r.correct for r in reports) / count))
    result["loss"] = max(0.0, sum(r.loss_sum for r in reports) / count)
    return result


def screen_update(reply: SiteReply, reference: Weights, *, declared_range: float) -> SiteReply:
    """A plaintext update the mean may use: same names and shapes as the global model
    (``bad-shape``) and finite (``non-finite``), else rejected alone. Elements beyond
    ±``declared_range`` (the range secure aggregation would clip to) are counted as
    ``out_of_range`` and logged; the update is still used, exactly as sent."""
    update = reply.update or {}
    try:
        check_compatible(reference, update, what=f"site {reply.site_id}")
    except ValueError as error:
        return reply.failed(wire.BAD_SHAPE, str(error), status="rejected")
    if not all_finite(update):
        return reply.failed(wire.NON_FINITE, f"site {reply.site_id} sent NaN or infinite "
                            "values", status="rejected")
    outside = sum(int(np.count_nonzero(np.abs(v) > declared_range))
                  for v in update.values())
    if outside:
        log.warning("site %s: %d update elements outside ±%g", reply.site_id, outside,
                    declared_range)
    return replace(reply, out_of_range=outside)
