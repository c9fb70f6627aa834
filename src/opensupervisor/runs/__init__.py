"""Running responses: preparing a run, recording it, background runs and cancellation."""
