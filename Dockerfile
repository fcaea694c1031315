# syntax=docker/dockerfile:1
# tuckerize images. Targets:
#   api     — Fastify API (node:20 on Debian bookworm slim)
#   worker  — BullMQ worker + the Python engine (Debian's python3-torch 1.13, onnx, scipy, numpy,
#             dataset-fashion-mnist) + onnxruntime-node for verification and benchmarks
# Build: docker build --target api -t tuckerize-api .   /   docker build --target worker -t tuckerize-worker .

ARG NODE_IMAGE=node:20-bookworm-slim

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
# For a GPU worker, base this stage on an image with CUDA-enabled PyTorch instead; the engine also runs on torch 2.x.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-torch python3-torchvision python3-onnx python3-scipy python3-numpy \
      dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/*
COPY engine/tuckerize ./engine/tuckerize
ENV ENGINE_PYTHON=/usr/bin/python3 \
    ENGINE_DIR=/app/engine \
    ENGINE_THREADS=2 \
    WORKER_CONCURRENCY=1
USER node
# Engine processes run in their own process group; SIGTERM to node drains (running jobs finish).
STOPSIGNAL SIGTERM
CMD ["node", "dist/src/worker.js"]
