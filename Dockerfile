# kanidm-mail-sender in a container: the locked, hash-checked dependencies and the package
# installed into a venv in one stage, which a clean runtime stage copies whole.
#
#   docker build -t kanidm-mail-sender .
#   docker run -v /srv/kanidm:/data/kanidm:ro -v kms-state:/var/lib/kanidm-mail-sender \
#     kanidm-mail-sender                       # the daemon
#   docker run ... kanidm-mail-sender -t alice@example.com   # one test mail
#   docker run ... kanidm-mail-sender --check
#
# Behind a proxy or a private index: --build-arg PIP_INDEX_URL=https://pypi.internal/simple
# (and PIP_TRUSTED_HOST, PIP_CERT for a private CA, HTTPS_PROXY as usual).

# Pinned to a Python minor and a Debian release; bump both deliberately.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# Everything that talks to an index happens here. The PIP_* arguments exist only in this
# stage, so their values (a private index URL may carry a token) never reach the final
# image's history, environment or files: that stage copies the finished venv and nothing else.
FROM ${PYTHON_IMAGE} AS build
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_TRUSTED_HOST=
ARG PIP_CERT=
# A fixed time for everything the install writes, so two builds give the same files.
ARG SOURCE_DATE_EPOCH=1767225600
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /build
COPY pyproject.toml README.md LICENSE requirements.lock ./
COPY src ./src
RUN python -m venv /opt/kanidm-mail-sender \
 && /opt/kanidm-mail-sender/bin/pip install --no-compile --require-hashes -r requirements.lock \
 && /opt/kanidm-mail-sender/bin/pip install --no-compile --no-deps . \
 && /opt/kanidm-mail-sender/bin/python -m compileall -q --invalidation-mode unchecked-hash \
      "$(/opt/kanidm-mail-sender/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"

FROM ${PYTHON_IMAGE} AS runtime
COPY --from=build /opt/kanidm-mail-sender /opt/kanidm-mail-sender
# /sbin/kanidm-mail-sender is the path kaniop's Deployment runs (upstream's kanidm/tools image).
RUN ln -s /opt/kanidm-mail-sender/bin/kanidm-mail-sender /usr/local/bin/kanidm-mail-sender \
 && ln -s /opt/kanidm-mail-sender/bin/kanidm-mail-sender /sbin/kanidm-mail-sender \
 && useradd --system --uid 10001 --user-group --no-create-home kanidm-mail-sender \
 && mkdir -p /data/kanidm /var/lib/kanidm-mail-sender \
 && chown 10001:10001 /var/lib/kanidm-mail-sender && chmod 0700 /var/lib/kanidm-mail-sender

# -c and -m default to these, so "IMAGE -t ADDRESS" and "IMAGE --check" find the configs.
# Under another uid with no volume (kaniop's pod: 65534), /var/lib/kanidm-mail-sender is not
# writable and the daemon keeps its journal in /tmp/kanidm-mail-sender-<uid>, with a warning.
ENV KANIDM_CLIENT_CONFIG=/data/kanidm/config \
    KANIDM_MAIL_SENDER_CONFIG=/data/kanidm/mail-sender \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME ["/var/lib/kanidm-mail-sender"]
USER 10001:10001

# One quiet line, exit 0/1: /readyz when metrics_listen is set, else whether a daemon holds
# its state directory. With no config at the default path (kaniop's -c/-m /data/config/...),
# it finds the daemon at the default state directory or its /tmp fallback.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s CMD ["kanidm-mail-sender", "--probe"]
# docker stop waits 10 s: shutdown_grace_seconds defaults to 5, and the hard stop comes at
# grace + 2 s, so the daemon always exits (0) before the engine kills it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["kanidm-mail-sender"]
CMD []
