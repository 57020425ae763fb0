# netwatch node agent image (deployed by daemonset/): Debian 12, bcc from Debian
# (python3-bpfcc; the PyPI project named "bcc" is unrelated), Debian's kernel headers as a
# fallback for hosts without their own (DESIGN §9), netwatch in a venv that sees bcc.
#
#   docker build -t netwatch:0.1.0 .
#
# In the DaemonSet the node's /usr/src and /lib/modules are mounted over the image's, so
# the node's own headers win; outside Kubernetes (docker run, the lab) these are used.
FROM debian:12-slim

# Debian names its headers meta-package after the architecture (linux-headers-amd64,
# linux-headers-arm64), as Docker's TARGETARCH does.
ARG TARGETARCH=amd64

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv python3-bpfcc "linux-headers-${TARGETARCH}" \
      iproute2 conntrack mount util-linux ca-certificates \
 && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md /src/
COPY netwatch /src/netwatch
RUN python3 -m venv --system-site-packages /opt/netwatch \
 && /opt/netwatch/bin/pip install --no-cache-dir /src \
 && rm -rf /src \
 && /opt/netwatch/bin/python -c "import bcc, netwatch" \
 && mkdir -p /var/cache/netwatch /run/netwatch

ENV PATH=/opt/netwatch/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The agent serves /metrics, /healthz, /readyz and /api/* here (see daemonset/).
EXPOSE 9810
ENTRYPOINT ["/opt/netwatch/bin/netwatch"]
CMD ["agent", "--help"]
