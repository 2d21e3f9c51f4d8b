# kanidm-mail-sender in a container: a wheel built in one stage, installed with the locked,
# hash-checked dependencies into a clean runtime stage.
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

FROM ${PYTHON_IMAGE} AS build
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_TRUSTED_HOST=
ARG PIP_CERT=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /build
COPY pyproject.toml README.md LICENSE requirements.lock ./
COPY src ./src
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && cp requirements.lock /wheels/

FROM ${PYTHON_IMAGE} AS runtime
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_TRUSTED_HOST=
ARG PIP_CERT=
# A fixed time for everything the install writes, so two builds give the same files.
ARG SOURCE_DATE_EPOCH=1767225600
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-compile --require-hashes -r /wheels/requirements.lock \
 && pip install --no-compile --no-deps /wheels/kanidm_mail_sender-*.whl \
 && python -m compileall -q --invalidation-mode unchecked-hash \
      "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
 && useradd --system --uid 10001 --user-group --no-create-home kanidm-mail-sender \
 && mkdir -p /data/kanidm /var/lib/kanidm-mail-sender \
 && chown 10001:10001 /var/lib/kanidm-mail-sender && chmod 0700 /var/lib/kanidm-mail-sender

# -c and -m default to these, so "IMAGE -t ADDRESS" and "IMAGE --check" find the configs.
ENV KANIDM_CLIENT_CONFIG=/data/kanidm/config \
    KANIDM_MAIL_SENDER_CONFIG=/data/kanidm/mail-sender \
    STATE_DIRECTORY=/var/lib/kanidm-mail-sender \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME ["/var/lib/kanidm-mail-sender"]
USER 10001:10001

# One quiet line, exit 0/1: /readyz when metrics_listen is set, else whether the daemon holds
# its state directory.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s CMD ["kanidm-mail-sender", "--probe"]
# docker stop waits 10 s: shutdown_grace_seconds defaults to 5, and the hard stop comes at
# grace + 2 s, so the daemon always exits (0) before the engine kills it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["kanidm-mail-sender"]
CMD []
