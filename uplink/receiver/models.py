"""The receiver's wire contract as typed models (docs/uplink.md); the OpenAPI document is generated from them.

Items are checked strictly (no coercion: ``"1"`` is not a revision, ``true`` is not an integer)
and every number that reaches SQLite fits its 64-bit INTEGER. Fields the models do not name are
kept as sent: a revision or a summary is stored whole.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MAX_INTEGER = 2**63 - 1  # SQLite's INTEGER; a larger number could not be stored or compared
MIN_INTEGER = -(2**63)
MAX_ID = 1024  # characters of an order id, device or gateway name
MAX_REPORT_TEXT = 4096  # characters of a report's detail kept; longer text is cut, not refused


def _cut(limit: int):
    return AfterValidator(lambda text: text if text is None or len(text) <= limit else text[:limit])


Identifier = Annotated[str, Field(min_length=1, max_length=MAX_ID)]


class _Item(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    def body(self) -> dict[str, Any]:
        """The item as sent: its named fields and every other field, unchanged."""
        named = {name: getattr(self, name) for name in type(self).model_fields}
        return {**named, **(self.__pydantic_extra__ or {})}


class Revision(_Item):
    """One revision of a work order, as the gateway's outbox holds it (state, severity, device,
    rule, grid, evidence... are stored as sent)."""

    order_id: Identifier = Field(description="The order's id, unique across gateways.")
    revision: int = Field(ge=1, le=MAX_INTEGER, description="1 for a new order, +1 for each change.")


class TelemetrySummary(_Item):
    """One device's metrics over one telemetry interval (last, min, max, count per metric)."""

    device: Identifier
    interval: int = Field(ge=MIN_INTEGER, le=MAX_INTEGER, description="The interval's number: its start time // its length.")


class Report(_Item):
    """What a gateway did with a change from the platform: a rule file applied or refused, an
    order decision refused (unknown order, illegal transition, malformed change)."""

    seq: int = Field(ge=1, le=MAX_INTEGER, description="The gateway's number for this report; acknowledged by it.")
    type: Annotated[str, _cut(64)] = Field(description="rules, order or unknown.")
    status: Annotated[str, _cut(64)] = Field(description="applied or refused.")
    reason: Annotated[str, _cut(256)] = Field(
        "", description="Why it was refused: rule_file_invalid, unknown_order, illegal_transition, malformed_change...")
    detail: Annotated[str, _cut(MAX_REPORT_TEXT)] = Field(
        "", description=f"Text for a person (for rule files, file:line: message); cut to {MAX_REPORT_TEXT} characters.")
    file: Annotated[str | None, _cut(MAX_ID)] = Field(None, description="The rule file's name (rules only).")
    at: Annotated[str | None, _cut(64)] = Field(None, description="When the gateway decided (ISO 8601).")


class GatewayHealth(BaseModel):
    """A gateway's health summary, sent with its uplink now and then (docs/uplink.md, "Health summary").

    Version 1 names the fields below; a platform keeps the summary whole, so a newer gateway's
    extra fields are kept too. ``at`` is the gateway's clock when it made the summary: the
    platform's clock minus it, at arrival, is the gateway's clock skew (plus the link's delay).
    """

    model_config = ConfigDict(strict=True, extra="allow")

    version: int = Field(ge=1, le=MAX_INTEGER, description="The summary's contract version (1).")
    at: Annotated[str, Field(max_length=64)] = Field(description="The gateway's clock, ISO 8601.")

    def body(self) -> dict[str, Any]:
        return {"version": self.version, "at": self.at, **(self.__pydantic_extra__ or {})}


class UplinkBatch(BaseModel):
    """A gateway's batch: ``POST /api/v1/uplink``. Unknown top-level keys are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")

    gateway: Identifier = Field(description="The gateway's id ([gateway] id).")
    revisions: list[Revision]
    telemetry: list[TelemetrySummary] = Field(default_factory=list)
    reports: list[Report] = Field(default_factory=list, description="Optional: what the gateway did with changes.")
    health: GatewayHealth | None = Field(None, description="Optional: the gateway's health summary (contract version 1).")


class UplinkAnswer(BaseModel):
    acknowledged: list[tuple[str, int]] = Field(description="(order id, revision) of every revision kept, duplicates included.")
    telemetry_acknowledged: list[tuple[str, int]] = Field(description="(device, interval) of every summary kept.")
    reports_acknowledged: list[int] = Field(description="seq of every report kept; its presence says the platform takes reports.")
    duplicates: int = Field(description="Items of this batch the platform already had (dropped, acknowledged all the same).")


class Decision(BaseModel):
    """Optional body of an action on an order."""

    model_config = ConfigDict(strict=True, extra="ignore")

    note: Annotated[str, Field(max_length=4096)] = ""


class OrderChange(BaseModel):
    seq: int
    type: Literal["order"] = "order"
    order_id: str
    state: Literal["accepted", "dispatched", "resolved", "closed", "rejected"]
    note: str = ""
    at: float


class DecisionRecorded(OrderChange):
    gateway: str = Field(description="The gateway the order came from, which fetches the decision.")


class RulesChange(BaseModel):
    seq: int
    type: Literal["rules"] = "rules"
    file: str
    content: str
    at: float


class ChangesAnswer(BaseModel):
    changes: list[OrderChange | RulesChange] = Field(description="Oldest first, at most 500; ask again with the last seq.")


class RuleFileQueued(BaseModel):
    seq: int
    file: str


class OrdersAnswer(BaseModel):
    orders: list[dict[str, Any]] = Field(description="Latest revision of each order, with platform_state.")


class RevisionsAnswer(BaseModel):
    revisions: list[dict[str, Any]]


class TelemetryAnswer(BaseModel):
    telemetry: list[dict[str, Any]]


class ReportsAnswer(BaseModel):
    reports: list[dict[str, Any]] = Field(description="The gateway's reports, oldest first (the newest `limit`).")


class Stats(BaseModel):
    orders: int
    revisions: int
    duplicates: int
    telemetry: int
    reports: int
    refused: dict[str, int] = Field(description="Requests and MQTT messages refused since the receiver started, by reason.")


class Quality(BaseModel):
    """The re-check figures of one set of orders (all, one grid, one team or one category)."""

    resolutions: int = Field(description="Times the platform resolved these orders.")
    checked: int = Field(description="Re-checks the gateways finished: verified + not_fixed + unverified.")
    verified: int = Field(description="Resolutions the sensors confirmed.")
    not_fixed: int = Field(description="Resolutions the sensors found not fixed (the order went back to dispatched).")
    unverified: int = Field(description="Resolutions no report could confirm (a silent device).")
    verified_share: float | None = Field(description="verified / checked; null with nothing checked.")
    not_fixed_share: float | None
    unverified_share: float | None
    repeats_marked: int = Field(description="Orders a gateway marked repeat_of an earlier verified fix.")
    repeat_rate_7d: float | None = Field(description="Verified fixes whose problem (rule, device) came back within 7 days.")
    repeat_rate_30d: float | None = Field(description="The same within 30 days.")


class QualityAnswer(BaseModel):
    overall: Quality
    by_grid: dict[str, Quality]
    by_team: dict[str, Quality]
    by_category: dict[str, Quality]


class Problem(BaseModel):
    error: str = Field(description="What was wrong and what to send instead.")
    detail: list[dict[str, Any]] | None = Field(None, description="Each invalid field (loc, msg), when the body was checked.")
