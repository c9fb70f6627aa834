"""Functions of the demo workspace's catalog (``main.support``), run in the sandbox."""


def flag_urgent(review_id: int, reason: str = "needs attention") -> str:
    """Flags a review as requiring urgent attention.

    Args:
        review_id: The id of the review to flag.
        reason: Why the review is urgent.
    """
    return f"Review {review_id} is flagged as urgent ({reason}); the support lead is notified."
