"""What operators run beside the daemon.

- ``commands``: the command dispatcher; ``status``, ``queue``, ``history``, ``show`` and
  ``retry``: one module per command; ``tables`` and ``context``: what they share.
- ``oneshot``: ``-t``, ``--render`` and ``--check``.
- ``probe``: the container's health probe; ``durations``: ``--since``.

No names are re-exported here: import each from the module that defines it. ``--probe``
runs every 30 s in a container and must not load httpx or h11.
"""
