"""The receiver's HTML page: orders by grid and state, and the changes gateways refused.

Everything shown comes from gateways and devices, so every value is escaped (``html.escape``,
quotes included, also inside attributes) and the page is served with a Content-Security-Policy
that allows no script at all.
"""

from __future__ import annotations

from html import escape

STYLE = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1.5em}"
         "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#eee}"
         ".critical{color:#b00;font-weight:bold}.major{color:#c60}.refused{color:#b00}")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _text(value: object) -> str:
    return escape("" if value is None else str(value))


def _head(title: str) -> str:
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{STYLE}</style></head><body>"


def report_line(report: dict) -> str:
    """One report as a sentence, e.g. "rule file x.yaml refused: x.yaml:3: unknown function 'avgg'"."""
    status = str(report.get("status", ""))
    detail = str(report.get("detail") or report.get("reason") or "")
    kind = report.get("type")
    if kind == "rules":
        what = f"rule file {report.get('file') or '?'}"
    elif kind == "order":
        what = f"order change #{report.get('seq')}"
    else:
        what = f"change #{report.get('seq')} ({kind})"
    reason = report.get("reason")
    if reason and detail != reason and kind != "rules":
        status = f"{status} ({reason})"
    return f"{what} {status}" + (f": {detail}" if detail else "")


def orders_page(orders: list[dict], reports: list[dict] | None = None) -> str:
    """Orders grouped by grid, then by state, newest first; then the reports gateways sent."""
    by_grid: dict[str, list[dict]] = {}
    for order in orders:
        by_grid.setdefault(str(order.get("grid", "?")), []).append(order)
    parts = [_head("Work orders"), f"<h1>Work orders</h1><p>{len(orders)} order(s) from the street gateways.</p>"]
    for grid in sorted(by_grid):
        rows = sorted(by_grid[grid], key=lambda o: (str(o.get("platform_state") or o.get("state", "")),
                                                    str(o.get("opened_at", ""))))
        parts.append(f"<h2>Grid {_text(grid)}</h2><table><tr><th>state</th><th>platform</th><th>severity</th>"
                     "<th>title</th><th>device</th><th>rule</th><th>opened</th><th>revision</th><th>order</th></tr>")
        for o in rows:
            severity = _text(o.get("severity", ""))
            cells = (_text(o.get("state", "")), _text(o.get("platform_state") or ""),
                     f"<span class='{severity}'>{severity}</span>", _text(o.get("title", "")), _text(o.get("device", "")),
                     _text(o.get("rule", "")), _text(o.get("opened_at", "")), _text(o.get("revision", "")),
                     _text(o.get("order_id", "")))
            parts.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
        parts.append("</table>")
    if reports:
        parts.append("<h2>Changes reported by the gateways</h2><table><tr><th>gateway</th><th>at</th><th>report</th></tr>")
        for report in reversed(reports):  # newest first
            css = " class='refused'" if report.get("status") == "refused" else ""
            parts.append(f"<tr{css}><td>{_text(report.get('gateway'))}</td><td>{_text(report.get('at'))}</td>"
                         f"<td>{_text(report_line(report))}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)


def login_page(wrong: bool) -> str:
    """Asked for the token (the page shows every order with its address)."""
    hint = "<p class='refused'>Wrong token.</p>" if wrong else ""
    return (_head("Work orders: token") + "<h1>Work orders</h1><p>This receiver needs its token.</p>" + hint +
            "<form method='get' action='/'><input type='password' name='token' autofocus> "
            "<button type='submit'>Open</button></form></body></html>")
