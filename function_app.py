"""The door: two Event Hub triggers (IoT Hub telemetry, Digital Twins events) handing their batches
to the router. Routing lives in `routing/`; see docs/ARCHITECTURE.md.
"""

import gc
import typing
from collections.abc import Callable
from typing import Any

import azure.functions as func

from routing.app import redeliver_parked, route_batch
from routing.ingest import host_times

# The worker decodes each batch with the library's converter before the function runs; its enqueued times
# cost 124-153 us an event, more than the router. Read as fast as the rest (routing/ingest/host_times.py).
host_times.install()

app = func.FunctionApp()

# EVENTS_ANNOTATION: the trigger parameters are `typing.List[func.EventHubEvent]`, not the builtin
# `list[...]`: the Python worker indexes an annotation only if it is a class or a `typing` generic, so
# `list[func.EventHubEvent]` fails indexing ("binding events has invalid non-type annotation") and the
# host starts with no functions. ruff's UP006 would rewrite it, hence the noqa. tests/worker.py re-states
# the worker's checks and the `functions` test fixture runs them.


def retry_until_handled() -> Callable[..., Any]:
    """Retry a raised batch with backoff, without limit.

    The trigger checkpoints a batch even when the function raises, so without a retry policy a raised
    batch would be lost. The router raises only when it cannot keep a dead letter; poison messages are
    dead-lettered, never raised, so the retries cannot be spent on them.
    """
    return app.retry(
        strategy="exponential_backoff",
        max_retry_count="-1",
        minimum_interval="00:00:02",
        maximum_interval="00:05:00",
    )


@app.function_name("route_telemetry")
@retry_until_handled()
@app.event_hub_message_trigger(
    arg_name="events",
    connection="TELEMETRY_HUB_CONNECTION",
    event_hub_name="%TELEMETRY_HUB_NAME%",
    consumer_group="%TELEMETRY_HUB_CONSUMER_GROUP%",
    cardinality="many",
    data_type="binary",
)
def route_telemetry(events: typing.List[func.EventHubEvent]) -> None:  # noqa: UP006 - see EVENTS_ANNOTATION
    route_batch(events, source="telemetry")


@app.function_name("route_twins")
@retry_until_handled()
@app.event_hub_message_trigger(
    arg_name="events",
    connection="TWINS_HUB_CONNECTION",
    event_hub_name="%TWINS_HUB_NAME%",
    consumer_group="%TWINS_HUB_CONSUMER_GROUP%",
    cardinality="many",
    data_type="binary",
)
def route_twins(events: typing.List[func.EventHubEvent]) -> None:  # noqa: UP006 - see EVENTS_ANNOTATION
    route_batch(events, source="twins")


# Parked messages (an endpoint's outage) sent again in order per key, with backoff per endpoint. The host
# runs a timer function on one instance at a time; a run that overlaps the next is skipped by the host.
@app.function_name("redeliver_parked")
@app.timer_trigger(arg_name="timer", schedule="*/10 * * * * *", run_on_startup=False, use_monitor=False)
def redeliver(timer: func.TimerRequest) -> None:
    redeliver_parked()


# What is alive now (the worker, the SDKs and this app, all imported: tens of thousands of objects that live
# as long as the process) is moved out of the cycle collector's reach, so that its full passes, which a
# batch's allocations set off every few batches, no longer walk it: 0.39 -> 0.04 s of 5.7 s in the
# benchmark's end-to-end passes (docs/PERFORMANCE.md). It stays last: everything imported above is frozen.
gc.freeze()
