"""What opening a link costs: `python -m bench.connect`.

The router's Event Hubs and Service Bus senders (routing/deliver/eventhubs.py, servicebus.py) made fresh,
each sending one small batch to the local AMQP 1.0 peer (tests/peers, in this process), so each round is
a cold connect (SASL, open, begin, the CBS token, the link's attach; for Event Hubs the partition-ids
request too) and a first send: what every cold start and every reconnect after a lost connection pays.
Once with the router's transports (routing/deliver/transports.py: the handshake's frames read as they
come) and once with the SDKs' own (a 50 ms sleep after each frame), in pairs, the order rotated each
round; the figure is the median and range of the per-round ratios.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from azure.eventhub._transport._pyamqp_transport import PyamqpTransport as EventHubsOwn
from azure.servicebus._transport._pyamqp_transport import PyamqpTransport as ServiceBusOwn

from routing.deliver import eventhubs, servicebus
from routing.deliver.envelope import build
from routing.deliver.senders import KeyGroup, RetryOptions
from routing.ingest.classify import classify
from routing.model import Event
from routing.routes.table import parse_routes
from tests.conftest import sensor_data, twin_event
from tests.peers import AmqpPeer

ROUTES = [
    {"name": "hub", "type": "EventHub", "eventTypes": ["SensorChange"], "connection": "AMQP", "path": "hub"},
    {"name": "queue", "type": "ServiceBus", "eventTypes": ["SensorChange"], "connection": "AMQP", "path": "queue"},
]


@contextmanager
def sdks_own() -> Iterator[None]:
    """Senders made inside use the SDKs' own transports."""
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr("routing.deliver.eventhubs.EventHubsTransport", EventHubsOwn)
        patched.setattr("routing.deliver.servicebus.ServiceBusTransport", ServiceBusOwn)
        yield


def one_send(kind: str, connection: str) -> Callable[[], float]:
    """A fresh sender of `kind` sending one message: the seconds it took."""
    endpoints = {e.name: e for e in parse_routes(ROUTES).endpoints}
    [event] = classify(twin_event(sensor_data("device-1", "21.5"), seq=1, properties={"Type": "SensorChange"}))
    assert isinstance(event, Event), event
    env = {"AMQP": connection}
    retry = RetryOptions(attempts=1, timeout=10.0)

    def run() -> float:
        endpoint = endpoints[kind]
        message = build(event, endpoint)
        cls = eventhubs.EventHubSender if kind == "hub" else servicebus.ServiceBusEndpointSender
        sender = cls(endpoint, retry=retry, env=env)
        started = time.perf_counter()
        report = sender.send(endpoint, [KeyGroup(key="device-1", messages=(message,))])
        took = time.perf_counter() - started
        sender.close()
        assert not report.failed, report.failed
        return took

    return run


def measure(rounds: int = 7) -> dict[str, dict[str, float]]:
    """Per kind: the SDKs' own and the router's median seconds, and the per-round ratios' median and range."""
    out: dict[str, dict[str, float]] = {}
    with AmqpPeer(entities={"hub", "queue"}) as peer:
        for kind in ("hub", "queue"):
            run = one_send(kind, peer.connection_string())
            run()  # imports and the peer's first connection out of the way
            own: list[float] = []
            router: list[float] = []
            for i in range(rounds):
                for side in ("own", "router") if i % 2 == 0 else ("router", "own"):
                    if side == "own":
                        with sdks_own():
                            own.append(run())
                    else:
                        router.append(run())
            ratios = sorted(r / o for r, o in zip(router, own, strict=True))
            out[kind] = {
                "sdk_s": statistics.median(own),
                "router_s": statistics.median(router),
                "ratio_median": statistics.median(ratios),
                "ratio_min": ratios[0],
                "ratio_max": ratios[-1],
            }
    return out


def summary(figures: dict[str, dict[str, float]]) -> list[str]:
    names = {"hub": "Event Hubs", "queue": "Service Bus"}
    return [
        f"cold connect and first send, {names[kind]}: {f['router_s'] * 1000:.0f} ms with the router's transport, "
        f"{f['sdk_s'] * 1000:.0f} ms with the SDK's; router / SDK {f['ratio_median']:.3f} "
        f"(range {f['ratio_min']:.3f}-{f['ratio_max']:.3f})"
        for kind, f in figures.items()
    ]


def main() -> None:
    for line in summary(measure()):
        print(line)


if __name__ == "__main__":
    main()
