"""``edge rules test --plot``: for each device with alerts, what a person needs to judge them.

One panel per metric that the rules which fired on the device read, so battery volts, gas,
tilt and the `open` flag each get their own y axis and unit instead of being squashed next
to water centimetres. On each panel: the readings (dark blue steps), each threshold a firing
rule compares that metric with (a dotted line labelled "rule: metric > 15"), and the spans in
which each version of the rules had the problem open, shaded (red for RULES, blue hatched
for --against). Times are UTC, and the axis says so. At most ``MAX_PANELS`` panels.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from pathlib import Path

from edge.engine import expr
from edge.engine.replay import Message, ReplayResult
from edge.ingest.decode import derive
from edge.kinds import KIND_METRICS
from edge.registry import Registry

MAX_PANELS = 24
VERSION_STYLES = ({"color": "tab:red", "alpha": 0.18}, {"color": "tab:blue", "alpha": 0.12, "hatch": "//"})
READING_COLOUR = "#1f3a5f"  # the readings: never the orders' red
THRESHOLD_COLOUR = "#666666"
FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def thresholds(node: expr.Node) -> list[tuple[str, str, float]]:
    """(metric, operator, constant) for every plain comparison of a metric with a number, metric first."""
    found: list[tuple[str, str, float]] = []
    if isinstance(node, expr.Binary):
        if node.op in FLIP:
            if isinstance(node.left, expr.Metric) and isinstance(node.right, expr.Number):
                found.append((node.left.name, node.op, node.right.value))
            elif isinstance(node.right, expr.Metric) and isinstance(node.left, expr.Number):
                found.append((node.right.name, FLIP[node.op], node.left.value))
        found += thresholds(node.left) + thresholds(node.right)
    elif isinstance(node, expr.Unary):
        found += thresholds(node.operand)
    return found


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc)


def panels_of(results: list[tuple[str, ReplayResult]], registry: Registry) -> list[tuple[str, str]]:
    """(device, metric) to draw: for each device with alerts, each numeric metric its firing rules read."""
    panels: list[tuple[str, str]] = []
    for _, result in results:
        fired = {(e.device, e.rule) for e in result.episodes}
        for episode in result.episodes:
            device = registry.get(episode.device)
            catalogue = KIND_METRICS.get(device.kind, {}) if device is not None else {}
            for rule in result.rules:
                if (episode.device, rule.name) not in fired:
                    continue
                for metric in rule.metrics:
                    info = catalogue.get(metric)
                    if info is not None and info.type == "text":
                        continue  # a camera's label or zone: not a line
                    if (episode.device, metric) not in panels:
                        panels.append((episode.device, metric))
    return panels[:MAX_PANELS]


def plot_replay(
    path: Path, messages: list[Message], registry: Registry, results: list[tuple[str, ReplayResult]]
) -> int:
    """Draw the PNG; returns how many devices it shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    panels = panels_of(results, registry)
    wanted = {device for device, _ in panels}
    series: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for message in messages:
        device = registry.get(message.device)
        if message.device not in wanted or device is None:
            continue
        for name, value in derive(device, dict(message.values)).items():
            if (message.device, name) in series or (message.device, name) in panels:
                if isinstance(value, float):
                    series[(message.device, name)].append((message.ts, value))
    end = max((m.ts for m in messages), default=0.0)

    rows = max(1, len(panels))
    figure, axes = plt.subplots(rows, 1, figsize=(12, 1.9 * rows + 0.8), squeeze=False, sharex=True)
    shown_devices: list[str] = []
    labelled: set[str] = set()
    for ax, (device_id, metric) in zip(axes[:, 0], panels):
        device = registry.get(device_id)
        info = KIND_METRICS.get(device.kind, {}).get(metric) if device is not None else None
        points = series.get((device_id, metric), [])
        if points:
            ax.plot([_utc(t) for t, _ in points], [v for _, v in points], color=READING_COLOUR, linewidth=1.1,
                    drawstyle="steps-post", label="readings" if "readings" not in labelled else None)
            labelled.add("readings")
        for (label, result), style in zip(results, VERSION_STYLES):
            for rule in result.rules:
                if not any(e.device == device_id and e.rule == rule.name for e in result.episodes):
                    continue
                for name, op, value in dict.fromkeys(thresholds(rule.when) + thresholds(rule.clear_when)):
                    if name != metric:
                        continue
                    ax.axhline(value, color=THRESHOLD_COLOUR, linestyle=":", linewidth=0.9)
                    ax.annotate(f"{rule.name}: {metric} {op} {value:g}", xy=(1.0, value), xycoords=("axes fraction", "data"),
                                xytext=(4, 0), textcoords="offset points", fontsize=7, va="center",
                                color=THRESHOLD_COLOUR)
            for episode in result.episodes:
                if episode.device != device_id:
                    continue
                key = f"{label}: problem open"
                ax.axvspan(_utc(episode.opened_at), _utc(episode.cleared_at if episode.cleared_at is not None else end),
                           label=key if key not in labelled else None, linewidth=0, **style)
                labelled.add(key)
        unit = f" ({info.unit})" if info is not None and info.unit else ""
        ax.set_ylabel(f"{metric}{unit}", fontsize=8)
        ax.tick_params(labelsize=7)
        if device_id not in shown_devices:
            shown_devices.append(device_id)
            address = f", {device.address}" if device is not None and device.address else ""
            ax.set_title(f"{device_id} ({device.kind if device else '?'}{address})", fontsize=9, loc="left")
    bottom = axes[-1, 0]
    bottom.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=dt.timezone.utc))
    bottom.set_xlabel("time (UTC)", fontsize=8)
    if not panels:
        bottom.text(0.5, 0.5, "no alerts", ha="center", va="center", transform=bottom.transAxes)
    handles, names = [], []
    for ax in axes[:, 0]:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            if name not in names:
                handles.append(handle)
                names.append(name)
    if handles:
        figure.legend(handles, names, loc="upper right", fontsize=8, ncol=len(names))
    figure.tight_layout(rect=(0, 0, 0.9, 0.97))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return len(shown_devices)
