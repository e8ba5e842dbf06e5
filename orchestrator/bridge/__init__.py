"""The bridge: claims messages while the fleet has room, ledgers them, places and dispatches."""

from orchestrator.bridge.loop import Bridge

__all__ = ["Bridge"]
