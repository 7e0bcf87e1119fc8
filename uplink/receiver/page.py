"""The receiver's HTML page: orders by grid and state, the sensors' re-check figures, and the changes gateways refused.

Everything shown comes from gateways and devices, so every value is escaped (``html.escape``,
quotes included, also inside attributes) and the page is served with a Content-Security-Policy
that allows no script at all.
"""

from __future__ import annotations

from html import escape
from urllib.parse import quote

STYLE = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1.5em}"
         "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{background:#eee}"
         ".critical{color:#b00;font-weight:bold}.major{color:#c60}.refused{color:#b00}"
         ".not_fixed{color:#b00;font-weight:bold}.verified{color:#070}.unverified{color:#c60}")
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


VERIFICATION_TEXT = {"pending": "re-checking", "verified": "verified by sensors", "not_fixed": "NOT FIXED",
                     "unverified": "unverified (device silent)"}


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def quality_table(quality: dict) -> str:
    """Fixed means fixed: the re-check figures overall and by grid, team and category."""
    head = ("<tr><th></th><th>resolutions</th><th>checked</th><th>verified</th><th>not fixed</th><th>unverified</th>"
            "<th>repeat within 7 d</th><th>repeat within 30 d</th></tr>")
    rows = [("all orders", quality["overall"])]
    for key in ("grid", "team", "category"):
        rows += [(f"{key} {name}", figures) for name, figures in quality.get(f"by_{key}", {}).items()
                 if figures["resolutions"] or figures["checked"]]
    parts = ["<h2>Fixed means fixed: the sensors' re-check of resolved orders</h2><table>", head]
    for name, f in rows:
        cells = (_text(name), _text(f["resolutions"]), _text(f["checked"]),
                 f"{f['verified']} ({_share(f['verified_share'])})", f"{f['not_fixed']} ({_share(f['not_fixed_share'])})",
                 f"{f['unverified']} ({_share(f['unverified_share'])})", _share(f["repeat_rate_7d"]),
                 _share(f["repeat_rate_30d"]))
        parts.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    parts.append("</table>")
    return "".join(parts)


def orders_page(orders: list[dict], reports: list[dict] | None = None, quality: dict | None = None) -> str:
    """Orders grouped by grid, then by state, newest first; the re-check figures; the reports gateways sent."""
    by_grid: dict[str, list[dict]] = {}
    for order in orders:
        by_grid.setdefault(str(order.get("grid", "?")), []).append(order)
    parts = [_head("Work orders"), f"<h1>Work orders</h1><p>{len(orders)} order(s) from the street gateways. "
             "The command centre works them in the <a href='/console/'>console</a>.</p>"]
    for grid in sorted(by_grid):
        rows = sorted(by_grid[grid], key=lambda o: (str(o.get("platform_state") or o.get("state", "")),
                                                    str(o.get("opened_at", ""))))
        parts.append(f"<h2>Grid {_text(grid)}</h2><table><tr><th>state</th><th>platform</th><th>re-check</th>"
                     "<th>severity</th><th>title</th><th>device</th><th>rule</th><th>opened</th><th>revision</th>"
                     "<th>order</th><th>repeat of</th></tr>")
        for o in rows:
            severity = _text(o.get("severity", ""))
            check = str(o.get("verification") or "")
            cells = (_text(o.get("state", "")), _text(o.get("platform_state") or ""),
                     f"<span class='{_text(check)}'>{_text(VERIFICATION_TEXT.get(check, check))}</span>",
                     f"<span class='{severity}'>{severity}</span>", _text(o.get("title", "")), _text(o.get("device", "")),
                     _text(o.get("rule", "")), _text(o.get("opened_at", "")), _text(o.get("revision", "")),
                     _link(o.get("order_id")), _link(o.get("repeat_of")))
            parts.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
        parts.append("</table>")
    if quality is not None and (quality["overall"]["resolutions"] or quality["overall"]["checked"]):
        parts.append(quality_table(quality))
    if reports:
        parts.append("<h2>Changes reported by the gateways</h2><table><tr><th>gateway</th><th>at</th><th>report</th></tr>")
        for report in reversed(reports):  # newest first
            css = " class='refused'" if report.get("status") == "refused" else ""
            parts.append(f"<tr{css}><td>{_text(report.get('gateway'))}</td><td>{_text(report.get('at'))}</td>"
                         f"<td>{_text(report_line(report))}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)


def _link(order_id: object) -> str:
    """A link to the order's page (its id escaped for the address and for the text)."""
    if not order_id:
        return ""
    return f"<a href='/orders/{escape(quote(str(order_id), safe=''))}'>{_text(order_id)}</a>"


def order_page(order_id: str, revisions: list[dict]) -> str:
    """One order: what it is, then every revision with its change, state, re-check and evidence."""
    parts = [_head(f"Order {order_id}"), f"<p><a href='/'>all orders</a></p><h1>Order {_text(order_id)}</h1>"]
    if not revisions:
        parts.append("<p>No such order.</p></body></html>")
        return "".join(parts)
    last = revisions[-1]
    check = str(last.get("verification") or "")
    facts = (("title", _text(last.get("title"))), ("state", _text(last.get("state"))),
             ("re-check", f"<span class='{_text(check)}'>{_text(VERIFICATION_TEXT.get(check, check) or '-')}</span>"),
             ("repeat of", _link(last.get("repeat_of")) or "-"), ("category", _text(last.get("category_name") or last.get("category"))),
             ("severity", _text(last.get("severity"))), ("grid / team", f"{_text(last.get('grid'))} / {_text(last.get('team'))}"),
             ("address", _text(last.get("address"))), ("gateway", _text(last.get("gateway"))),
             ("opened (device time)", _text(last.get("opened_at"))))
    parts.append("<table>" + "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in facts) + "</table>")
    parts.append("<h2>Revisions</h2><table><tr><th>revision</th><th>change</th><th>state</th><th>at (gateway)</th>"
                 "<th>evidence added</th></tr>")
    before: set[str] = set()
    for body in revisions:
        evidence = [e for e in body.get("evidence") or [] if isinstance(e, dict)] if isinstance(body.get("evidence"), list) else []
        keys = [repr(sorted(e.items(), key=lambda item: str(item[0]))) for e in evidence]
        added = [e for e, key in zip(evidence, keys) if key not in before]  # (a revision keeps the last 20)
        before = set(keys)
        lines = "<br>".join(
            _text(f"{e.get('device', '')} {e.get('metric', '')} = {e.get('value', '')} at {e.get('at', '')}"
                  + (f" ({e['condition']})" if e.get("condition") else "") + (f": {e['note']}" if e.get("note") else ""))
            for e in added)
        change = str(body.get("change", ""))
        parts.append(f"<tr><td>{_text(body.get('revision'))}</td><td><span class='{_text(change)}'>{_text(change)}</span>"
                     f"</td><td>{_text(body.get('state'))}</td><td>{_text(body.get('updated_at'))}</td><td>{lines}</td></tr>")
    parts.append("</table></body></html>")
    return "".join(parts)


def login_page(wrong: bool) -> str:
    """Asked for the token (the page shows every order with its address)."""
    hint = "<p class='refused'>Wrong token.</p>" if wrong else ""
    return (_head("Work orders: token") + "<h1>Work orders</h1><p>This receiver needs its token.</p>" + hint +
            "<form method='get' action='/'><input type='password' name='token' autofocus> "
            "<button type='submit'>Open</button></form></body></html>")
