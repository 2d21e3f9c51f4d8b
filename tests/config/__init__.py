"""Tests of kanidm_mail_sender.config."""
