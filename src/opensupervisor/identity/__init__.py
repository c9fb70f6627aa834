"""Who is calling: principals travel in every run context."""

from opensupervisor.identity.principal import ADMIN, Principal

__all__ = ["ADMIN", "Principal"]
