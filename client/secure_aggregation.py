"""The ClientApp's secure-aggregation stages: SecAgg+ with a consistency check
(:mod:`common.secagg`).

``train.secagg_setup`` → ``share_keys`` → ``masked_input`` → ``consistency`` → ``unmask``. The
protocol state (this round's private keys, seeds and the shares held for neighbours) lives in the
node's ``context.state`` between messages, which stays on the hospital's machine. The site signs
with its node key and checks its peers against its own roster and thresholds
(:meth:`client.site.Site.guards`). Local training runs inside the masked-input stage; its update
is clipped, weighted, quantised into Z/2^32 and masked before anything leaves — no stage ever
sends it unmasked. Stages other than masked input import neither torch nor Opacus.

Fail closed: a stage out of order, a tampered share, an unknown peer, a threshold below the
site's bound, or a server that shows different survivor sets or models to different sites gets
a ``failed`` reply with a ``secagg-*`` code.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from client.replies import EXPECTED_FAILURES, failure, label, read_request, reply, status
from client.site import Identities, Site
from common import wire
from common.config import RunConfig
from common.records import RecordError, from_records, to_records
from common.secagg import client as protocol
from common.secagg import messages
from common.secagg.encoding import RingEncoding
from common.secagg.messages import pack

if TYPE_CHECKING:
    from client.local_round import LocalRound

STATE_RECORD = "secagg-state"
T = TypeVar("T")


def _load_state(context: Context) -> protocol.State:
    if STATE_RECORD not in context.state:
        return {}
    return protocol.load_state(bytes(context.state[STATE_RECORD]["state"]))


def _save_state(context: Context, state: protocol.State) -> None:
    context.state[STATE_RECORD] = ConfigRecord({"state": protocol.dump_state(state)})


def _rounding_rng(site: Site, config: RunConfig, round_number: int) -> np.random.Generator:
    """Stochastic rounding needs no secrecy, only independence; it follows the site's seed
    (the run seed and round in simulation, so a resumed run rounds as the uninterrupted one)."""
    from client.local_round import site_seed

    return np.random.default_rng(site_seed(site, config, round_number, "rounding"))


def read_round(msg: Message) -> int:
    return from_records(wire.RoundConfig, msg.content).round


TrainFunction = Callable[[Message, Site, RunConfig], "LocalRound"]


def received_digest(model_digest: str, request: wire.RoundConfig) -> str:
    """What a site trains on in a secure round: the global model and the round's
    configuration. Its signature on the survivor set covers this digest, so a server that
    sends different models or settings to different sites is caught at unmasking."""
    return hashlib.sha256(pack(model_digest.encode(), request.run_config.encode(),
                               str(request.round).encode(), request.run_id.encode())
                          ).hexdigest()


def _read(kind: type[T], msg: Message) -> T:
    try:
        return from_records(kind, msg.content)
    except RecordError as error:
        raise protocol.SecAggError("secagg-malformed", f"malformed secure-aggregation message "
                                   f"({error!r}); round refused") from None


def register_secure_aggregation(app: ClientApp, *, site_dirs: Sequence[str] | None,
                                train: TrainFunction,
                                identities: Identities | None = None) -> None:
    """Add the five stage handlers to ``app``; ``train`` runs one local round (the masked
    input stage calls it and masks its update)."""
    def stage(name: str, step: Callable[[Message, Context, Site, RunConfig], Message]):
        def handler(msg: Message, context: Context) -> Message:
            try:
                site, _, config = read_request(msg, context, site_dirs, identities)
                guards = site.guards()
            except EXPECTED_FAILURES as error:
                return failure(msg, label(context, site_dirs), error)
            try:
                return step(msg, context, site, config, guards)
            except protocol.SecAggError as error:
                code, reason = error.code, str(error)
            except (ValueError, KeyError, TypeError, IndexError, struct.error) as error:
                code, reason = "secagg-malformed", (f"malformed secure-aggregation input "
                                                    f"({error!r}); round refused")
            _save_state(context, {"stage": "aborted"})
            return reply(msg, status(site.site_id, "failed", code=code, reason=reason[:500]))

        handler.__name__ = f"secagg_{name}"
        app.train(f"secagg_{name}")(handler)

    def protocol_step(step: Callable, request_kind: type) -> Callable:
        """A stage that is one step of the protocol state machine, ``step(state, request,
        site, guards)`` → ``(state, answer)``, with no local work."""
        def run(msg: Message, context: Context, site: Site, config: RunConfig,
                guards: protocol.Guards) -> Message:
            state, answer = step(_load_state(context), _read(request_kind, msg), site, guards)
            _save_state(context, state)
            return reply(msg, status(site.site_id, "ok"), answer)

        return run

    def setup(msg: Message, context: Context, site: Site, config: RunConfig,
              guards: protocol.Guards) -> Message:
        request = _read(messages.SetupRequest, msg)
        settings = config.secure_aggregation
        if (request.clip_range, request.max_weight) != (settings.clip_range,
                                                        settings.max_weight):
            raise protocol.SecAggError("secagg-bad-setup", "the round's encoding settings "
                                       "differ from the run configuration's; refused")
        assert site.signer is not None  # guards() checked it
        state, answer = protocol.setup(request, site.signer)
        _save_state(context, state)
        return reply(msg, status(site.site_id, "ok"), answer)

    def masked_input(msg: Message, context: Context, site: Site, config: RunConfig,
                     guards: protocol.Guards) -> Message:
        from common.serialization import digest, flatten, from_record

        arrays = msg.content.array_records.get(wire.ARRAYS)
        state = protocol.open_shares(
            _load_state(context), _read(messages.MaskedInputRequest, msg),
            "" if arrays is None else received_digest(digest(from_record(arrays)),
                                                      _read(wire.RoundConfig, msg)))
        if arrays is None:
            raise protocol.SecAggError("secagg-malformed", "the masked-input stage came "
                                       "without the global model; round refused")
        _save_state(context, state)
        result = train(msg, site, config)
        if result.update is None:
            return result.reply(msg)
        encoding = RingEncoding(clip_range=state["clip_range"], max_weight=state["max_weight"],
                                max_clients=state["clients"])
        assert result.report is not None
        encoded = encoding.encode(flatten(result.update), result.report.num_examples,
                                  _rounding_rng(site, config, read_round(msg)))
        state, masked = protocol.mask(state, encoded.vector)
        sha256 = hashlib.sha256(masked.tobytes()).hexdigest()
        result.mark_sent(sha256)
        _save_state(context, state)
        return result.reply(msg, sha256=sha256, secagg_clipped=encoded.clipped,
                            **to_records(messages.MaskedInputReply(vector=masked)))

    for name, step in (
            ("setup", setup),
            ("share_keys", protocol_step(
                lambda state, request, _, guards: protocol.share_keys(state, request, guards),
                messages.ShareKeysRequest)),
            ("masked_input", masked_input),
            ("consistency", protocol_step(
                lambda state, request, site, _: protocol.consistency(state, request,
                                                                     site.signer),
                messages.ConsistencyRequest)),
            ("unmask", protocol_step(lambda state, request, *_: protocol.unmask(state, request),
                                     messages.UnmaskRequest))):
        stage(name, step)


