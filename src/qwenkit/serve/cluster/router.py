"""A Ray Serve request router that sends a request to the replica holding its longest prefix."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from ray.serve.request_router import FIFOMixin, PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica


def request_keys(pending: PendingRequest | None) -> list[str]:
    """The prefix keys the ingress attached to a forwarded request (none for other calls)."""
    if pending is None or not pending.args or not isinstance(pending.args[0], dict):
        return []
    keys = pending.args[0].get("prefix_keys", [])
    return keys if isinstance(keys, list) else []


def request_replica(pending: PendingRequest | None) -> str | None:
    """The replica a forwarded request must go to (the one that stored the response it names), if any."""
    if pending is None or not pending.args or not isinstance(pending.args[0], dict):
        return None
    replica = pending.args[0].get("replica")
    return replica if isinstance(replica, str) else None


class PrefixAwareRouter(FIFOMixin, RequestRouter):
    """The replica holding the stored response a request names (if alive); else the longest
    matching prefix; else the least loaded replica (then the one holding the fewest prefixes, so
    new conversations spread), also whenever the prefix holder is more than `max_imbalance`
    requests busier than the least loaded one.

    The prefix table lives in this router (one per handle, i.e. per ingress replica): it learns
    where it sent each key, forgets the oldest beyond `max_keys`, and drops a dead replica's keys.
    Load is this router's own count of requests in flight per replica.
    """

    def initialize_state(self, max_imbalance: int = 4, max_keys: int = 100_000, **_: Any) -> None:
        self.max_imbalance = max_imbalance
        self.max_keys = max_keys
        self.owner: OrderedDict[str, str] = OrderedDict()  # prefix key -> replica unique id
        self.in_flight: dict[str, int] = {}
        self.held: dict[str, int] = {}  # replica unique id -> prefix keys it owns
        self.request_replica: dict[str, str] = {}

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        load = {r.replica_id.unique_id: self.in_flight.get(r.replica_id.unique_id, 0) for r in candidate_replicas}
        by_load = sorted(
            candidate_replicas,
            key=lambda r: (load[r.replica_id.unique_id], self.held.get(r.replica_id.unique_id, 0)),
        )
        least = load[by_load[0].replica_id.unique_id]
        needed = next(
            (r for r in candidate_replicas if r.replica_id.unique_id == request_replica(pending_request)), None
        )
        if needed is not None:
            return [[needed], [r for r in by_load if r is not needed]]
        holder = self._holder(request_keys(pending_request), candidate_replicas)
        if holder is not None and load[holder.replica_id.unique_id] - least <= self.max_imbalance:
            return [[holder], [r for r in by_load if r is not holder]]
        return [[r] for r in by_load]

    def _holder(self, keys: list[str], candidates: list[RunningReplica]) -> RunningReplica | None:
        """The candidate that holds the longest of the request's prefixes, if any does."""
        alive = {r.replica_id.unique_id: r for r in candidates}
        for key in reversed(keys):
            owner = self.owner.get(key)
            if owner in alive:
                return alive[owner]
        return None

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult) -> None:
        rid = replica_id.unique_id
        self.in_flight[rid] = self.in_flight.get(rid, 0) + 1
        self.request_replica[pending_request.metadata.internal_request_id] = rid
        for key in request_keys(pending_request):
            previous = self.owner.get(key)
            if previous != rid:
                if previous is not None:
                    self.held[previous] -= 1
                self.held[rid] = self.held.get(rid, 0) + 1
            self.owner[key] = rid
            self.owner.move_to_end(key)
        while len(self.owner) > self.max_keys:
            _, evicted = self.owner.popitem(last=False)
            self.held[evicted] -= 1

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        rid = self.request_replica.pop(internal_request_id, replica_id.unique_id)
        self.in_flight[rid] = max(0, self.in_flight.get(rid, 0) - 1)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        rid = replica_id.unique_id
        self.in_flight.pop(rid, None)
        self.held.pop(rid, None)
        for key in [k for k, owner in self.owner.items() if owner == rid]:
            del self.owner[key]
