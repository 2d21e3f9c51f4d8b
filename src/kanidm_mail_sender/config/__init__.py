"""The two config files: Kanidm's client config and ours, validated and parsed once where
they enter, with the start-up checks on the files and the process's ids.

- ``settings``: the models of both files, their keys and defaults.
- ``relays``: ``mail_relay`` URLs, parsed into a relay endpoint.
- ``oauth``: the ``[mail_oauth2]`` table of an XOAUTH2 relay.
- ``files``: reading config and secret files safely.
- ``loading``: both files loaded, and every refusal worded for an operator.
- ``statedir``: where the state directory is.
- ``preflight``: the checks before start (file modes, not root).

No names are re-exported here: import each from the module that defines it, so that a
command loads only what it uses.
"""
