// A throwaway PostgreSQL cluster for tests that stop or restart the database: initdb + pg_ctl in a temp
// dir, its own port, its unix socket in that dir, run as the `postgres` user (initdb refuses root).
import { execFile } from 'node:child_process';
import { access, chown, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { freePort } from './ports.js';

const run = promisify(execFile);
const PG_USER = 'postgres';

/** The newest /usr/lib/postgresql/<v>/bin (Debian's layout), else the directory of pg_ctl on PATH. */
async function pgBinDir(): Promise<string> {
  try {
    const versions = (await readdir('/usr/lib/postgresql')).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a));
    for (const v of versions) {
      const dir = path.join('/usr/lib/postgresql', v, 'bin');
      try {
        await access(path.join(dir, 'initdb'));
        return dir;
      } catch {
        // this version has no server binaries; try the next
      }
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const { stdout } = await run('sh', ['-c', 'command -v pg_ctl']).catch(() => ({ stdout: '' }));
  if (!stdout.trim()) throw new Error('PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql');
  return path.dirname(stdout.trim());
}

async function idOf(user: string): Promise<{ uid: number; gid: number }> {
  const [{ stdout: uid }, { stdout: gid }] = await Promise.all([run('id', ['-u', user]), run('id', ['-g', user])]);
  return { uid: Number(uid.trim()), gid: Number(gid.trim()) };
}

export class ThrowawayPostgres {
  running = false;

  private constructor(
    readonly port: number,
    readonly dir: string,
    private readonly binDir: string,
    private readonly asRoot: boolean,
  ) {}

  static async create(): Promise<ThrowawayPostgres> {
    const binDir = await pgBinDir();
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tuckerize-fault-pg-'));
    const asRoot = process.getuid?.() === 0;
    const cluster = new ThrowawayPostgres(await freePort(), dir, binDir, asRoot);
    try {
      if (asRoot) {
        const { uid, gid } = await idOf(PG_USER);
        await chown(dir, uid, gid);
      }
      await cluster.pg('initdb', ['-D', cluster.dataDir, '-A', 'trust', '-U', PG_USER, '--no-sync', '-E', 'UTF8']);
      await cluster.start();
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
    return cluster;
  }

  get dataDir(): string {
    return path.join(this.dir, 'data');
  }

  url(database = 'postgres'): string {
    return `postgresql://${PG_USER}@127.0.0.1:${this.port}/${database}`;
  }

  /** Runs a PostgreSQL program as the postgres user (runuser when we are root). */
  private async pg(program: string, args: string[]): Promise<void> {
    const binary = path.join(this.binDir, program);
    const [command, argv] = this.asRoot ? ['runuser', ['-u', PG_USER, '--', binary, ...args]] : [binary, args];
    try {
      await run(command, argv, { timeout: 60_000 });
    } catch (err) {
      const log = await readFile(path.join(this.dir, 'server.log'), 'utf8').catch(() => '');
      const e = err as Error & { stderr?: string };
      throw new Error(`${program} ${args.join(' ')} failed: ${e.stderr || e.message}\n${log.slice(-2000)}`);
    }
  }

  async start(): Promise<void> {
    const options = [
      `-p ${this.port}`,
      `-k ${this.dir}`,
      '-c listen_addresses=127.0.0.1',
      // durability is not what these tests are about, and the machine is shared
      '-c fsync=off',
      '-c synchronous_commit=off',
      '-c full_page_writes=off',
    ].join(' ');
    await this.pg('pg_ctl', ['-D', this.dataDir, '-l', path.join(this.dir, 'server.log'), '-w', '-t', '60', '-o', options, 'start']);
    this.running = true;
  }

  /** `fast`: open sessions are terminated (clients get 57P01), like a restart by an operator or a failover. */
  async stop(mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    if (!this.running) return;
    await this.pg('pg_ctl', ['-D', this.dataDir, '-m', mode, '-w', '-t', '60', 'stop']);
    this.running = false;
  }

  async createDatabase(name: string): Promise<string> {
    if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`database name ${name} must be a plain lowercase identifier`);
    const client = new pg.Client({ connectionString: this.url() });
    await client.connect();
    try {
      await client.query(`CREATE DATABASE ${name}`);
    } finally {
      await client.end();
    }
    return this.url(name);
  }

  async destroy(): Promise<void> {
    try {
      await this.stop('immediate');
    } finally {
      await rm(this.dir, { recursive: true, force: true });
    }
  }
}
