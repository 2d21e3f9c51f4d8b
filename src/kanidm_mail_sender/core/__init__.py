"""Pure decisions and values, no I/O.

- ``messages``: queued messages, parsed from Kanidm's entries.
- ``states``: the journal's state words.
- ``planning``: what to do with a message and each destination, and backoff.
- ``addresses``, ``links``, ``queueid``: addresses, the instance URL and reset links,
  the relay's queue id.
- ``schedule``: the cron dialect.
- ``ratelimit``: sending-rate windows.
- ``replies``: what a relay's reply means, and whose problem it is.
- ``defaults``: defaults the config and the engine share.
- ``render`` (Jinja2) and ``mail``: the message rendered and built.
- ``catalogs``, ``trans``, ``localtime``, ``zones``: the mails' languages (gettext catalogs,
  translated when a template is compiled), times for a reader (Babel), and time zones.

No names are re-exported here: import each from the module that defines it, so that the
operator commands and the probe never load a template engine.
"""
