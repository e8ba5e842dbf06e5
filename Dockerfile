# The orchestrator host's image (bridge, control, beat, Flower); Macs install `workers` with pip.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY workers ./workers
RUN pip install --no-cache-dir '.[orchestrator]' && useradd --create-home ollama-cloud
USER ollama-cloud
ENV PYTHONUNBUFFERED=1
CMD ["ollama-cloud", "--help"]
