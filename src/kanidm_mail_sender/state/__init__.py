"""What lasts on disk in the state directory.

- ``journal``: the delivery journal; ``view``: its read-only view.
- ``lock``: the single-instance lock.
- ``place``: which directory, and whether it lasts.
- ``status``: ``status.json``.
- ``retries``: the operator's retry requests.

No names are re-exported here: import each from the module that defines it.
"""
