"""The two config files: Kanidm's client config and ours, validated and parsed once where
they enter (schedule, relay, listener and instance URL are stored parsed), with the start-up
checks on the files and the process's ids."""

from kanidm_mail_sender.config.loading import (
    Configs,
    Loaded,
    load_client_config,
    load_configs,
    load_mail_config,
)
from kanidm_mail_sender.config.oauth import OAuth2Settings
from kanidm_mail_sender.config.preflight import Identity, check_config_file, check_not_root
from kanidm_mail_sender.config.relays import RelayEndpoint
from kanidm_mail_sender.config.settings import (
    DEFAULT_CLIENT_CONFIG,
    DEFAULT_MAIL_CONFIG,
    DEFAULT_STATE_DIR,
    ClientConfig,
    ListenAddress,
    MailSenderConfig,
)
from kanidm_mail_sender.config.statedir import resolve_state_dir, state_dir_named

__all__ = [
    "DEFAULT_CLIENT_CONFIG",
    "DEFAULT_MAIL_CONFIG",
    "DEFAULT_STATE_DIR",
    "ClientConfig",
    "Configs",
    "Identity",
    "ListenAddress",
    "Loaded",
    "MailSenderConfig",
    "OAuth2Settings",
    "RelayEndpoint",
    "check_config_file",
    "check_not_root",
    "load_client_config",
    "load_configs",
    "load_mail_config",
    "resolve_state_dir",
    "state_dir_named",
]
