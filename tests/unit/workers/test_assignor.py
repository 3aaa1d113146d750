"""Cooperative rebalancing: why a member must claim only the partitions it owns.

kafka-python's own cooperative-sticky leader (``assign``) runs here on hand-made JoinGroup
subscriptions, no broker: a partition that changes owner is withheld until its claimed owner
revokes it, so a claim by a member that owns nothing strands it.
"""

from __future__ import annotations

import itertools
from collections import namedtuple

import pytest
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.protocol.consumer.metadata import ConsumerProtocolAssignment, ConsumerProtocolSubscription
from kafka.structs import TopicPartition

from workers.kafka_compat import OwnedPartitionsCooperativeStickyAssignor

TOPIC = "tweets"
PARTITIONS = range(4)
_Member = namedtuple("_Member", "member_id group_instance_id metadata")


class _Cluster:
    def topics(self) -> set[str]:
        return {TOPIC}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(PARTITIONS)

    available_partitions_for_topic = partitions_for_topic


class _Subscription:
    """What the consumer owns right now (``SubscriptionState.assigned_partitions``)."""

    def __init__(self, partitions: set[int]) -> None:
        self.partitions = partitions

    def assigned_partitions(self) -> set[TopicPartition]:
        return {TopicPartition(TOPIC, p) for p in self.partitions}


def _claims(member: CooperativeStickyAssignor) -> set[int]:
    return {p for tp in member.metadata({TOPIC}).owned_partitions for p in tp.partitions}


def _lead(claims: dict[str, set[int]]) -> dict[str, set[int]]:
    """The leader's first-round assignment for members claiming ``claims``."""
    subscription = ConsumerProtocolSubscription.TopicPartition
    members = [
        _Member(
            name,
            None,
            ConsumerProtocolSubscription(
                version=1,
                topics=[TOPIC],
                user_data=b"",
                owned_partitions=[subscription(topic=TOPIC, partitions=sorted(owned))] if owned else [],
            ),
        )
        for name, owned in claims.items()
    ]
    result = CooperativeStickyAssignor().assign(_Cluster(), members)
    return {name: {tp.partition for tp in result[name].partitions()} for name in claims}


def _after_assignment(member: CooperativeStickyAssignor, partitions: set[int]) -> None:
    member.on_assignment(ConsumerProtocolAssignment(1, [(TOPIC, sorted(partitions))], b""), 3)


def test_upstream_claims_the_partitions_it_lost():
    upstream = CooperativeStickyAssignor()
    _after_assignment(upstream, set(PARTITIONS))
    # Evicted: the consumer owns nothing now, but its next JoinGroup still claims everything.
    assert _claims(upstream) == set(PARTITIONS)


def test_a_stale_claim_leaves_partitions_assigned_to_nobody_with_nobody_to_revoke_them():
    # "b" lost all four and claims them anyway; "a" owns nothing. The leader keeps two on "b"
    # and withholds two from "a" until "b" revokes them, which "b", owning nothing, never does.
    first_round = _lead({"a": set(), "b": set(PARTITIONS)})
    assigned = first_round["a"] | first_round["b"]
    assert assigned != set(PARTITIONS)
    stranded = set(PARTITIONS) - assigned
    owned_now = {"a": set(), "b": set()}
    revoked = {p for name, owned in owned_now.items() for p in owned - first_round[name]}
    assert stranded and not stranded & revoked


def test_ours_claims_what_the_consumer_owns_now():
    ours = OwnedPartitionsCooperativeStickyAssignor()
    _after_assignment(ours, set(PARTITIONS))
    ours.subscription = _Subscription(set(PARTITIONS))
    assert _claims(ours) == set(PARTITIONS)
    ours.subscription.partitions = set()  # lost: evicted from the group
    assert _claims(ours) == set()
    ours.subscription.partitions = {1, 3}
    assert _claims(ours) == {1, 3}
    assert ours.name == CooperativeStickyAssignor.name  # interoperates with upstream members


@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")])
def test_with_truthful_claims_every_withheld_partition_has_an_owner_that_revokes_it(order):
    subsets = [set(c) for r in range(len(PARTITIONS) + 1) for c in itertools.combinations(PARTITIONS, r)]
    for a, b in itertools.product(subsets, subsets):
        if a & b:
            continue  # a partition has one owner at a time
        owned = {"a": a, "b": b}
        first_round = _lead({name: owned[name] for name in order})
        withheld = set(PARTITIONS) - first_round["a"] - first_round["b"]
        revoked = (a - first_round["a"]) | (b - first_round["b"])
        # Revoking requests the follow-up rebalance that hands the withheld partitions over.
        assert withheld <= revoked, (owned, first_round)
