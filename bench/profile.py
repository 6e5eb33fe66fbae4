"""`python -m bench.profile STAGE`: where a stage's time goes, with pyinstrument (requirements-dev.txt).

Stages: `core` (router core, collecting sender), `telemetry` (router core, telemetry alone), `sdk`
(router core + SDK batches, offline), `floor-b`, `e2e` (function_app into the local peers).
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Annotated

import typer
from pyinstrument import Profiler

from bench import corpus as corpora
from bench import e2e, stages
from bench.routes import route_table

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


class Stage(StrEnum):
    core = "core"
    telemetry = "telemetry"
    sdk = "sdk"
    floor_b = "floor-b"
    e2e = "e2e"


@app.command()
def main(  # noqa: PLR0917 - Typer reads each option from a parameter
    stage: Stage,
    events: Annotated[int, typer.Option(min=100)] = 5_000,
    devices: Annotated[int, typer.Option(min=1)] = 1_000,
    routes: Annotated[int, typer.Option(min=5)] = 5,
    batch_size: Annotated[int, typer.Option(min=1)] = 100,
    repeat: Annotated[int, typer.Option(min=1, help="Passes over the corpus while profiling.")] = 3,
    interval: Annotated[float, typer.Option(help="Sampling interval, seconds.")] = 0.0002,
    html: Annotated[str | None, typer.Option(help="Also write an HTML report here.")] = None,
) -> None:
    logging.getLogger().addHandler(logging.NullHandler())
    c = corpora.generate(events=events, devices=devices, batch_size=batch_size)
    if stage is Stage.telemetry:
        c = c.only("telemetry")
    table = route_table(routes)
    profiler = Profiler(interval=interval)
    if stage is Stage.e2e:
        with e2e.deployed(routes) as deployment:
            e2e.invoke(deployment, c.batches[:2])  # connections opened outside the profile
            batches = [b for _ in range(repeat) for b in c.batches]
            profiler.start()
            e2e.invoke(deployment, batches)
            profiler.stop()
    else:
        ingress = c.ingress_batches()
        if stage is Stage.floor_b:
            run = stages.floor_b(stages.planned(table, ingress))
        elif stage is Stage.sdk:
            # One lane: the SDK work stays on the profiled thread (pyinstrument samples only that one).
            run = stages.route_all(stages.sdk_router(table, lanes=1), ingress)
        else:
            run = stages.route_all(stages.core_router(table), ingress)
        run()
        profiler.start()
        for _ in range(repeat):
            run()
        profiler.stop()
    print(profiler.output_text(unicode=True, color=False, show_all=False))
    if html:
        with open(html, "w", encoding="utf-8") as handle:
            handle.write(profiler.output_html())


if __name__ == "__main__":
    app(prog_name="python -m bench.profile")
