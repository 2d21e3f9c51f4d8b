"""The SMTP relay.

- ``relay``: a pool of TLS connections, and the mapping of its failures to ours.
- ``session``: pipelined transactions on our own session.
- ``auth`` and ``oauth``: AUTH (password, or XOAUTH2 with OAuth 2.0 tokens).
- ``factory``: the relay built from the config.

No names are re-exported here: import each from the module that defines it.
"""
