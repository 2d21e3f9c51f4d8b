"""The daemon process.

- ``wiring``: the parts built from the configs.
- ``daemon``: the poll loop and the stop.
- ``signals``, ``sdnotify``, ``limits``: the process's signals, systemd and limits.
- ``httpserver`` and ``listener``: the metrics and health listener.

No names are re-exported here: import each from the module that defines it.
"""
