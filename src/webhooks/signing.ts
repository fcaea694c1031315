// Standard Webhooks signatures (https://www.standardwebhooks.com): the secret is `whsec_` + base64 of the
// key bytes; each attempt is signed as HMAC-SHA256 over "{webhook-id}.{webhook-timestamp}.{body}" and sent
// as `webhook-signature: v1,<base64>`.
import { createHmac, randomBytes } from 'node:crypto';

const SECRET_PREFIX = 'whsec_';
/** The specification asks for 24 to 64 bytes of key. */
const SECRET_BYTES = 32;

export function newWebhookSecret(): string {
  return `${SECRET_PREFIX}${randomBytes(SECRET_BYTES).toString('base64')}`;
}

function keyOf(secret: string): Buffer {
  if (!secret.startsWith(SECRET_PREFIX)) throw new Error('a webhook secret starts with whsec_');
  return Buffer.from(secret.slice(SECRET_PREFIX.length), 'base64');
}

export interface SignedHeaders {
  'webhook-id': string;
  'webhook-timestamp': string;
  'webhook-signature': string;
}

/** The three headers of one attempt; `timestampSeconds` is the attempt's time (receivers reject old ones). */
export function signWebhook(secret: string, id: string, timestampSeconds: number, body: string): SignedHeaders {
  const signature = createHmac('sha256', keyOf(secret)).update(`${id}.${timestampSeconds}.${body}`).digest('base64');
  return { 'webhook-id': id, 'webhook-timestamp': String(timestampSeconds), 'webhook-signature': `v1,${signature}` };
}
