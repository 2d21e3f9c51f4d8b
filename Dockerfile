# kanidm-mail-sender in a container. Configs go under /data/kanidm (mount them read-only):
#   docker run --user 10001:10001 -v /srv/kanidm:/data/kanidm:ro \
#     -v kms-state:/var/lib/kanidm-mail-sender kanidm-mail-sender
FROM python:3.11-slim

RUN useradd --system --uid 10001 --user-group --no-create-home kanidm-mail-sender \
 && mkdir -p /data/kanidm /var/lib/kanidm-mail-sender \
 && chown 10001:10001 /var/lib/kanidm-mail-sender && chmod 0700 /var/lib/kanidm-mail-sender

COPY . /src
RUN pip install --no-cache-dir /src && rm -rf /src

ENV STATE_DIRECTORY=/var/lib/kanidm-mail-sender \
    PYTHONUNBUFFERED=1 \
    KANIDM_MAIL_SENDER_HEALTHCHECK_URL=""
VOLUME ["/var/lib/kanidm-mail-sender"]
USER 10001:10001

# With metrics_listen = "127.0.0.1:9464", set KANIDM_MAIL_SENDER_HEALTHCHECK_URL to
# http://127.0.0.1:9464/readyz to hook the container's health to readiness.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s CMD \
  python -c "import os,sys,urllib.request as u; url=os.environ.get('KANIDM_MAIL_SENDER_HEALTHCHECK_URL'); sys.exit(0 if not url else (0 if u.urlopen(url, timeout=4).status == 200 else 1))"

ENTRYPOINT ["kanidm-mail-sender"]
CMD ["-c", "/data/kanidm/config", "-m", "/data/kanidm/mail-sender"]
