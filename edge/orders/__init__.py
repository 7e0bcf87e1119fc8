"""Work orders: one per real problem, with revisions for every change."""

from edge.orders.book import Change, OrderBook

__all__ = ["Change", "OrderBook"]
