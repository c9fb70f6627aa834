"""The one agent loop: items in, Responses events out."""
