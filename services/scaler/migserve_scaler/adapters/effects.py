"""Runs a decision's effects in order: plan writes (compare-and-set), commands, events."""

from __future__ import annotations

import logging
from collections.abc import Callable

from migserve_shared import subjects
from migserve_shared.bus import Buckets, EventPublisher, send_command
from migserve_shared.messages import ScaleFailed, encode, event_kind
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError

from migserve_scaler.adapters.view_store import ViewStore
from migserve_scaler.core import Outcome, PublishEvent, PutPlan, SendCommand
from migserve_scaler.leader import NotLeaderError
from migserve_scaler.metrics import ScalerMetrics

log = logging.getLogger(__name__)


class EffectRunner:
    def __init__(
        self,
        *,
        js: JetStreamContext,
        buckets: Buckets,
        publisher: EventPublisher,
        store: ViewStore,
        metrics: ScalerMetrics,
        may_act: Callable[[], bool] = lambda: True,
    ) -> None:
        self._js = js
        self._may_act = may_act
        self._buckets = buckets
        self._publisher = publisher
        self._store = store
        self._metrics = metrics

    async def run(self, outcome: Outcome) -> bool:
        """Run every effect; False when a plan write lost a compare-and-set race
        (the effects after it are skipped and the plan is read again).

        ``may_act`` is asked before every effect; NotLeaderError when it says no
        (this replica's lease ended: the effects left are the next leader's).
        """
        for effect in outcome.effects:
            if not self._may_act():
                raise NotLeaderError(f"not the leader any more; dropping {effect!r:.120}")
            if isinstance(effect, PutPlan):
                if not await self._put_plan(effect):
                    return False
            elif isinstance(effect, SendCommand):
                await send_command(self._js, effect.node, effect.command)
                self._metrics.commands.labels(effect.command.__struct_config__.tag).inc()
                log.info("sent %s to %s", effect.command.command_id, effect.node)
            elif isinstance(effect, PublishEvent):
                await self._publisher.publish(effect.event)
                if isinstance(effect.event, ScaleFailed):
                    self._metrics.scale_failed.labels(effect.event.code.value).inc()
                log.info("published %s", event_kind(effect.event))
        return True

    async def _put_plan(self, effect: PutPlan) -> bool:
        plan = effect.plan
        key = subjects.model_key(plan.model_id)
        data = encode(plan)
        try:
            if effect.expected_revision is None:
                revision = await self._buckets.plans.create(key, data)
            else:
                revision = await self._buckets.plans.update(
                    key, data, last=effect.expected_revision
                )
        except KeyWrongLastSequenceError:
            self._metrics.conflicts.inc()
            log.info("plan for %s changed under us; reading it again", plan.model_id)
            await self._store.refresh(subjects.KV_PLANS, key)
            return False
        self._store.wrote_plan(plan, revision)
        self._metrics.plans.labels(plan.action, plan.status).inc()
        return True
