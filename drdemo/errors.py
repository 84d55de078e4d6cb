"""The one base class of drdemo's own errors.

Every error drdemo raises about what it was given (a checkpoint, an image, a data set, a request)
is a DrdemoError, whose message says what is wrong and what to change, so the page and the CLIs
can catch one type and show the message. Each subclass also keeps its built-in base (ValueError,
or RuntimeError for a failed deployment), so code that catches those keeps working.
"""

from __future__ import annotations


class DrdemoError(Exception):
    """An error of drdemo's, with a message meant for the person who can fix its cause."""
