// POST/GET /v1/models: ONNX uploads, streamed into the artifact store and checked before a row exists.
import type { OnnxModel } from '@prisma/client';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import type { AppContext } from '../context.js';
import { NotFoundError } from '../errors.js';
import { inspectModelUpload, type TensorInfo } from '../onnx.js';
import { principalOf } from '../auth.js';
import { modelExample, modelPageExample } from '../examples.js';
import { IdParamsSchema, ModelPageSchema, ModelSchema, PageQuerySchema } from '../schemas.js';
import { AUTH, cleanFileName, ConditionalHeadersSchema, isUniqueViolation, jsonEtag, listPage, NOT_MODIFIED, notModified, problems } from './common.js';
import { receiveUpload, removeIfUnreferenced } from './uploads.js';

function publicTensor(t: TensorInfo) {
  return { name: t.name, type: t.type, dims: t.dims };
}

export function modelView(model: OnnxModel) {
  return {
    id: model.id,
    name: model.name,
    sha256: model.sha256,
    bytes: Number(model.bytes),
    opset: model.opset,
    inputs: (model.inputs as unknown as TensorInfo[]).map(publicTensor),
    outputs: (model.outputs as unknown as TensorInfo[]).map(publicTensor),
    params: model.params === null ? null : Number(model.params),
    macs: model.macs === null ? null : Number(model.macs),
    analysis: model.analysis,
    createdAt: model.createdAt.toISOString(),
  };
}

export const modelRoutes: FastifyPluginAsyncZod<{ ctx: AppContext }> = async (app, { ctx }) => {
  const { prisma, store, config } = ctx;

  app.post(
    '/v1/models',
    {
      schema: {
        operationId: 'uploadModel',
        summary: 'Upload an ONNX model',
        description:
          'multipart/form-data with the .onnx in field `file`. The model is checked (protobuf structure, no external ' +
          'data, loads in onnxruntime). Uploading the same bytes again returns the existing model with 200. `params` is ' +
          'set at once (every initializer element) and replaced by the engine analysis (weights only) when it is done; ' +
          '`macs` stays null until then. The analysis is queued for a worker: `analysis` is `pending` until the worker ' +
          'has filled `params` and `macs` (`done`) or given up (`failed`); poll GET /v1/models/{id} to see it change.',
        tags: ['models'],
        security: AUTH,
        consumes: ['multipart/form-data'],
        response: {
          200: ModelSchema.describe('these bytes were uploaded before: the existing model'),
          201: ModelSchema.describe('the new model'),
          ...problems(400, 401, 413, 415, 422, 429, 503),
        },
        docs: { headers: { 200: ['Location'], 201: ['Location'] }, examples: { 200: modelExample, 201: modelExample } },
      },
    },
    async (request, reply) => {
      const { tenantId } = principalOf(request);
      const upload = await receiveUpload(request, store, config.maxModelBytes, 'the .onnx model');
      const name = cleanFileName(upload.fileName, 'model.onnx');
      const existing = await prisma.onnxModel.findUnique({ where: { tenantId_sha256: { tenantId, sha256: upload.stored.sha256 } } });
      if (existing) return reply.code(200).header('location', `/v1/models/${existing.id}`).send(modelView(existing));

      let inspection;
      let modelFile: string;
      try {
        modelFile = await store.localPath(upload.stored.key);
        inspection = await inspectModelUpload(modelFile, name, config);
      } catch (err) {
        await removeIfUnreferenced(prisma, store, upload.stored.key);
        throw err;
      }
      let model: OnnxModel;
      try {
        model = await prisma.onnxModel.create({
          data: {
            tenantId,
            name,
            sha256: upload.stored.sha256,
            bytes: BigInt(upload.stored.bytes),
            storageKey: upload.stored.key,
            opset: inspection.summary.opset,
            inputs: inspection.inputs as object[],
            outputs: inspection.outputs as object[],
            // every initializer element; replaced by the engine's count (weights only) once analyze has run
            params: BigInt(inspection.summary.params),
          },
        });
      } catch (err) {
        // The same bytes uploaded concurrently: the other request created the row; answer like a duplicate.
        if (!isUniqueViolation(err)) throw err;
        const raced = await prisma.onnxModel.findUniqueOrThrow({ where: { tenantId_sha256: { tenantId, sha256: upload.stored.sha256 } } });
        return reply.code(200).header('location', `/v1/models/${raced.id}`).send(modelView(raced));
      }
      request.log.info({ modelId: model.id, bytes: upload.stored.bytes, opset: inspection.summary.opset, ops: inspection.summary.opCounts }, 'model uploaded');
      await ctx.analyzer?.schedule(model.id);
      return reply.code(201).header('location', `/v1/models/${model.id}`).send(modelView(model));
    },
  );

  app.get(
    '/v1/models',
    {
      schema: {
        operationId: 'listModels',
        summary: "List this tenant's models, newest first",
        tags: ['models'],
        security: AUTH,
        querystring: PageQuerySchema,
        response: { 200: ModelPageSchema, ...problems(400, 401, 429, 503) },
        docs: { examples: { 200: modelPageExample } },
      },
    },
    async (request) => {
      const { tenantId } = principalOf(request);
      const { limit, cursor } = request.query;
      return listPage(
        'model',
        { limit, cursor },
        (id) => prisma.onnxModel.findFirst({ where: { id, tenantId }, select: { id: true, createdAt: true } }),
        ({ where, ...args }) => prisma.onnxModel.findMany({ where: { tenantId, ...where }, ...args }),
        modelView,
      );
    },
  );

  app.get(
    '/v1/models/:id',
    {
      schema: {
        operationId: 'getModel',
        summary: 'Get one model',
        description: 'With If-None-Match: 304 while the model is unchanged (the ETag changes when the engine analysis fills params and MACs).',
        tags: ['models'],
        security: AUTH,
        params: IdParamsSchema,
        headers: ConditionalHeadersSchema,
        response: { 200: ModelSchema, ...NOT_MODIFIED, ...problems(400, 401, 404, 429, 503) },
        docs: { headers: { 200: ['ETag'], 304: ['ETag'] }, examples: { 200: modelExample } },
      },
    },
    async (request, reply) => {
      const { tenantId } = principalOf(request);
      const model = await prisma.onnxModel.findFirst({ where: { id: request.params.id, tenantId } });
      if (!model) throw new NotFoundError(`model ${request.params.id} does not exist for this API key's tenant`);
      const view = modelView(model);
      if (notModified(request, reply, jsonEtag(view))) return reply;
      return view;
    },
  );
};
