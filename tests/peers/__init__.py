"""Local stand-ins for the Azure services the router sends to, for tests.

`amqp.AmqpPeer` is an AMQP 1.0 peer that the unmodified Event Hubs and Service Bus SDKs send to;
`eventgrid.EventGridReceiver` is an HTTP endpoint that the Event Grid publisher client posts to.
Both run in a background thread on 127.0.0.1, record what arrives, and can inject faults.
"""

from .amqp import AmqpPeer, PeerStats, ReceivedMessage
from .eventgrid import EventGridReceiver, ReceivedRequest

__all__ = [
    "AmqpPeer",
    "EventGridReceiver",
    "PeerStats",
    "ReceivedMessage",
    "ReceivedRequest",
]
