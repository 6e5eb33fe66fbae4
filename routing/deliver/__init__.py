"""Delivery: the envelope each endpoint receives, and the senders that put it on the wire (Event Hubs,
Service Bus, Event Grid, files) with packing, retries, failover and stop-the-line per key.
"""
