"""The dry run: where each event of an ingress message would go, and why, decided as the pipeline
decides it (the same matching, one message per destination, the same envelopes, so the same order keys,
enrichments and message ids). A use case beside `pipeline` and `replay`; `routes test` shows it.
"""

from __future__ import annotations

from typing import Any

from routing.deliver import envelope
from routing.ingest.classify import Result
from routing.model import Event, EventType
from routing.routes.filters import EventBody
from routing.routes.table import RouteTable
from routing.routes.templates import enrich


def explain(results: list[Result], table: RouteTable) -> list[dict[str, Any]]:
    """Where each event of an ingress message would go, and why (what the pipeline would decide): for
    every endpoint, whether it takes the type, is enabled, and whether its filter matched."""
    out: list[dict[str, Any]] = []
    for result in results:
        if not isinstance(result, Event):
            out.append({"index": result.index, "result": "rejected", "code": result.code, "reason": result.reason})
            continue
        event_type: EventType = result.event_type
        takes = event_type.value
        body = EventBody(result)  # shared, as in the pipeline: parsed at most once, only if a filter asks
        sent: list[dict[str, Any]] = []
        not_sent: list[dict[str, Any]] = []
        other_types: list[dict[str, Any]] = []
        filtered_out: list[str] = []
        fallbacks = [e for e in table.endpoints if e.fallback]
        for e in table.endpoints:
            if e.fallback:
                continue  # decided once the others are: it takes only what none of them took
            item: dict[str, Any] = {"name": e.name, "type": e.type.value}
            if e.filter is not None:
                item["filter"] = e.filter.text
            if event_type not in e.event_types:
                types = ", ".join(t.value for t in e.event_types)
                other_types.append({**item, "why": f"does not take {takes} (takes {types})"})
            elif not e.enabled:
                not_sent.append({**item, "why": f"takes {takes} but is disabled"})
            elif e.filter is None:
                sent.append({**item, "why": f"takes {takes}"})
            elif e.filter.matches(result, body):
                sent.append({**item, "filterMatched": True, "why": f"takes {takes} and its filter matched"})
            else:
                filtered_out.append(e.name)
                not_sent.append({**item, "filterMatched": False, "why": f"takes {takes} but its filter did not match"})
        for e in fallbacks:
            item = {"name": e.name, "type": e.type.value, "fallback": True}
            if event_type not in e.event_types:
                types = ", ".join(t.value for t in e.event_types)
                other_types.append({**item, "why": f"the fallback, but it does not take {takes} (takes {types})"})
            elif not e.enabled:
                not_sent.append({**item, "why": f"the fallback, for {takes} too, but disabled"})
            elif sent:
                not_sent.append({**item, "why": "the fallback: other endpoints took the event"})
            else:
                sent.append({**item, "why": f"the fallback: no other enabled endpoint took this {takes}"})
        decision: dict[str, Any] = {
            "index": result.index,
            "result": "routed" if sent else "unrouted",
            "eventType": takes,
            "orderKey": result.order_key,
            "messageId": result.message_id,
            "endpoints": sent,
            "notSent": not_sent,
            "otherTypes": other_types,
        }
        _once(sent, not_sent, table, result, body)
        if not sent:
            decision["reason"] = (
                f"the filters of {', '.join(repr(n) for n in filtered_out)} did not match"
                if filtered_out
                else f"no enabled endpoint takes {takes}"
            )
        out.append(decision)
    return out


def _once(
    sent: list[dict[str, Any]], not_sent: list[dict[str, Any]], table: RouteTable, event: Event, body: EventBody
) -> None:
    """As the pipeline does: one message per destination; each message's order key and enrichments."""
    first_at: dict[str, str] = {}
    for item in list(sent):
        endpoint = table.get(item["name"])
        assert endpoint is not None
        destination = table.same_as.get(endpoint.name, endpoint.name)
        first = first_at.setdefault(destination, endpoint.name)
        if first != endpoint.name:
            sent.remove(item)
            not_sent.append({**item, "why": f"{item['why']}, but '{first}' is the same destination: sent there once"})
            continue
        message = envelope.build(event, endpoint, event_body=body)
        item["orderKey"] = message.order_key
        item["messageId"] = message.message_id  # what this endpoint is sent: the event's id in its shape
        if message.message_id != event.message_id:
            item["why"] += f"; message id {message.message_id} (the event's id in this endpoint's shape)"
        if endpoint.enrichments:
            added = enrich({}, endpoint.enrichments, event, body)
            item["enrichments"] = added
            item["why"] += "; adds " + (", ".join(f"{k}={v!r}" for k, v in added.items()) or "nothing (undefined)")
        if endpoint.order_key is not None:
            item["why"] += f"; order key {message.order_key!r} from {endpoint.order_key.raw!r}"
