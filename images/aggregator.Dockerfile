# HemaFed aggregator. Build from the repository root:
#   docker build -f images/aggregator.Dockerfile -t hemafed-aggregator --build-arg BASE_IMAGE=python:3.11-slim .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG TF_PACKAGE=tensorflow-cpu==2.21.0
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DEFAULT_TIMEOUT=180 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    KERAS_BACKEND=tensorflow TF_CPP_MIN_LOG_LEVEL=2
RUN python3 -m venv /opt/venv
# identical first layers in hospital.Dockerfile and aggregator.Dockerfile: built once, cached for both
COPY images/requirements-service.txt images/requirements-ml.txt /tmp/req/
RUN pip install --no-cache-dir -r /tmp/req/requirements-service.txt -r /tmp/req/requirements-ml.txt "${TF_PACKAGE}"
COPY shared /src/shared
RUN pip install --no-cache-dir --no-deps /src/shared
COPY services/aggregator /src/aggregator
RUN pip install --no-cache-dir --no-deps /src/aggregator && useradd --system --uid 10001 hemafed
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=4s --start-period=60s --retries=5 \
  CMD ["python3", "-m", "hemafed.healthcheck", "https://127.0.0.1:8080/health", "/run/secrets/hemafed"]
# HTTPS (TLS material and credentials from SECRETS_DIR, hemafed.security); refuses to start without them
# unless INSECURE=true
CMD ["python3", "-m", "hemafed_aggregator"]
