"""The district command centre's console: the pages of ``/console/`` over the platform's store.

``mount(app, store, tell)`` adds them to the receiver's FastAPI app. Users, roles and sessions
are in ``auth``; ``python -m uplink.receiver.console users ...`` manages the users.
"""

from uplink.receiver.console.auth import ROLES, UserError, add_user
from uplink.receiver.console.web import mount

__all__ = ["ROLES", "UserError", "add_user", "mount"]
