// The demo's HTTP client: JSON requests, model upload, following a job over Server-Sent Events and a
// checked artifact download (the end-to-end tests drive the service with it too).
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createWriteStream, openAsBlob } from 'node:fs';
import path from 'node:path';
import { isTerminal } from '../jobs/state.js';

export interface SseMessage {
  event: string;
  data: unknown;
}

/**
 * Reads a Server-Sent Events stream and yields its messages until the server ends it.
 * Comments (keep-alives) are skipped; `data:` lines of one message are joined and parsed as JSON.
 */
export async function* readSse(body: ReadableStream<Uint8Array>): AsyncGenerator<SseMessage> {
  const decoder = new TextDecoder();
  let buffer = '';
  let event = 'message';
  let data: string[] = [];
  for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true });
    let newline: number;
    while ((newline = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, newline).replace(/\r$/, '');
      buffer = buffer.slice(newline + 1);
      if (line === '') {
        if (data.length > 0) {
          const text = data.join('\n');
          let parsed: unknown = text;
          try {
            parsed = JSON.parse(text);
          } catch {
            // not JSON: hand the text over as it is
          }
          yield { event, data: parsed };
        }
        event = 'message';
        data = [];
      } else if (line.startsWith(':')) {
        continue;
      } else if (line.startsWith('event:')) {
        event = line.slice(6).trim();
      } else if (line.startsWith('data:')) {
        data.push(line.slice(5).replace(/^ /, ''));
      }
    }
  }
}

export class ApiClient {
  constructor(
    readonly baseUrl: string,
    private readonly key: string,
  ) {}

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return { authorization: `Bearer ${this.key}`, ...extra };
  }

  async request<T>(method: string, route: string, body?: unknown): Promise<T> {
    const res = await fetch(`${this.baseUrl}${route}`, {
      method,
      headers: this.headers(body === undefined ? {} : { 'content-type': 'application/json' }),
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${route} → ${res.status}: ${text.slice(0, 500)}`);
    return (text ? JSON.parse(text) : null) as T;
  }

  /** A GET whose body is not JSON (the report page). */
  async text(route: string): Promise<string> {
    const res = await fetch(`${this.baseUrl}${route}`, { headers: this.headers() });
    const text = await res.text();
    if (!res.ok) throw new Error(`GET ${route} → ${res.status}: ${text.slice(0, 500)}`);
    return text;
  }

  async uploadModel(file: string): Promise<{ id: string; name: string }> {
    const form = new FormData();
    form.set('file', await openAsBlob(file), path.basename(file));
    const res = await fetch(`${this.baseUrl}/v1/models`, { method: 'POST', headers: this.headers(), body: form });
    const text = await res.text();
    if (!res.ok) throw new Error(`upload of ${file} → ${res.status}: ${text.slice(0, 500)}`);
    return JSON.parse(text) as { id: string; name: string };
  }

  /**
   * Polls GET /v1/models/:id until the workers' analysis of the upload is done or failed (or `timeoutMs`
   * passes): a job created after it is estimated from the model's measured MACs, not the upload-time bound.
   */
  async waitForAnalysis(modelId: string, timeoutMs = 120_000): Promise<{ analysis: string; macs: number | null; params: number | null }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const model = await this.request<{ analysis: string; macs: number | null; params: number | null }>('GET', `/v1/models/${modelId}`);
      if (model.analysis !== 'pending' || Date.now() > deadline) return model;
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }

  /** Follows GET /v1/jobs/:id/events until the terminal status; returns that status message's data. */
  async followJob(jobId: string, onMessage: (message: SseMessage) => void): Promise<Record<string, unknown>> {
    const res = await fetch(`${this.baseUrl}/v1/jobs/${jobId}/events`, { headers: this.headers({ accept: 'text/event-stream' }) });
    if (!res.ok || !res.body) throw new Error(`GET /v1/jobs/${jobId}/events → ${res.status}: ${await res.text()}`);
    let last: Record<string, unknown> | null = null;
    for await (const message of readSse(res.body)) {
      onMessage(message);
      if (message.event === 'status' && typeof message.data === 'object' && message.data !== null) {
        last = message.data as Record<string, unknown>;
        if (isTerminal(String(last.status))) break;
      }
    }
    if (!last || !isTerminal(String(last.status))) {
      throw new Error(`the event stream of job ${jobId} ended before the job finished (last status ${String(last?.status)})`);
    }
    return last;
  }

  /** Streams the artifact to `file` and checks the bytes against the X-Content-SHA256 header. */
  async downloadArtifact(jobId: string, file: string): Promise<{ sha256: string; bytes: number }> {
    const res = await fetch(`${this.baseUrl}/v1/jobs/${jobId}/artifact`, { headers: this.headers() });
    if (!res.ok || !res.body) throw new Error(`GET /v1/jobs/${jobId}/artifact → ${res.status}: ${await res.text()}`);
    const announced = res.headers.get('x-content-sha256');
    const hash = createHash('sha256');
    let bytes = 0;
    const out = createWriteStream(file);
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      hash.update(chunk);
      bytes += chunk.length;
      if (!out.write(chunk)) await once(out, 'drain');
    }
    await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
    const sha256 = hash.digest('hex');
    if (announced !== sha256) throw new Error(`artifact sha256 ${sha256} does not match the announced ${announced}`);
    return { sha256, bytes };
  }
}
