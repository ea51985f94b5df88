# HemaFed metrics service (no TensorFlow). Build from the repository root:
#   docker build -f images/metrics.Dockerfile -t hemafed-metrics --build-arg BASE_IMAGE=python:3.11-slim .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DEFAULT_TIMEOUT=180 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
COPY images/requirements-service.txt /tmp/req/
RUN pip install --no-cache-dir -r /tmp/req/requirements-service.txt
COPY shared /src/shared
RUN pip install --no-cache-dir --no-deps /src/shared
COPY services/metrics /src/metrics
RUN pip install --no-cache-dir --no-deps /src/metrics && useradd --system --uid 10001 hemafed \
    && mkdir -p /var/lib/hemafed && chown 10001 /var/lib/hemafed
USER 10001
EXPOSE 8090
HEALTHCHECK --interval=5s --timeout=4s --start-period=20s --retries=5 \
  CMD ["python3", "-m", "hemafed.healthcheck", "https://127.0.0.1:8090/health", "/run/secrets/hemafed"]
# HTTPS (TLS material and credentials from SECRETS_DIR, hemafed.security); refuses to start without them
# unless INSECURE=true
CMD ["python3", "-m", "hemafed_metrics"]
