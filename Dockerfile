# One image for the four services and the provisioning job: compose.yaml picks the command
# (`python -m order_service`, …, `python -m tools.provision`).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# The whole dependency tree from the lock (pinned, hashes checked), in a layer of its own that a
# change of the sources does not rebuild; then the project itself, which adds no dependency.
COPY requirements.lock .
RUN pip install --require-hashes -r requirements.lock
COPY . .
RUN pip install --no-deps . && rm -rf /src/build

# Run from an empty directory as an unprivileged user: the installed packages, not the sources.
WORKDIR /app
RUN useradd --system --no-create-home --uid 10001 saga
USER saga

EXPOSE 8000 8001 8002 8003
CMD ["python", "-m", "order_service"]
