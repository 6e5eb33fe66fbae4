"""The partition an Event Hubs key maps to: the one the service picks for a keyed send, so that batches
addressed to partitions put each key where a keyed send would."""

from __future__ import annotations

from azure.eventhub._buffered_producer._partition_resolver import PartitionResolver, generate_hash_code

from routing.deliver.eventhubs import partition_for

# Partition keys and the hash Event Hubs gives them: the test vectors of the .NET SDK's PartitionResolver,
# a port of the service's code (Azure.Messaging.EventHubs PartitionResolverTests.PartitionHashTestCases).
SERVICE_HASHES = {
    "7": -15263,
    "131": 30562,
    "7149583486996073602": 12977,
    "FWfAT": -22341,
    "sOdeEAsyQoEuEFPGerWO": -6503,
    "!c*_!I@1^c": 15372,
    "p4*!jioeO/z-!-;w:dh": -3104,
    "$0cb": 26269,
    "-4189260826195535198": 453,
}
IDS = [str(i) for i in range(32)]


def test_a_key_maps_to_the_services_hash_with_the_remainder_keeping_its_sign() -> None:
    for key, service_hash in SERVICE_HASHES.items():
        # C#: Math.Abs(hash % count), where the remainder of a negative hash is negative.
        assert partition_for(key, IDS) == str(abs(service_hash) % 32), key
    # Python's % would give another partition for a negative hash, as the SDK's own resolver does.
    assert PartitionResolver(IDS).get_partition_id_by_partition_key("7") != partition_for("7", IDS)


def test_a_non_ascii_key_is_hashed_as_its_utf8_bytes() -> None:
    key = "capteur-température-ü"
    as_bytes = abs(generate_hash_code(key.encode("utf-8").decode("latin-1"))) % 32
    assert partition_for(key, IDS) == str(as_bytes)
    # The SDK's resolver hashes characters instead: another partition for this key.
    assert PartitionResolver(IDS).get_partition_id_by_partition_key(key) != str(as_bytes)
