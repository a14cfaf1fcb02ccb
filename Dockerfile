# One image per service: docker build --build-arg SERVICE=rpc_frontend .
FROM python:3.11-slim
ARG SERVICE
ENV PYTHONUNBUFFERED=1 HABLA_SERVICE=${SERVICE}
WORKDIR /app
COPY libs/common/requirements.txt libs/common/requirements.txt
COPY services/${SERVICE}/requirements.txt services/${SERVICE}/requirements.txt
RUN pip install --no-cache-dir -r services/${SERVICE}/requirements.txt
COPY thrift thrift
COPY libs libs
COPY services/__init__.py services/__init__.py
COPY services/${SERVICE} services/${SERVICE}
# /srv/status-files: where status_image writes files for nginx (a volume there starts
# owned by habla, as this folder is).
RUN useradd --system habla && mkdir -p /srv/status-files && chown habla /srv/status-files
USER habla
CMD python -m services.${HABLA_SERVICE}
