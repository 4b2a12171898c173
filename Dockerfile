# mlip on a CUDA PyTorch base image: torch (with Triton) comes from the base, mlip brings the rest.
#   docker build -t mlip .
#   docker run --gpus all -v $PWD:/work -w /work mlip train configs/example.yaml
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

WORKDIR /opt/mlip
COPY pyproject.toml README.md ./
COPY mlip ./mlip
COPY configs ./configs
COPY data ./data
# torch is already installed in the image and satisfies mlip's torch requirement, so pip keeps it
RUN pip install --no-cache-dir ".[wandb]" && mlip --version

ENTRYPOINT ["mlip"]
CMD ["--help"]
