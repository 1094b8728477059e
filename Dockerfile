# Image for the chat page (docker compose --profile chat). CPU torch is fine for CLIP.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY rar_agent ./rar_agent
RUN pip install --no-cache-dir ".[ui,providers]"
EXPOSE 7860
CMD ["rar-agent", "chat", "--host", "0.0.0.0", "--port", "7860"]
