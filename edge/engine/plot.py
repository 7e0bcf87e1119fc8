"""``edge rules test --plot``: per device with orders, its metrics, the thresholds, and the orders.

One panel per device (at most ``MAX_PANELS``): every numeric metric the rules read, a dotted
line at each constant a rule compares that metric with, and a vertical line where each
version of the rules opened (solid) and cleared (dashed) an order.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from pathlib import Path

from edge.engine import expr
from edge.engine.replay import Message, ReplayResult
from edge.ingest.decode import derive
from edge.registry import Registry

MAX_PANELS = 12
VERSION_COLOURS = ("tab:red", "tab:blue")


def thresholds(node: expr.Node) -> list[tuple[str, float]]:
    """(metric, constant) for every plain comparison of a metric with a number in a condition."""
    found: list[tuple[str, float]] = []
    if isinstance(node, expr.Binary):
        if node.op in ("<", "<=", ">", ">=", "==", "!="):
            if isinstance(node.left, expr.Metric) and isinstance(node.right, expr.Number):
                found.append((node.left.name, node.right.value))
            elif isinstance(node.right, expr.Metric) and isinstance(node.left, expr.Number):
                found.append((node.right.name, node.left.value))
        found += thresholds(node.left) + thresholds(node.right)
    elif isinstance(node, expr.Unary):
        found += thresholds(node.operand)
    return found


def plot_replay(
    path: Path, messages: list[Message], registry: Registry, results: list[tuple[str, ReplayResult]]
) -> int:
    """Draw the PNG; returns how many device panels it holds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = []
    for _, result in results:
        for episode in result.episodes:
            if episode.device not in devices:
                devices.append(episode.device)
    devices = devices[:MAX_PANELS]
    wanted = set(devices)
    read = {name for _, result in results for rule in result.rules for name in rule.metrics}
    series: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for message in messages:
        device = registry.get(message.device)
        if message.device not in wanted or device is None:
            continue
        for name, value in derive(device, dict(message.values)).items():
            if name in read and isinstance(value, float):
                series[message.device][name].append((message.ts, value))

    rows = max(1, len(devices))
    figure, axes = plt.subplots(rows, 1, figsize=(11, 2.6 * rows), squeeze=False)
    for ax, device_id in zip(axes[:, 0], devices):
        device = registry.get(device_id)
        for name, points in sorted(series[device_id].items()):
            times = [dt.datetime.fromtimestamp(t, dt.timezone.utc) for t, _ in points]
            line, = ax.plot(times, [v for _, v in points], label=name, linewidth=1, drawstyle="steps-post")
            limits = {
                value
                for _, result in results
                for rule in result.rules
                if device is not None and device.kind in rule.spec.applies_to.kind
                for metric, value in thresholds(rule.when) + thresholds(rule.clear_when)
                if metric == name
            }
            for value in sorted(limits):
                ax.axhline(value, color=line.get_color(), linestyle=":", linewidth=0.8)
        for (label, result), colour in zip(results, VERSION_COLOURS):
            for episode in result.episodes:
                if episode.device != device_id:
                    continue
                ax.axvline(dt.datetime.fromtimestamp(episode.opened_at, dt.timezone.utc), color=colour,
                           linewidth=1.5, label=f"{label}: {episode.rule} opens")
                if episode.cleared_at is not None:
                    ax.axvline(dt.datetime.fromtimestamp(episode.cleared_at, dt.timezone.utc), color=colour,
                               linestyle="--", linewidth=1.2, label=f"{label}: {episode.rule} clears")
        ax.set_title(f"{device_id} ({device.kind if device else '?'})", fontsize=9, loc="left")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.tick_params(labelsize=7)
    if not devices:
        axes[0, 0].text(0.5, 0.5, "no orders", ha="center", va="center")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return len(devices)
