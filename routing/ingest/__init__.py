"""What arrives and what it is: the Functions batch and events-file line adapters, and classification
into telemetry or a Digital Twins event. Pure values; no I/O.
"""
