"""The router's errors: one small tree, each carrying what a person needs to fix the cause.

Nothing here touches I/O; modules raise these and the CLI and the functions report them.
"""

from __future__ import annotations

from dataclasses import dataclass


class RoutingError(Exception):
    """Base of every error the router raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a route table: where it is and what to do about it."""

    where: str  # e.g. "endpoint 'hub-a' (#2), field 'eventTypes'"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class RouteTableError(RoutingError):
    """A route table (file, table rows or CLI input) that cannot be used, with every problem found."""

    def __init__(self, problems: list[Problem], source: str = "route table") -> None:
        self.problems = problems
        self.source = source
        if len(problems) == 1 and problems[0].where == source:
            super().__init__(str(problems[0]))
            return
        lines = "\n".join(f"  - {p}" for p in problems)
        count = len(problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(f"{source} has {count} {noun}:\n{lines}")


class IngressFormatError(RoutingError):
    """An ingress line (local runner input) that is not in the documented format."""


class DeliveryError(RoutingError):
    """An endpoint could not take a message; `permanent` says whether retrying can help."""

    def __init__(self, endpoint: str, reason: str, *, permanent: bool) -> None:
        self.endpoint = endpoint
        self.reason = reason
        self.permanent = permanent
        super().__init__(f"endpoint '{endpoint}': {reason}")


class SettingsError(RoutingError):
    """An app setting the router needs is missing or malformed; names the setting."""
