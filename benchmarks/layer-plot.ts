// The per-layer profile as a scatter plot (SVG): each rewritten layer's MACs reduction (x) against its
// measured speed-up (y), both on log axes, with the line y = x where time falls as much as MACs do.
// Points well below the line are the layers whose replacement runs slower than its MACs promise.
import type { LayerProfile } from '../src/worker/profile.js';

const W = 640;
const H = 440;
const M = { left: 64, right: 24, top: 40, bottom: 56 };

function escape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** Powers-of-two ticks covering [lo, hi]. */
function ticks(lo: number, hi: number): number[] {
  const out: number[] = [];
  for (let v = 2 ** Math.floor(Math.log2(lo)); v <= hi * 1.0001; v *= 2) if (v >= lo / 1.0001) out.push(v);
  return out;
}

export function layerProfileSvg(profile: LayerProfile, title: string): string {
  const rows = profile.rows.filter((r) => r.macs.ratio > 0 && r.speedup > 0);
  const values = rows.flatMap((r) => [r.macs.ratio, r.speedup]);
  const lo = Math.min(0.5, ...values) / 1.1;
  const hi = Math.max(8, ...values) * 1.1;
  const x = (v: number) => M.left + (Math.log(v / lo) / Math.log(hi / lo)) * (W - M.left - M.right);
  const y = (v: number) => H - M.bottom - (Math.log(v / lo) / Math.log(hi / lo)) * (H - M.top - M.bottom);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="14">${escape(title)}</text>`,
  ];
  for (const t of ticks(lo, hi)) {
    parts.push(`<line x1="${x(t).toFixed(1)}" y1="${M.top}" x2="${x(t).toFixed(1)}" y2="${H - M.bottom}" stroke="#eee"/>`,
      `<line x1="${M.left}" y1="${y(t).toFixed(1)}" x2="${W - M.right}" y2="${y(t).toFixed(1)}" stroke="#eee"/>`,
      `<text x="${x(t).toFixed(1)}" y="${H - M.bottom + 16}" text-anchor="middle">${t}×</text>`,
      `<text x="${M.left - 6}" y="${(y(t) + 4).toFixed(1)}" text-anchor="end">${t}×</text>`);
  }
  parts.push(
    `<rect x="${M.left}" y="${M.top}" width="${W - M.left - M.right}" height="${H - M.top - M.bottom}" fill="none" stroke="#333"/>`,
    `<line x1="${x(lo).toFixed(1)}" y1="${y(lo).toFixed(1)}" x2="${x(hi).toFixed(1)}" y2="${y(hi).toFixed(1)}" stroke="#888" stroke-dasharray="5,4"/>`,
    `<text x="${(x(hi) - 4).toFixed(1)}" y="${(y(hi) + 14).toFixed(1)}" text-anchor="end" fill="#666">speed-up = MACs reduction</text>`,
    `<text x="${(M.left + W - M.right) / 2}" y="${H - 14}" text-anchor="middle">MACs reduction of the layer (original ÷ replacement)</text>`,
    `<text transform="translate(18 ${(M.top + H - M.bottom) / 2}) rotate(-90)" text-anchor="middle">measured speed-up (median wall clock)</text>`,
  );
  const colours: Record<string, string> = { tucker2: '#1f77b4', tucker1: '#2ca02c', svd: '#d62728' };
  for (const r of rows) {
    const colour = colours[r.kind] ?? '#7f7f7f';
    parts.push(`<circle cx="${x(r.macs.ratio).toFixed(1)}" cy="${y(r.speedup).toFixed(1)}" r="5" fill="${colour}" fill-opacity="0.8">`
      + `<title>${escape(`${r.layer} (${r.kind}${r.ranks ? ` ${r.ranks.join('/')}` : ''}): MACs ${r.macs.ratio.toFixed(2)}×, `
      + `time ${r.speedup.toFixed(2)}×`)}</title></circle>`);
  }
  let ly = M.top + 14;
  for (const [kind, colour] of Object.entries(colours)) {
    if (!rows.some((r) => r.kind === kind)) continue;
    parts.push(`<circle cx="${M.left + 14}" cy="${ly - 4}" r="5" fill="${colour}"/>`, `<text x="${M.left + 24}" y="${ly}">${kind}</text>`);
    ly += 16;
  }
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}
