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
# sglang (and with it torch 2.14.1) is already in the image at the pinned version; install only what we add.
RUN pip install --no-cache-dir -e .


FROM base AS rl
# OpenRLHF's other needs at its pins (deepspeed 0.19.6, ray 2.55.0, ...), none of which replaces torch; then
# OpenRLHF itself without its pins, which would swap sglang's transformers (see rl/requirements.txt).
RUN pip install --no-cache-dir -r rl/requirements.txt \
    && pip install --no-cache-dir --no-deps openrlhf==0.11.2
# flash-attn 2: OpenRLHF imports flash_attn.bert_padding at module top. The image's flash_attn is SGLang's
# flash-attn-4 (flash_attn/cute only). No prebuilt wheel matches this torch/CUDA, so it is compiled against the
# image's torch (--no-build-isolation) for Ampere, Hopper and Blackwell; MAX_JOBS bounds the compiler's memory.
# The version is read from rl/preflight.py, whose check (the one `rl/train.py` runs before Ray) then passes.
ARG MAX_JOBS=8
ARG FLASH_ATTN_CUDA_ARCHS="80;90;100;120"
RUN FLASH_ATTENTION_FORCE_BUILD=TRUE MAX_JOBS=${MAX_JOBS} FLASH_ATTN_CUDA_ARCHS=${FLASH_ATTN_CUDA_ARCHS} \
        pip install --no-cache-dir --no-build-isolation \
        "$(python -c 'from rl.preflight import FLASH_ATTN_PIN; print(FLASH_ATTN_PIN)')" \
    && python -c 'from rl.preflight import flash_attn_problem as p; assert p() is None, p()'
CMD ["python", "rl/train.py", "--help"]


FROM base AS inference
CMD ["python", "-m", "programs.a2r", "--help"]
