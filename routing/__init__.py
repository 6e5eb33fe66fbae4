"""Event routing for IoT and Digital Twins solutions on Azure Functions.

Start at `routing.pipeline.Router`; `docs/ARCHITECTURE.md` maps the modules.
"""
