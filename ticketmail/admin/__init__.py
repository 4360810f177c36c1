"""What an admin can do, one module per domain: plain async functions of a `Database` and plain arguments
that return model rows or small dataclasses and raise `AdminError` (ticketmail/admin/errors.py).

The `ticketmail` CLI and the web panel both call these; neither printing nor prompting happens here.
Queries live in storage/.
"""
