# GPU images: SGLang's official image of the pinned version, with this project installed on top.
#   Inference (the default target):  docker build -t a2r-sglang .
#       docker run --gpus all --ipc=host a2r-sglang python -m programs.a2r --n 4
#   Synthesizer RL (OpenRLHF):        docker build --target rl -t a2r-sglang-rl .
#       docker run --gpus all --ipc=host --shm-size 16g a2r-sglang-rl python rl/train.py --dataset ...
# The default target is the last stage, so `rl` comes before it and a plain build never compiles flash-attn.
FROM lmsysorg/sglang:v0.5.23 AS base

WORKDIR /opt/a2r
COPY pyproject.toml README.md ./
COPY programs programs
COPY engine engine
COPY rl rl
COPY benchmarks benchmarks
COPY doctor doctor
# sglang (and with it torch 2.14.1) is already in the image at the pinned version, with whatever the image set on
# purpose (NCCL, kernels): the project goes in --no-deps, so pip does not walk sglang's and torch's pins and
# "repair" those, and then its own dependencies (pyproject.toml's, less sglang; a test keeps the two lists equal).
RUN pip install --no-cache-dir --no-deps -e . \
    && pip install --no-cache-dir "math-verify[antlr4_13_2]" datasets rich matplotlib fastapi uvicorn


FROM base AS rl
# OpenRLHF's other needs at its pins (deepspeed 0.19.6, ray 2.55.0, ...), none of which replaces torch; then
# OpenRLHF itself without its pins, which would swap sglang's transformers (see rl/requirements.txt).
RUN pip install --no-cache-dir -r rl/requirements.txt \
    && pip install --no-cache-dir --no-deps openrlhf==0.11.2
# flash-attn 2: OpenRLHF imports flash_attn.bert_padding at module top. The image's flash_attn is SGLang's
# flash-attn-4 (flash_attn/cute only). No prebuilt wheel matches this torch/CUDA, and the release's source
# compiles with C++17, which torch 2.14 refuses: rl/flash_attn_build.py builds it patched to C++20 (what
# flash-attention PR #2899 does), without its flash_attn/cute files (they would overwrite flash-attn-4's),
# then runs rl/preflight.py's check. Each architecture is a full compile: build for where it will run
# (default Hopper, "90"; e.g. --build-arg FLASH_ATTN_CUDA_ARCHS="80;90"). MAX_JOBS unset: flash-attn sizes its
# jobs to this host's memory (about 9 GB each); set it only to go lower.
ARG FLASH_ATTN_CUDA_ARCHS
ARG MAX_JOBS
RUN python -m rl.flash_attn_build ${FLASH_ATTN_CUDA_ARCHS:+--archs "$FLASH_ATTN_CUDA_ARCHS"} ${MAX_JOBS:+--jobs "$MAX_JOBS"}
CMD ["python", "rl/train.py", "--help"]


FROM base AS inference
CMD ["python", "-m", "programs.a2r", "--help"]
