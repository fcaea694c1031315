// `npm run cli -- keys ...`: in-process through runCli, and once as a real process for exit codes.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { authenticate } from '../src/api/auth.js';
import { runCli } from '../src/cli.js';
import { createTestEnv, type TestEnv } from './helpers/env.js';

const run = promisify(execFile);
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
let env: TestEnv;
before(async () => {
  env = await createTestEnv();
});
after(async () => env?.cleanup());

async function cli(...args: string[]): Promise<string[]> {
  const lines: string[] = [];
  await runCli(args, (line) => lines.push(line), env.prisma);
  return lines;
}

describe('keys', () => {
  test('create prints a working key and creates the tenant once', async () => {
    const [key] = await cli('keys', 'create', '--tenant', 'initech');
    assert.match(key ?? '', /^tk_[0-9a-f]{12}_[A-Za-z0-9_-]{32}$/);
    const principal = await authenticate(env.prisma, `Bearer ${key}`);
    const [second] = await cli('keys', 'create', '--tenant', 'initech');
    assert.equal((await authenticate(env.prisma, `Bearer ${second}`)).tenantId, principal.tenantId);
    assert.equal(await env.prisma.tenant.count({ where: { name: 'initech' } }), 1);
  });

  test('list shows prefixes and state, never secrets; revoke disables a key', async () => {
    const [key] = await cli('keys', 'create', '--tenant', 'hooli');
    const prefix = key!.split('_')[1]!;
    const listed = await cli('keys', 'list', '--tenant', 'hooli');
    assert.equal(listed.length, 1);
    assert.match(listed[0]!, new RegExp(`^${prefix}\\thooli\\t.*\\tactive$`));
    assert.equal(listed.join('\n').includes(key!), false);
    assert.deepEqual(await cli('keys', 'revoke', prefix), [`revoked ${prefix}`]);
    await assert.rejects(authenticate(env.prisma, `Bearer ${key}`), /revoked/);
    assert.match((await cli('keys', 'list', '--tenant', 'hooli'))[0]!, /revoked /);
    await assert.rejects(cli('keys', 'revoke', prefix), /already revoked/);
    await assert.rejects(cli('keys', 'revoke', 'ffffffffffff'), /no key with prefix/);
  });

  test('usage errors', async () => {
    await assert.rejects(cli('keys', 'create'), /needs --tenant/);
    await assert.rejects(cli('keys', 'create', '--tenant', '../x'), /tenant names/);
    await assert.rejects(cli('tenants', 'list'), /usage:/);
    await assert.rejects(cli('keys', 'create', '--tenant', 'a', '--admin'), /Unknown option/);
  });

  test('as a process: the key on stdout and exit 0; an error is one line on stderr and exit 2', async () => {
    const tsx = path.join(repo, 'node_modules', '.bin', 'tsx');
    const environment = { PATH: process.env.PATH ?? '', DATABASE_URL: env.config.databaseUrl };
    const ok = await run(tsx, ['src/cli.ts', 'keys', 'create', '--tenant', 'proc'], { cwd: repo, env: environment });
    assert.match(ok.stdout, /^tk_[0-9a-f]{12}_\S{32}\n$/);
    await assert.rejects(run(tsx, ['src/cli.ts', 'keys', 'revoke'], { cwd: repo, env: environment }), (err: { code: number; stderr: string }) => {
      assert.equal(err.code, 2);
      assert.equal(err.stderr, 'tuckerize cli: keys revoke needs exactly one key PREFIX (see keys list)\n');
      return true;
    });
  });
});
