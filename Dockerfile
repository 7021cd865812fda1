# The chaos tool on Debian 12; the image runs the operator (`chaos serve`, docs/operator.md).
# Against the embedded lab it needs root, its own network namespace and CAP_SYS_ADMIN/CAP_NET_ADMIN
# (e.g. `--privileged`); against a real cloud it needs neither.
#
#   mount: /etc/chaos/experiments (experiment files), /etc/chaos/tokens.yaml, a volume on /var/lib/chaos
#   run:   chaos serve (the default command), or any other chaos command
FROM docker.io/library/debian:bookworm-slim

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      keepalived conntrack conntrackd openssh-server openssh-client iptables iproute2 \
      iputils-ping fping procps util-linux curl python3 python3-venv python3-pip ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/chaos
COPY pyproject.toml README.md ./
COPY chaos ./chaos
COPY experiments ./experiments
COPY docs ./docs
RUN python3 -m venv /opt/chaos/.venv \
 && /opt/chaos/.venv/bin/pip install --no-cache-dir . \
 && /opt/chaos/.venv/bin/pip install --no-cache-dir --no-deps --target /opt/chaos/.venv/neutron 'neutron==29.0.0' \
 && mkdir -p /etc/chaos/experiments /var/lib/chaos
ENV PATH=/opt/chaos/.venv/bin:$PATH CHAOS_STATE_DIR=/var/lib/chaos CHAOS_LOG_FORMAT=json
VOLUME ["/var/lib/chaos"]
EXPOSE 8080

ENTRYPOINT ["chaos"]
CMD ["serve", "--experiments", "/etc/chaos/experiments", "--state-dir", "/var/lib/chaos", "--listen", "0.0.0.0:8080"]
