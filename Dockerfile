# syntax=docker/dockerfile:1
# tuckerize images. Targets:
#   api     — Fastify API (node:20 on Debian bookworm slim)
#   worker     — BullMQ worker + the Python engine (Debian's python3-torch 1.13, onnx, scipy, numpy,
#                dataset-fashion-mnist) + onnxruntime-node for verification and benchmarks; CPU only
#   worker-gpu — the same worker on the official PyTorch CUDA image (torch 2.x, CUDA 12): one per GPU,
#                chosen with CUDA_VISIBLE_DEVICES (docker-compose.yml, profile gpu)
# Build: docker build --target api -t tuckerize-api .   /   docker build --target worker -t tuckerize-worker .
#        docker build --target worker-gpu -t tuckerize-worker-gpu .

ARG NODE_IMAGE=node:20-bookworm-slim
# Official PyTorch image (Docker Hub pytorch/pytorch): Ubuntu 22.04, conda Python 3.11, torch 2.5.1 + CUDA 12.4.
ARG TORCH_CUDA_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

# ---- dependencies (all, for the TypeScript build) ----
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
# onnxruntime-node's CPU binary ships inside the package; never fetch the CUDA one at install time.
ENV ONNXRUNTIME_NODE_INSTALL_CUDA=skip
COPY package.json package-lock.json ./
COPY prisma ./prisma
COPY prisma.config.ts ./
RUN npm ci --no-audit --no-fund \
 && npx prisma generate

# ---- build: TypeScript → dist/ ----
FROM deps AS build
COPY tsconfig.json ./
COPY src ./src
RUN npx tsc -p tsconfig.json --outDir dist \
 && npm prune --omit=dev --no-audit --no-fund

# ---- runtime base shared by api and worker ----
FROM ${NODE_IMAGE} AS runtime
WORKDIR /app
ENV NODE_ENV=production \
    PORT=8080 \
    STORAGE_DIR=/data/storage
# Pruned node_modules keeps the generated Prisma client (node_modules/.prisma) and onnxruntime-node.
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
# migrate.ts applies these at startup (dist/src/db → ../../../prisma/migrations).
COPY prisma ./prisma
RUN mkdir -p /data/storage && chown -R node:node /data

# ---- api ----
# No Python here: the upload-time `analyze` (params/MACs of an uploaded model) is best-effort and stays null;
# every job's report has them from the worker. To fill them at upload, run the API from the worker image
# (`docker run ... tuckerize-worker node dist/src/server.js`).
FROM runtime AS api
USER node
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:'+(process.env.PORT||8080)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
CMD ["node", "dist/src/server.js"]

# ---- worker ----
FROM runtime AS worker
# The same Debian packages the engine is developed and tested against (bookworm: torch 1.13.1, onnx 1.12).
# For GPUs use the worker-gpu target below (torch 2.x with CUDA); the engine runs on both.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-torch python3-torchvision python3-onnx python3-scipy python3-numpy \
      dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/*
COPY engine/tuckerize ./engine/tuckerize
ENV ENGINE_PYTHON=/usr/bin/python3 \
    ENGINE_DIR=/app/engine \
    ENGINE_THREADS=2 \
    WORKER_CONCURRENCY=1 \
    WORKER_METRICS_PORT=9464
USER node
EXPOSE 9464
# Engine processes run in their own process group; SIGTERM to node drains (running jobs finish).
STOPSIGNAL SIGTERM
CMD ["node", "dist/src/worker.js"]

# ---- worker-gpu ----
# Debian's Fashion-MNIST package (the builtin dataset) for the CUDA image, which is Ubuntu-based.
FROM debian:bookworm-slim AS fashion-mnist
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/*

FROM ${NODE_IMAGE} AS node-binary

FROM ${TORCH_CUDA_IMAGE} AS worker-gpu
WORKDIR /app
# The official Node.js binary (glibc ≥ 2.28; Ubuntu 22.04 has 2.35) and the built app from the shared stages.
COPY --from=node-binary /usr/local/bin/node /usr/local/bin/node
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY prisma ./prisma
COPY --from=fashion-mnist /usr/share/datasets/fashion-mnist /usr/share/datasets/fashion-mnist
# torch and torchvision come with the image; the engine's other Python dependencies, pinned.
RUN python -m pip install --no-cache-dir onnx==1.16.2 scipy==1.14.1 \
 && useradd --create-home --uid 1000 node \
 && mkdir -p /data/work && chown -R node:node /data
COPY engine/tuckerize ./engine/tuckerize
# CUDA_VISIBLE_DEVICES is set per service (one GPU per worker); the engine fine-tunes on cuda:0 of what it sees
# and names the device in every report and in the worker's /metrics.
ENV NODE_ENV=production \
    ENGINE_PYTHON=/opt/conda/bin/python \
    ENGINE_DIR=/app/engine \
    ENGINE_THREADS=4 \
    WORKER_CONCURRENCY=1 \
    WORK_DIR=/data/work \
    WORKER_METRICS_PORT=9464 \
    # CUDA reserves tens of GiB of virtual address space, which an RLIMIT_AS cap would refuse; GPU memory
    # is bounded by the device, host memory by the container's limit.
    ENGINE_MEMORY_LIMIT_MB=0 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER node
EXPOSE 9464
STOPSIGNAL SIGTERM
CMD ["node", "dist/src/worker.js"]

