"""Prometheus metrics of the status image server (served on /metrics)."""

from __future__ import annotations

import prometheus_client

REQUESTS = prometheus_client.Counter(
    "habla_status_requests_total", "Requests answered, by endpoint and status code", ["endpoint", "code"]
)
# Buckets from 100 µs (a memory hit on an idle machine) to 1 s (a cold site whose
# config must come from MySQL on a loaded one).
LATENCY = prometheus_client.Histogram(
    "habla_status_request_seconds",
    "Time from request parsed to response written, by endpoint",
    ["endpoint"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
CACHE_HITS = prometheus_client.Counter("habla_status_cache_hits_total", "Site answers served from process memory")
CACHE_MISSES = prometheus_client.Counter(
    "habla_status_cache_misses_total", "Site answers that had to load the site from Redis/MySQL first"
)
NOTIFICATIONS = prometheus_client.Counter(
    "habla_status_notifications_total", "Pub/sub notifications applied, by kind", ["kind"]
)
REFRESH_CHANGES = prometheus_client.Counter(
    "habla_status_refresh_corrections_total",
    "Site states the periodic refresh found different from memory (a missed notification or an expired status)",
)
REDIS_ERRORS = prometheus_client.Counter(
    "habla_status_redis_errors_total", "Redis operations that failed (sites are answered offline meanwhile)"
)
REDIS_UP = prometheus_client.Gauge("habla_status_redis_up", "1 while the last Redis refresh succeeded, else 0")
SITES_CACHED = prometheus_client.Gauge("habla_status_sites_cached", "Sites held in process memory")
FILES_WRITTEN = prometheus_client.Counter(
    "habla_status_files_written_total", "Sites whose answers were written as files for nginx (HABLA_STATUS_FILES_DIR)"
)
FILE_ERRORS = prometheus_client.Counter(
    "habla_status_file_errors_total", "Status files that could not be written or removed (Tornado answers those sites)"
)
