"""The delivery engine. It sees Kanidm and the relay only through its own protocols.

- ``engine``: owns the stages and their queues, and stops them.
- ``dispatch``: polls the ready list and plans each message.
- ``sending``: the send workers; ``admission`` decides when an attempt may start;
  ``attempts``: one attempt, and what a failed one leaves behind.
- ``marking``: marks sent mail in Kanidm, with retries.
- ``outcomes``, ``evidence``, ``expiry``: what an attempt's result means.
- ``health``: the relay's health (pauses, throttling, concurrency).
- ``inflight``, ``incident``, ``metrics``: what is under way, repeated failures, metrics.

No names are re-exported here: import each from the module that defines it.
"""
