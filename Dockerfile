# GPU image: SGLang's official image of the pinned version, with this project installed on top.
# Build: docker build -t a2r-sglang .    Run: docker run --gpus all --ipc=host a2r-sglang python -m programs.a2r --n 4
FROM lmsysorg/sglang:v0.5.23

WORKDIR /opt/a2r
COPY pyproject.toml README.md ./
COPY programs programs
COPY engine engine
COPY rl rl
COPY benchmarks benchmarks
# sglang (and with it torch) is already in the image at the pinned version; install only what we add.
RUN pip install --no-cache-dir -e .

CMD ["python", "-m", "programs.a2r", "--help"]
