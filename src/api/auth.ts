// API keys: `tk_<prefix>_<secret>`. Only the sha256 of the whole key is stored; the prefix finds the row and
// the hashes are compared in constant time, so a key cannot be recovered from the database or guessed by timing.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import type { PrismaClient } from '../db/client.js';
import { UnauthorizedError } from './errors.js';

const KEY_PATTERN = /^tk_([0-9a-f]{12})_([A-Za-z0-9_-]{32})$/;

export interface NewApiKey {
  key: string;
  prefix: string;
  hash: string;
}

export function hashApiKey(key: string): string {
  return createHash('sha256').update(key).digest('hex');
}

export function generateApiKey(): NewApiKey {
  const prefix = randomBytes(6).toString('hex');
  const key = `tk_${prefix}_${randomBytes(24).toString('base64url')}`;
  return { key, prefix, hash: hashApiKey(key) };
}

/** The prefix of a well-formed key, else undefined. Used to bucket rate limits per key before auth runs. */
export function keyPrefixOf(authorization: string | undefined): string | undefined {
  const match = /^Bearer\s+(\S+)$/i.exec(authorization ?? '');
  return match ? KEY_PATTERN.exec(match[1] ?? '')?.[1] : undefined;
}

export async function createApiKeyForTenant(prisma: PrismaClient, tenantName: string): Promise<NewApiKey & { tenantId: string }> {
  const tenant = await prisma.tenant.upsert({ where: { name: tenantName }, create: { name: tenantName }, update: {} });
  const created = generateApiKey();
  await prisma.apiKey.create({ data: { tenantId: tenant.id, prefix: created.prefix, hash: created.hash } });
  return { ...created, tenantId: tenant.id };
}

/** A hash no key produces; compared against when the prefix is unknown so both paths do the same work. */
const DUMMY_HASH = hashApiKey('tk_000000000000_' + 'x'.repeat(32));

export interface Principal {
  tenantId: string;
  apiKeyId: string;
}

export async function authenticate(prisma: PrismaClient, authorization: string | undefined): Promise<Principal> {
  const key = presentedKey(authorization);
  return verify(prisma, key, hashApiKey(key));
}

/** The key in a well-formed `Bearer tk_…` header; anything else is refused with a detail that says why. */
function presentedKey(authorization: string | undefined): string {
  if (!authorization) {
    throw new UnauthorizedError('missing Authorization header; send "Authorization: Bearer <api key>" (create one with `npm run cli -- keys create --tenant NAME`)');
  }
  const bearer = /^Bearer\s+(\S+)$/i.exec(authorization);
  if (!bearer) throw new UnauthorizedError('the Authorization header must be "Bearer <api key>"');
  const key = bearer[1] ?? '';
  if (!KEY_PATTERN.test(key)) throw new UnauthorizedError('malformed API key; keys look like tk_<12 hex>_<32 chars>');
  return key;
}

async function verify(prisma: PrismaClient, key: string, hash: string): Promise<Principal> {
  const prefix = KEY_PATTERN.exec(key)?.[1] ?? '';
  const row = await prisma.apiKey.findUnique({ where: { prefix } });
  const presented = Buffer.from(hash, 'hex');
  const expected = Buffer.from(row?.hash ?? DUMMY_HASH, 'hex');
  const matches = timingSafeEqual(presented, expected) && row !== null;
  if (!matches || !row) throw new UnauthorizedError('invalid API key; check the key or create a new one');
  if (row.revokedAt) throw new UnauthorizedError('this API key was revoked; create a new one');
  return { tenantId: row.tenantId, apiKeyId: row.id };
}

/**
 * Authentication with a short-lived in-process cache of verified keys, so a valid request costs no database
 * round trip. Entries are keyed by the sha256 of the whole key (a wrong secret never hits an entry) and are
 * trusted for `ttlMs`: a key revoked in the database is still accepted by this process for at most that long.
 * After that the next request reads the key again; the entry stays as "known valid" until a read refuses the
 * key, so a client's requests are not counted against its address limit each time its entry goes stale.
 * Failures are not cached; they are throttled per client address before authentication runs (http-limits.ts).
 */
export class Authenticator {
  private readonly verified = new Map<string, { principal: Principal; expiresAt: number }>();

  constructor(
    private readonly prisma: PrismaClient,
    private readonly ttlMs: number,
    private readonly maxEntries = 10_000,
    private readonly now: () => number = Date.now,
  ) {}

  async authenticate(authorization: string | undefined): Promise<Principal> {
    const key = presentedKey(authorization);
    const hash = hashApiKey(key);
    const entry = this.verified.get(hash);
    if (entry && entry.expiresAt > this.now()) return entry.principal;
    let principal: Principal;
    try {
      principal = await verify(this.prisma, key, hash);
    } catch (err) {
      this.verified.delete(hash);
      throw err;
    }
    if (this.ttlMs > 0) {
      // A Map iterates in insertion order: re-inserting keeps recently verified keys last; when full, the
      // longest unverified entry goes.
      this.verified.delete(hash);
      if (this.verified.size >= this.maxEntries) this.verified.delete(this.verified.keys().next().value as string);
      this.verified.set(hash, { principal, expiresAt: this.now() + this.ttlMs });
    }
    return principal;
  }

  /** Whether the last database read of this header's key accepted it (no database read here). */
  isKnownValid(authorization: string | undefined): boolean {
    const match = /^Bearer\s+(\S+)$/i.exec(authorization ?? '');
    if (!match || !KEY_PATTERN.test(match[1] ?? '')) return false;
    return this.verified.has(hashApiKey(match[1] ?? ''));
  }
}

declare module 'fastify' {
  interface FastifyRequest {
    principal: Principal | null;
  }
}

export function principalOf(request: FastifyRequest): Principal {
  if (!request.principal) throw new UnauthorizedError('authentication required; send "Authorization: Bearer <api key>"');
  return request.principal;
}
