"""OpenSupervisor: a self-hosted Supervisor API."""

__version__ = "0.1.0"
