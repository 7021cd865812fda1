# The chaos tool and everything its lab needs, on Debian 12.
# The lab needs root and may only run in a container with its own network namespace and
# CAP_SYS_ADMIN/CAP_NET_ADMIN (e.g. `--privileged`); against a real cloud it needs neither.
FROM docker.io/library/debian:bookworm-slim

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      keepalived conntrack conntrackd openssh-server openssh-client iptables iproute2 \
      iputils-ping fping procps util-linux python3 python3-venv python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/chaos
COPY pyproject.toml README.md ./
COPY chaos ./chaos
COPY experiments ./experiments
RUN python3 -m venv /opt/chaos/.venv \
 && /opt/chaos/.venv/bin/pip install --no-cache-dir . \
 && mkdir -p /opt/chaos/reports
ENV PATH=/opt/chaos/.venv/bin:$PATH

ENTRYPOINT ["chaos"]
CMD ["--help"]
