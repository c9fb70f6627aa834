"""Defaults of the admin services that the command line shows in its help, kept where reading them
costs nothing (the services themselves import the store)."""

from __future__ import annotations

# How usage reports group their rows when the caller does not say.
DEFAULT_GROUP_BY = "principal"
