"""Allows ``python -m kanidm_mail_sender``."""

from kanidm_mail_sender.cli import main

raise SystemExit(main())
