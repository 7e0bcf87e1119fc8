"""Work orders: one per real problem, with revisions for every change."""

from edge.orders.book import Change, OrderBook, OrderError

__all__ = ["Change", "OrderBook", "OrderError"]
