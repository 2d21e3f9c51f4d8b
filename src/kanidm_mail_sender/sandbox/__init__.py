"""Local stand-ins for Kanidm and an SMTP relay: the sandbox command, tests and bench use them.

Needs the ``sandbox`` extra (aiosmtpd, trustme).
"""
