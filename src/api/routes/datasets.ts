// POST/GET /v1/datasets: .npz arrays or .zip images for fine-tuning and evaluation.
import type { Dataset } from '@prisma/client';
import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import { principalOf } from '../auth.js';
import type { AppContext } from '../context.js';
import { inspectDataset } from '../../security/index.js';
import { NotFoundError, UnsupportedMediaTypeError } from '../errors.js';
import { datasetExample, datasetPageExample } from '../examples.js';
import { DatasetPageSchema, DatasetSchema, IdParamsSchema, PageQuerySchema } from '../schemas.js';
import { AUTH, cleanFileName, ConditionalHeadersSchema, isUniqueViolation, jsonEtag, listPage, NOT_MODIFIED, notModified, problems } from './common.js';
import { receiveUpload, removeIfUnreferenced } from './uploads.js';

export function datasetView(dataset: Dataset) {
  return {
    id: dataset.id,
    name: dataset.name,
    format: dataset.format as 'npz' | 'zip',
    sha256: dataset.sha256,
    bytes: Number(dataset.bytes),
    info: dataset.info as Record<string, unknown>,
    createdAt: dataset.createdAt.toISOString(),
  };
}

function formatFromName(name: string): 'npz' | 'zip' | undefined {
  const lower = name.toLowerCase();
  if (lower.endsWith('.npz')) return 'npz';
  if (lower.endsWith('.zip')) return 'zip';
  return undefined;
}

export const datasetRoutes: FastifyPluginAsyncZod<{ ctx: AppContext }> = async (app, { ctx }) => {
  const { prisma, store, config } = ctx;

  app.post(
    '/v1/datasets',
    {
      schema: {
        operationId: 'uploadDataset',
        summary: 'Upload a dataset',
        description:
          'multipart/form-data with the archive in field `file`: an .npz (numpy.savez; arrays `x` [N,C,H,W] or [N,H,W], ' +
          'optional `y` labels) or a .zip of images (one folder per class). Names, sizes, symlinks and array dtypes are ' +
          'checked before it is accepted. The same bytes again return the existing dataset with 200.',
        tags: ['datasets'],
        security: AUTH,
        consumes: ['multipart/form-data'],
        response: {
          200: DatasetSchema.describe('these bytes were uploaded before: the existing dataset'),
          201: DatasetSchema.describe('the new dataset'),
          ...problems(400, 401, 413, 415, 422, 429, 503),
        },
        docs: { headers: { 200: ['Location'], 201: ['Location'] }, examples: { 200: datasetExample, 201: datasetExample } },
      },
    },
    async (request, reply) => {
      const { tenantId } = principalOf(request);
      const upload = await receiveUpload(request, store, config.maxDatasetBytes, 'the .npz or .zip dataset');
      const name = cleanFileName(upload.fileName, 'dataset');
      const declared = formatFromName(name);
      if (upload.fileName && /\.[A-Za-z0-9]+$/.test(name) && !declared) {
        await removeIfUnreferenced(prisma, store, upload.stored.key);
        throw new UnsupportedMediaTypeError(`${name}: datasets must be .npz (numpy.savez) or .zip (images) files`);
      }
      const existing = await prisma.dataset.findUnique({ where: { tenantId_sha256: { tenantId, sha256: upload.stored.sha256 } } });
      if (existing) return reply.code(200).header('location', `/v1/datasets/${existing.id}`).send(datasetView(existing));

      let inspection;
      try {
        inspection = await inspectDataset(await store.localPath(upload.stored.key), upload.stored.bytes);
      } catch (err) {
        await removeIfUnreferenced(prisma, store, upload.stored.key);
        throw err;
      }
      if (declared && declared !== inspection.format) {
        await removeIfUnreferenced(prisma, store, upload.stored.key);
        throw new UnsupportedMediaTypeError(
          `${name} is named .${declared} but holds ${inspection.format === 'npz' ? '.npy arrays (an .npz)' : 'images (a .zip)'}; rename it to .${inspection.format}`,
        );
      }
      const { format, info } = inspection;
      let dataset: Dataset;
      try {
        dataset = await prisma.dataset.create({
          data: {
            tenantId,
            name,
            format,
            sha256: upload.stored.sha256,
            bytes: BigInt(upload.stored.bytes),
            storageKey: upload.stored.key,
            info: info as object,
          },
        });
      } catch (err) {
        if (!isUniqueViolation(err)) throw err;
        const raced = await prisma.dataset.findUniqueOrThrow({ where: { tenantId_sha256: { tenantId, sha256: upload.stored.sha256 } } });
        return reply.code(200).header('location', `/v1/datasets/${raced.id}`).send(datasetView(raced));
      }
      request.log.info({ datasetId: dataset.id, bytes: upload.stored.bytes, format }, 'dataset uploaded');
      return reply.code(201).header('location', `/v1/datasets/${dataset.id}`).send(datasetView(dataset));
    },
  );

  app.get(
    '/v1/datasets',
    {
      schema: {
        operationId: 'listDatasets',
        summary: "List this tenant's datasets, newest first",
        tags: ['datasets'],
        security: AUTH,
        querystring: PageQuerySchema,
        response: { 200: DatasetPageSchema, ...problems(400, 401, 429, 503) },
        docs: { examples: { 200: datasetPageExample } },
      },
    },
    async (request) => {
      const { tenantId } = principalOf(request);
      const { limit, cursor } = request.query;
      return listPage(
        'dataset',
        { limit, cursor },
        (id) => prisma.dataset.findFirst({ where: { id, tenantId }, select: { id: true, createdAt: true } }),
        ({ where, ...args }) => prisma.dataset.findMany({ where: { tenantId, ...where }, ...args }),
        datasetView,
      );
    },
  );

  app.get(
    '/v1/datasets/:id',
    {
      schema: {
        operationId: 'getDataset',
        summary: 'Get one dataset',
        description: 'With If-None-Match: 304 while the dataset is unchanged.',
        tags: ['datasets'],
        security: AUTH,
        params: IdParamsSchema,
        headers: ConditionalHeadersSchema,
        response: { 200: DatasetSchema, ...NOT_MODIFIED, ...problems(400, 401, 404, 429, 503) },
        docs: { headers: { 200: ['ETag'], 304: ['ETag'] }, examples: { 200: datasetExample } },
      },
    },
    async (request, reply) => {
      const { tenantId } = principalOf(request);
      const dataset = await prisma.dataset.findFirst({ where: { id: request.params.id, tenantId } });
      if (!dataset) throw new NotFoundError(`dataset ${request.params.id} does not exist for this API key's tenant`);
      const view = datasetView(dataset);
      if (notModified(request, reply, jsonEtag(view))) return reply;
      return view;
    },
  );
};
