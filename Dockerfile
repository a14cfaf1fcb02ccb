# One image per service: docker build --build-arg SERVICE=rpc_frontend .
FROM python:3.11-slim
ARG SERVICE
ENV PYTHONUNBUFFERED=1 HABLA_SERVICE=${SERVICE}
WORKDIR /app
COPY libs/common/requirements.txt libs/common/requirements.txt
COPY services/${SERVICE}/requirements.txt services/${SERVICE}/requirements.txt
# thrift (Apache's) ships as an sdist whose C++ extension, the fast Thrift reader in
# libs/common/codec.py, needs g++; without it pip quietly installs pure Python (codec
# still works, several times slower), hence the import check after g++ is gone again.
RUN apt-get update && apt-get install -y --no-install-recommends g++ \
    && pip install --no-cache-dir -r services/${SERVICE}/requirements.txt \
    && apt-get purge -y --auto-remove g++ && rm -rf /var/lib/apt/lists/* \
    && python -c "from thrift.protocol import fastbinary"
COPY thrift thrift
COPY libs libs
COPY services/__init__.py services/__init__.py
COPY services/${SERVICE} services/${SERVICE}
# /srv/status-files: where status_image writes files for nginx (a volume there starts
# owned by habla, as this folder is).
RUN useradd --system habla && mkdir -p /srv/status-files && chown habla /srv/status-files
USER habla
CMD python -m services.${HABLA_SERVICE}
