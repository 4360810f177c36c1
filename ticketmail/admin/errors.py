"""The one error the admin layer raises: what went wrong, in one sentence an operator can act on."""


class AdminError(Exception):
    pass
