FROM ubuntu:24.04

ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      git vim nano zip unzip \
      python3 python3-pip python3-venv \
      build-essential curl wget ca-certificates \
      openssh-server sudo \
 && rm -rf /var/lib/apt/lists/*

# The user E2B templates run commands as.
RUN useradd --create-home --shell /bin/bash user \
 && mkdir -p /workspace && chown user:user /workspace
WORKDIR /home/user
