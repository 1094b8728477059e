# Image for the chat page (docker compose --profile chat). CPU torch is fine for CLIP: its
# wheels come first, from PyTorch's CPU index (pip keeps them: 2.14.1+cpu satisfies the pin),
# about 4.6 GB less than PyPI's CUDA build. Keep the versions those of pyproject.toml.
FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1 \
        --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY rar_agent ./rar_agent
RUN pip install --no-cache-dir ".[ui,providers]"
EXPOSE 7860
CMD ["rar-agent", "chat", "--host", "0.0.0.0", "--port", "7860"]
