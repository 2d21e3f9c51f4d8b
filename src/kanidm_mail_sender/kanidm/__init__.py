"""Kanidm's REST API.

- ``client``: the client (ready list and marks).
- ``pipeline``: the pipelined mark-sent connection, on h11.
- ``readylist``: the streaming ready-list scanner.
- ``decoding``: the body decoders.
- ``token``: what a token may do (its scope, and Kanidm's ``extAccessCheck``).
- ``factory``: the client built from the configs.

No names are re-exported here: import each from the module that defines it, so that only
what talks to Kanidm loads httpx.
"""
