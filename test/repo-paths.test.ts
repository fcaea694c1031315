// The repository stands on its own: no tracked file names a path of the machine it was written on
// (the workspace folder it was cloned into, a sibling folder of notes), and every Markdown document a file names exists
// in the repository. Someone who clones it must find every reference inside it.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const MAX_BYTES = 4 * 1024 * 1024;

/** Paths that point outside the repository, wherever this checkout lives. */
const OUTSIDE = [
  { pattern: /(?<![\w.~-])\/work\/[\w.-]+/g, why: "a path of the authors' machine" },
  { pattern: /\.\.\/shared\b/g, why: 'a folder beside the repository' },
];
/** A Markdown document named in text: `docs/design.md`, [x](../README.md), BENCHMARKS.md. */
const MARKDOWN_NAME = /(?<![\w/.-])((?:\.{1,2}\/)?(?:[\w.-]+\/)*[\w-]+\.md)\b(?![\w(])/g;
/** Markdown files that code writes rather than refers to, each judged so. */
const WRITTEN_NOT_READ = new Map([
  ['OUT.md', 'benchmarks/accuracy_table.py: the --markdown output file in its usage line'],
  ['section.md', 'engine/tests/test_accuracy_table.py: the section the test has accuracy_table.py write'],
  ['ARCH.md', 'engine/tuckerize/reference.py: the training record it writes beside ARCH.onnx'],
  ['BENCH-OUT.md', 'test/bench-sections.test.ts: the scratch BENCHMARKS file the bench test writes in a temp folder'],
]);

function trackedTextFiles(): string[] {
  const listed = execFileSync('git', ['ls-files', '-z'], { cwd: ROOT, encoding: 'utf8' }).split('\0').filter(Boolean);
  return listed.filter((file) => {
    const full = path.join(ROOT, file);
    if (!existsSync(full) || statSync(full).size > MAX_BYTES) return false;
    return !readFileSync(full).subarray(0, 8192).includes(0);
  });
}

export function outsideReferences(text: string): { match: string; why: string }[] {
  return OUTSIDE.flatMap(({ pattern, why }) => [...text.matchAll(pattern)].map((m) => ({ match: m[0], why })));
}

export function markdownNames(text: string): string[] {
  return [...text.matchAll(MARKDOWN_NAME)].map((m) => m[1]!).filter((name) => !/^https?:/.test(name));
}

/** Whether `name`, as written in `fromFile`, is a tracked file (relative to that file or to the root). */
export function documentExists(name: string, fromFile: string, tracked: Set<string>): boolean {
  if (WRITTEN_NOT_READ.has(name)) return true;
  const candidates = [path.posix.join(path.posix.dirname(fromFile), name), path.posix.normalize(name)];
  if (candidates.some((c) => tracked.has(c))) return true;
  // A bare name (BENCHMARKS.md, security.md) refers to a document of that name somewhere in the tree.
  return !name.includes('/') && [...tracked].some((file) => path.posix.basename(file) === name);
}

test('no tracked file names a path outside the repository or a document it lacks', () => {
  const files = trackedTextFiles();
  assert.ok(files.length > 100, `git ls-files lists the repository (${files.length} files)`);
  const tracked = new Set(files);
  const problems: string[] = [];
  for (const file of files) {
    const text = readFileSync(path.join(ROOT, file), 'utf8');
    for (const { match, why } of outsideReferences(text)) problems.push(`${file}: ${match} (${why})`);
    for (const name of markdownNames(text)) {
      if (!documentExists(name, file, tracked)) problems.push(`${file}: ${name} (no such document in the repository)`);
    }
  }
  assert.deepEqual(problems, [], `write what the project needs into docs/ and refer to it there:\n${problems.join('\n')}`);
});

/** A Markdown file name that this file does not spell out (the scan above would take it for a reference). */
const md = (name: string) => [name, 'md'].join('.');

test('the checks catch what they are for', () => {
  // Assembled from parts, so this file itself names no such path or document.
  const workspace = ['', 'work', 'shared'].join('/');
  const sibling = ['..', 'shared'].join('/');
  // Paths inside the repository that merely have a directory of that name.
  const inside = [['benchmarks', 'work', 'x'].join('/'), ['.cache', 'bench', 'work', 'y'].join('/')];
  assert.deepEqual(
    outsideReferences(`see ${workspace}/${md('NOTES')} and ${sibling}/${md('PLAN')}; not ${inside[0]} or ${inside[1]}`).map((r) => r.match),
    [workspace, sibling],
  );
  const absent = md('MISSING');
  assert.deepEqual(markdownNames(`see docs/design.md, [x](../README.md) and ${absent}; https://example.org/a.md`), [
    'docs/design.md',
    '../README.md',
    absent,
  ]);
  const tracked = new Set(['README.md', 'docs/design.md', 'docs/evbmf.md']);
  assert.equal(documentExists('docs/design.md', 'README.md', tracked), true);
  assert.equal(documentExists('../README.md', 'docs/design.md', tracked), true);
  assert.equal(documentExists('evbmf.md', 'docs/design.md', tracked), true);
  assert.equal(documentExists(md('MISSING'), 'engine/tuckerize/vbmf.py', tracked), false);
  assert.equal(documentExists(['..', 'shared', md('PLAN')].join('/'), 'README.md', tracked), false);
  assert.equal(documentExists(`docs/${md('missing')}`, 'README.md', tracked), false);
});
