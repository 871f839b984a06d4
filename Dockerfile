# γ-PO (nemo_gammapo) on NVIDIA's NeMo Framework container.
#
# Base: nvcr.io/nvidia/nemo:25.02.01 — the last NeMo Framework release that ships NeMo-Aligner (NVIDIA's
# changelog: Aligner and the NeMo 1.x path are deprecated from 25.04 on, "use 25.02 or prior"), and the
# release whose changelog matches NeMo 2.2.1's (the MoE, Llama-exporter and LoRA-fc1 fixes). It is built
# on nvcr.io/nvidia/pytorch:25.01-py3 (NeMo v2.2.1, requirements/manifest.json).
#
# Stack versions in this image vs. our pins in requirements/constraints-cpu.txt
# (tests/test_launch_docker.py checks every pin= value against that file; docker/check_stack.py checks
# every image= value that has a package version inside the image at build time):
#   stack: nemo-toolkit       image=2.2.1    pin=2.2.1   match
#   stack: nemo_aligner       image=0.7.0    pin=0.7.0   match
#   stack: megatron-core      image=0.11.1   pin=0.11.0  differs: patch release; NeMo r2.2.1 bumped mcore to 0.11.1 (Megatron-LM core_r0.11.0 branch, commit f62eb5b), bug fixes only
#   stack: torch              image=2.6.0a0  pin=none    not pinned: not in the pin file; scripts/setup_env.sh installs torch==2.13.0 (CPU build) for the CPU test stack; the image has the CUDA build of the PyTorch 25.01 container (our CPU shims are inactive on GPUs)
#   stack: transformer-engine image=as-built pin=none    not pinned: needs CUDA, cannot be installed in the CPU stack; the image's own build is used and recorded by check_stack.py
#   stack: apex               image=as-built pin=none    not pinned: needs CUDA (PyPI "apex" is an unrelated package); the image's own build (NeMo manifest: NVIDIA/apex 810ffae) is used and recorded
ARG BASE_IMAGE=nvcr.io/nvidia/nemo:25.02.01
FROM ${BASE_IMAGE}

# Versions check_stack.py asserts (the "image=" column above).
ARG EXPECT_NEMO=2.2.1
ARG EXPECT_ALIGNER=0.7.0
ARG EXPECT_MCORE=0.11.1

WORKDIR /opt/nemo_gammapo
# Only what the package needs; no .venv/, runs/ or tests data (docker/build.sh also keeps them out of the context).
COPY setup.py pyproject.toml README.md ./
COPY nemo_gammapo ./nemo_gammapo
COPY conf ./conf
COPY examples ./examples
COPY docker ./docker

# --no-deps: the container's NeMo / Aligner / megatron-core / TE / apex builds stay exactly as NVIDIA built them.
RUN pip install --no-cache-dir --no-deps -e . \
 && python docker/check_stack.py --nemo "${EXPECT_NEMO}" --aligner "${EXPECT_ALIGNER}" --mcore "${EXPECT_MCORE}" \
      --write /opt/nemo_gammapo/STACK_VERSIONS.txt

ENV PYTHONUNBUFFERED=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1 \
    TORCH_NCCL_AVOID_RECORD_STREAMS=1
