"""The one error the admin layer raises: what went wrong, in one sentence an operator can act on."""


class AdminError(Exception):
    """`field` names the setting at fault, when one is (the web panel shows the sentence beside it)."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field
