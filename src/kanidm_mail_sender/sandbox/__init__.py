"""Local stand-ins for Kanidm and an SMTP relay: the sandbox command, tests and bench use them.

- ``kanidm_server``: Kanidm's REST contract over HTTPS.
- ``smtp_server``: a relay (aiosmtpd) with TLS, AUTH and faults on demand.
- ``oauth_server``: an OAuth 2.0 token endpoint for XOAUTH2.
- ``certs``: a throw-away CA and server certificates (trustme).
- ``configs``: config files that point at the stand-ins.
- ``cli``: the ``kanidm-mail-sender-sandbox`` command.

Needs the ``sandbox`` extra (aiosmtpd, trustme).
"""
