"""The wire layer: request and response shapes of the Responses protocol, validation and error bodies.

Nothing here does I/O; everything above it (core, server) speaks in these shapes.
"""
