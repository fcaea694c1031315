// BENCHMARKS.md sections owned by one script sit between `<!-- NAME:begin -->` and `<!-- NAME:end -->`;
// a script replaces its own section (appending it the first time) and leaves the rest of the file alone.
import { readFile, writeFile } from 'node:fs/promises';

export async function replaceSection(file: string, name: string, body: string): Promise<void> {
  const previous = await readFile(file, 'utf8').catch(() => '');
  const block = `<!-- ${name}:begin -->\n${body.trimEnd()}\n<!-- ${name}:end -->`;
  const pattern = new RegExp(`<!-- ${name}:begin -->[\\s\\S]*?<!-- ${name}:end -->`);
  const next = pattern.test(previous)
    ? previous.replace(pattern, () => block)
    : `${previous.trimEnd()}\n\n${block}\n`;
  await writeFile(file, next);
}
