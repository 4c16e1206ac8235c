# Ballast image: the package, its CLI, workers and scheduler.  Built once by compose's
# `migrate` service and run by all the others (docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Dependencies first (a layer that changes only with the lock), pinned and hash-checked.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY actors ./actors
COPY domain ./domain
COPY infra ./infra
COPY schedules ./schedules
RUN pip install --no-cache-dir --no-deps .
RUN useradd --create-home ballast && mkdir -p /keys && chown ballast /keys && chmod 700 /keys
USER ballast
ENTRYPOINT ["ballast"]
CMD ["--help"]
