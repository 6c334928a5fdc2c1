# The wsinuclei plugin image for the Digital Slide Archive (slicer_cli_web runs it). Layout as HistomicsTK's:
# the working directory holds slicer_cli_list.json and one folder per CLI, and docker-entrypoint.sh answers
#   docker run IMAGE --list_cli | docker run IMAGE NucleiDetection --xml | docker run IMAGE NucleiDetection ARGS...
# Build: docker build -t wsinuclei/dsa .   Then in the DSA: Slicer CLI Web tasks -> upload the image name.
FROM python:3.11-slim

# A GPU host's NVIDIA runtime mounts its driver into containers that ask for it.
LABEL com.nvidia.volumes.needed="nvidia_driver"
LABEL maintainer="wsinuclei developers" \
      org.opencontainers.image.title="wsinuclei DSA plugin" \
      org.opencontainers.image.description="Deep-learning nuclei detection as a Digital Slide Archive CLI"

# torch/torchvision come from PyPI as CUDA builds: the same image runs on CPU hosts and GPU hosts.
COPY . /opt/wsinuclei
RUN pip install --no-cache-dir /opt/wsinuclei

WORKDIR /opt/wsinuclei/src/wsinuclei/dsa
# Fail the build, not the first job, when the entry point or the XML cannot load.
RUN python -m wsinuclei.dsa --list_cli && python -m wsinuclei.dsa NucleiDetection --xml > /dev/null

ENV PYTHONUNBUFFERED=TRUE
ENTRYPOINT ["/bin/bash", "docker-entrypoint.sh"]
