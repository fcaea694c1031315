// Request and response schemas: one zod schema per shape, used for validation, TypeScript types and the
// generated openapi.yaml at once. Request schemas are strict (an unknown field is a 400); response schemas are
// open (clients must accept fields added later), which the OpenAPI document states by leaving
// additionalProperties out.
//
// One module per resource under schemas/; this index re-exports them all.
export * from './schemas/common.js';
export * from './schemas/models.js';
export * from './schemas/jobs.js';
export * from './schemas/report.js';
