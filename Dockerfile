# Ballast image: the package, its CLI, workers and scheduler.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY actors ./actors
COPY domain ./domain
COPY infra ./infra
COPY schedules ./schedules
RUN pip install --no-cache-dir .
RUN useradd --create-home ballast && mkdir -p /keys && chown ballast /keys && chmod 700 /keys
USER ballast
ENTRYPOINT ["ballast"]
CMD ["--help"]
